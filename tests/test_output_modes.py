"""What `isheep run` prints: bars with an ETA on a terminal; plain lines, no ANSI codes and no
third-party progress bars when piped; one JSON object per event with --json-log."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["instructions", "responses", "assess", "filter", "train", "export", "eval", "promote"]


def _argv(tmp_path: Path, name: str) -> list[str]:
    """A small real run on the embedded model (the default model: its instructions and answers end)."""
    return [
        sys.executable, "-m", "isheep_lite", "run", f"runs_dir={tmp_path}", f"name={name}",
        "model.n_parallel=4", "loop.iterations=1", "synth.num_instructions=4", "synth.response_max_tokens=160", "assess.enabled=false",
        "filter.keep_top=null", "train.epochs=1", "eval.stop_prompts=2", "eval.max_tokens=16", "eval.ifeval_prompts=0", "eval.suite_prompts=0",
        "eval.heldout_prompts=0", "eval.knowledge_questions=0",
        "eval.pairwise=false",
    ]  # fmt: skip


def _env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TQDM_DISABLE", "HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS")
    }
    return {**env, "PYTHONPATH": str(ROOT), "COLUMNS": "120"}


@pytest.mark.slow
def test_on_a_terminal_progress_is_drawn_with_its_eta(tmp_path: Path, smol_hf: Path) -> None:
    """Watched until the first stage of iteration 1 has drawn its bar and finished, then interrupted."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(_argv(tmp_path, "tty"), stdin=follower, stdout=follower, stderr=follower, env=_env(), cwd=tmp_path)
    os.close(follower)
    out = b""
    try:
        while b"iteration 1 \xc2\xb7 instructions done" not in out:
            ready, _, _ = select.select([leader], [], [], 600)
            assert ready, "no output for 10 minutes"
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: the process ended
                break
            assert chunk, "the run ended before its first stage finished"
            out += chunk
    finally:
        proc.kill()
        proc.wait()
        os.close(leader)
    text = out.decode(errors="replace")
    assert "iteration 1 · instructions done in" in text, text[-3000:]
    assert "\x1b[" in text, "a terminal gets rich's drawing"
    assert re.search(r"it1 instructions.*━.*\d+/\d+.*\d:\d\d:\d\d", text), text[-3000:]  # bar, count, elapsed and ETA columns


@pytest.mark.slow
def test_piped_output_is_plain_lines_and_the_json_log_has_every_event(tmp_path: Path, smol_hf: Path) -> None:
    log = tmp_path / "events.jsonl"
    p = subprocess.run(
        [*_argv(tmp_path, "piped"), "--json-log", str(log)], capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=900
    )
    assert p.returncode == 0, p.stderr[-3000:]
    both = p.stdout + p.stderr
    assert "\x1b" not in both, "no ANSI escape codes when piped"
    assert not re.search(r"\d+%\|", both) and "it/s]" not in both and "━" not in both, "no progress bars when piped"
    assert "it1 instructions: 4 to do" in p.stdout and re.search(r"it1 instructions: 4/4 in \d+ s", p.stdout)
    assert [line.split(" · ")[1].split()[0] for line in p.stdout.splitlines() if line.startswith("iteration 1 · ")] == STAGES
    events = [json.loads(line) for line in log.read_text().splitlines()]
    done = [e for e in events if e["event"] == "stage_done"]
    assert [e["stage"] for e in done if e["iteration"] == 1] == STAGES
    assert all(e["entry"]["status"] == "done" and e["entry"]["seconds"] >= 0 for e in done)
    assert done[STAGES.index("train") + 2]["entry"]["steps"] >= 1  # iteration 0's base and eval come first
    ticks = [e for e in events if e["event"] == "progress" and e["task"] == "it1 instructions"]
    assert ticks and ticks[-1]["done"] == ticks[-1]["total"] == 4
    assert len([e for e in events if e["event"] == "stage_start"]) == len(done)
