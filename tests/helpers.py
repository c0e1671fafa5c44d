"""Helpers several test modules share: the CLI as a user runs it, fixed chat requests and preference
pairs, the report's plots checked, and a run whose iterations are faked (no model trained)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from isheep_lite import config, loop, recipe, stages
from isheep_lite.engines.serving import Served
from isheep_lite.evals import measure
from isheep_lite.rundir import report
from isheep_lite.stages import ExportSummary
from isheep_lite.stages.context import Context, once

ROOT = Path(__file__).resolve().parents[1]

REQUESTS = [
    "Name three colours.",
    "Write a haiku about rain.",
    "What is 2 + 2?",
    "Give a tip for sleeping well.",
    "Translate 'good morning' into French.",
    "List two prime numbers.",
    "Describe a cat in one sentence.",
    "Why is the sky blue?",
]

# `isheep eval` runs every decision set unless told not to: tests of other paths skip IFEval, the
# second set and the knowledge probe.
NO_DECISION_SETS = ("--ifeval-prompts", "0", "--heldout-prompts", "0", "--knowledge", "0")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`isheep ARGS` in a fresh process, from `cwd`, with this checkout on the path."""
    return subprocess.run(
        [sys.executable, "-m", "isheep_lite", *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )


def conversations() -> list[list[dict[str, str]]]:
    """REQUESTS as single-turn chats."""
    return [[{"role": "user", "content": q}] for q in REQUESTS]


def same_texts(a: list, b: list) -> int:
    """How many completions of two runs over the same requests are identical."""
    return sum(x.text == y.text for x, y in zip(a, b))


NAME_REQUESTS = [
    "Name a colour.",
    "Name a fruit.",
    "Name a planet.",
    "Name a tree.",
    "Name a bird.",
    "Name a river.",
    "Name a tool.",
    "Name a dance.",
]
PREFERENCE_PAIRS = [
    {"prompt": [{"role": "user", "content": q}], "chosen": "Blue.", "rejected": "Well, " + "let me think about that " * 4}
    for q in NAME_REQUESTS
]


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails if the file is not a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def assert_report(md: Path) -> None:
    text = md.read_text()
    for name in report.PLOTS:
        png = md.parent / f"{name}.png"
        assert f"]({name}.png)" in text
        assert png.stat().st_size > 5000, f"{png} is (nearly) empty"
        assert png_size(png) == (800, 450)


QUALITY = {0: 0.50, 1: 0.70, 2: 0.20, 3: 0.70}  # iteration 2 is much worse than iteration 1


def fake_iterations(monkeypatch: pytest.MonkeyPatch, seen: dict[int, tuple[Path, Path]] | None = None) -> None:
    """Every stage before `eval` faked: iteration t's export stage records a stand-in M_t file in
    iter_NN/ (and what it was given in `seen`); the real eval stage (with its checks faked) and the
    real promote stage then decide."""

    def fake_export(ctx: Context) -> ExportSummary:
        if seen is not None:
            seen[ctx.t] = (ctx.current.gguf, ctx.train_hf)

        def stand_in(c: Context) -> ExportSummary:
            gguf = c.dir / "model-f16.gguf"
            gguf.write_bytes(b"not a real model")
            return ExportSummary(files={"f16": str(gguf)})

        return once(ctx, ExportSummary, stand_in)

    for stage in stages.ITERATION[: stages.ITERATION.index(stages.export)]:
        monkeypatch.setattr(stage, "run", lambda ctx: None)
    monkeypatch.setattr(stages.export, "run", fake_export)


def iteration_of(model: Served) -> int:
    """t of a stand-in M_t (iter_NN/model-f16.gguf), 0 for M_0."""
    parent = model.gguf.parent.name
    return int(parent[5:]) if parent.startswith("iter_") else 0


def passes(rate: float, n: int) -> list[int]:
    k = round(rate * n)
    return [1] * k + [0] * (n - k)


def fake_ifeval(rate: float, n: int, trained: int = 0) -> dict[str, Any]:
    """An IFEval result as measure.ifeval_following returns it: `rate` of `n` prompts pass (loose and
    strict); the last `trained` prompts carry a trained kind (and are left out of promotion)."""
    per = passes(rate, n)
    marks = [0] * (n - trained) + [1] * trained
    part = {"prompts": n - trained, "mean": rate, "ci95": [0.0, 1.0]}
    return {
        "prompt_loose": rate,
        "prompt_strict": rate,
        "instruction_loose": rate,
        "instruction_strict": rate,
        "prompt_loose_ci95": [0.0, 1.0],
        "prompt_strict_ci95": [0.0, 1.0],
        "per_prompt_loose": per,
        "per_prompt_strict": per,
        "trained": marks,
        "untrained": part,
        "trained_part": {"prompts": trained, "mean": rate if trained else None, "ci95": [0.0, 1.0]},
    }


def fake_run(tmp_path: Path, tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch, *extra: str) -> tuple[Any, dict]:
    """loop.run with every iteration and check faked: iteration t's model passes QUALITY[t] of 40 prompts."""
    seen: dict[int, tuple[Path, Path]] = {}

    def fake_checks(model: Served, r: config.Recipe, engines: Any, reference: Any = None, judge: Any = None) -> dict[str, Any]:
        return {"ifeval": fake_ifeval(QUALITY[iteration_of(model)], 40)}

    monkeypatch.setattr(measure, "checks", fake_checks)
    fake_iterations(monkeypatch, seen)
    r = recipe.load(
        None,
        [
            f"runs_dir={tmp_path}",
            "name=fake",
            f"model.gguf={tiny['gguf']}",
            f"model.hf={tiny['hf']}",
            "model.serve_base=original",
            "loop.iterations=3",
            *extra,
        ],
    )
    return loop.run(r), seen
