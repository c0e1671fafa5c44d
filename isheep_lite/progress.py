"""Progress bars with an ETA for every long piece of work (generation, grading, evaluation)."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator


@contextlib.contextmanager
def progress_bar(desc: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich bar on the terminal; yields `advance(n)`. Not transient: a finished stage's bar stays
    on screen with its elapsed time, so a log of the run shows where the time went."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=False) as p:
        task = p.add_task(desc, total=total)
        yield lambda n: p.advance(task, n)
