"""Crash safety: SIGKILL a real run at five points spread over synthesis, assessment, training and
export; rerun the same command after each; the finished run must match an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from isheep_lite.engines.base import Sampling
from isheep_lite.engines.llamacpp import Engine

ARGS = [
    "loop.iterations=1",
    "synth.num_instructions=10",
    "synth.response_max_tokens=96",
    "model.n_parallel=4",
    "train.epochs=1",
    "train.batch_size=2",
    "train.checkpoint_steps=1",
    "filter.keep_top=null",
    "eval.stop_prompts=0",
    "eval.ifeval_prompts=0",
    "eval.suite_prompts=0",
    "eval.heldout_prompts=0",
    "eval.knowledge_questions=0",
]
RECORDS = ("completions", "instructions", "responses", "scored", "kept", "rejected")


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _manifest(run: Path) -> dict:
    try:
        return json.loads((run / "manifest.json").read_text())["iterations"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return {}


def _done(run: Path, stage: str) -> bool:
    return _manifest(run).get("1", {}).get(stage, {}).get("status") == "done"


KILL_POINTS: list[tuple[str, Callable[[Path], bool]]] = [
    ("synthesis: instructions", lambda d: _lines(d / "iter_01" / "completions.jsonl") >= 2),
    ("synthesis: responses", lambda d: _lines(d / "iter_01" / "responses.jsonl") >= 1),
    ("assessment", lambda d: _done(d, "responses")),
    ("training", lambda d: any((c / "trainer_state.json").exists() for c in (d / "iter_01" / "checkpoints").glob("checkpoint-*"))),
    # the merge writes merged.tmp<pid>/, the converter model-f16.gguf.tmp<pid>: any of them is mid-export
    ("export", lambda d: any((d / "iter_01").glob("*.tmp*"))),
]


def _start(tmp: Path, name: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.Popen(
        [sys.executable, "-m", "isheep_lite", "run", f"runs_dir={tmp}", f"name={name}", *ARGS],
        cwd=tmp,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _check_records(run: Path) -> dict[str, int]:
    counts = {}
    for name in RECORDS:
        path = run / "iter_01" / f"{name}.jsonl"
        raw = path.read_bytes()
        assert raw.endswith(b"\n"), f"{name}: torn last line"
        rows = [json.loads(line) for line in raw.splitlines()]  # every line whole JSON
        if name != "completions":
            ids = [r["id"] for r in rows]
            assert len(ids) == len(set(ids)), f"{name}: duplicate ids"
        counts[name] = len(rows)
    return counts


@pytest.mark.slow
def test_sigkill_at_five_points_then_resume(tmp_path: Path, smol_hf: Path) -> None:
    ref = _start(tmp_path, "reference")
    assert ref.wait(timeout=900) == 0, ref.stderr.read().decode()[-3000:]
    reference = _check_records(tmp_path / "reference")

    run = tmp_path / "killed"
    frozen: dict[str, dict] = {}  # stages finished before a kill, as the manifest recorded them
    for label, ready in KILL_POINTS:
        proc = _start(tmp_path, "killed")
        deadline = time.time() + 900
        while not ready(run):
            assert proc.poll() is None, f"the run ended before the kill point '{label}'"
            assert time.time() < deadline, f"kill point '{label}' never reached"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its training child, as a crash would
        proc.wait()
        for stage, entry in _manifest(run).get("1", {}).items():
            frozen.setdefault(stage, entry)
    proc = _start(tmp_path, "killed")
    assert proc.wait(timeout=900) == 0, proc.stderr.read().decode()[-3000:]

    m = _manifest(run)["1"]
    for stage, entry in frozen.items():
        assert m[stage] == entry, f"finished stage '{stage}' was redone after a kill"
    assert m["train"]["resumed_from_step"] is not None and m["train"]["steps"] == _manifest(tmp_path / "reference")["1"]["train"]["steps"]
    assert _check_records(run) == {**reference, "completions": _check_records(run)["completions"]}
    assert not list((run / "iter_01").glob("*.tmp*")), "no half-written file is left behind"
    with Engine(run / "iter_01" / "model-f16.gguf", n_ctx=256, n_parallel=1) as e:
        assert e.chat([{"role": "user", "content": "Name a fruit."}], Sampling(max_tokens=8)).n_tokens > 0
