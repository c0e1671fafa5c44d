"""Progress for every long piece of work, in the form its reader needs.

On a terminal: rich bars with counts, rate and ETA (generation, grading, evaluation), and one line
per finished stage. Piped into a file, CI or a notebook cell: one plain line when a piece of work
starts and one when it ends — no bars, no ANSI codes — and the progress bars of the libraries
underneath (tqdm in transformers, TRL, datasets and the GGUF converter) are switched off, so a log
reads as a list of events. With `isheep run --json-log FILE` ($ISHEEP_JSON_LOG, which the training
child inherits) every event is also one JSON object per line: stage starts and ends (with the
stage's manifest entry) and progress ticks at most once a second, for dashboards and notebooks.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from typing import Any, Callable, Iterator

JSON_LOG_ENV = "ISHEEP_JSON_LOG"
# what silences tqdm (every parameter of tqdm ≥ 4.66 can be set as TQDM_<NAME>) and the Hugging Face bars
QUIET_ENV = {"TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def interactive() -> bool:
    """Whether progress is drawn as bars: stdout is a terminal."""
    return sys.stdout.isatty()


def quiet_third_party() -> None:
    """Switch off other libraries' progress bars for this process and its children (piped output)."""
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)


def emit(event: str, **fields: Any) -> None:
    """One JSON line in the JSON log, if one is set; nothing otherwise."""
    path = os.environ.get(JSON_LOG_ENV)
    if not path:
        return
    line = json.dumps({"time": round(time.time(), 3), "event": event, **fields}, default=str)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def stage_started(t: int, stage: str) -> None:
    emit("stage_start", iteration=t, stage=stage)


def stage_done(t: int, stage: str, entry: dict[str, Any]) -> None:
    """A finished stage: one plain line on stdout, and its manifest entry in the JSON log."""
    print(f"iteration {t} · {stage} done in {entry.get('seconds', 0):.0f} s", flush=True)
    emit("stage_done", iteration=t, stage=stage, entry=entry)


@contextlib.contextmanager
def progress_bar(desc: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yields `advance(n)`. A rich bar on a terminal (not transient: a finished bar stays on screen
    with its elapsed time); piped, a plain line at the start and one at the end."""
    start, done, last = time.time(), 0, 0.0
    emit("progress_start", task=desc.strip(), total=total)

    def tick(n: int) -> None:
        nonlocal done, last
        done += n
        now = time.time()
        if now - last >= 1.0 or done >= total:
            last = now
            emit("progress", task=desc.strip(), done=done, total=total, seconds=round(now - start, 1))

    if interactive():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        columns = (TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, transient=False) as p:
            task = p.add_task(desc, total=total)

            def advance(n: int) -> None:
                p.advance(task, n)
                tick(n)

            yield advance
    else:
        print(f"{desc.strip()}: {total} to do", flush=True)
        yield tick
        print(f"{desc.strip()}: {done}/{total} in {time.time() - start:.0f} s", flush=True)
    emit("progress_end", task=desc.strip(), done=done, total=total, seconds=round(time.time() - start, 1))
