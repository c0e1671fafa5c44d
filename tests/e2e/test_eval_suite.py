"""The instruction-following suite on real models: deterministic, and able to fail a broken model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import NO_DECISION_SETS

from isheep_lite.gguf import export


def _eval(model: str, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "isheep_lite", "eval", model, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def empty_answer_gguf(smol_hf: Path, smol_gguf: Path, out: Path) -> Path:
    """SmolLM2 with its final norm zeroed: every logit is 0, greedy picks token 0 (end of text) — empty answers."""
    import gguf

    path = Path(export.export(smol_hf, None, smol_gguf, out, ["f16"])["f16"])
    reader = gguf.GGUFReader(path, "r+")
    [norm] = [t for t in reader.tensors if t.name == "output_norm.weight"]
    norm.data[:] = 0
    del reader
    return path


@pytest.mark.slow
def test_suite_is_deterministic_and_fails_a_broken_model(smol_hf: Path, smol_gguf: Path, tmp_path: Path) -> None:
    args = ("--stop-prompts", "4", "--ifeval-prompts", "9", "--suite-prompts", "10", "--heldout-prompts", "4", "--knowledge", "16")
    first = _eval("embedded:smollm2-135m-instruct", *args)
    # greedy evaluation is deterministic: IFEval's answers and verdicts again, in a fresh process
    second = _eval(
        "embedded:smollm2-135m-instruct", "--stop-prompts", "0", "--ifeval-prompts", "9", "--suite-prompts", "0", *NO_DECISION_SETS[2:]
    )
    assert first["ifeval"] == second["ifeval"], "greedy evaluation must be deterministic"
    suite = first["suite"]
    assert suite["prompts"] == 10 and 0 < suite["strict"] <= suite["loose"] <= 1, suite
    ife = first["ifeval"]  # IFEval through the CLI: the four accuracies, intervals, no per-prompt lists printed
    assert ife["n_prompts"] == 9 and 0 < ife["prompt_loose"] and ife["prompt_loose_ci95"][0] <= ife["prompt_loose"], ife
    assert "answers" not in ife and "per_prompt_loose" not in ife
    broken = _eval(str(empty_answer_gguf(smol_hf, smol_gguf, tmp_path)), *args)
    assert broken["mean_tokens"] == 0, "the broken model answers nothing"
    assert broken["suite"]["strict"] < suite["strict"] and broken["suite"]["loose"] < suite["loose"]
    assert broken["ifeval"]["prompt_loose"] < ife["prompt_loose"]
    # The second set and the knowledge probe run through the CLI too; an empty answer knows nothing.
    held, know = first["heldout"], first["knowledge"]
    assert held["prompts"] == 4 and 0 <= held["strict"] <= held["loose"] <= 1 and held["instruction_strict"] is not None
    assert know["prompts"] == 16 and know["accuracy"] > 0.1, "the embedded model knows some capitals and planets"
    assert broken["knowledge"]["accuracy"] == 0
    # And judged pairwise against the base, the empty answers lose.
    verdict = _eval(
        str(tmp_path / "model-f16.gguf"),
        "--stop-prompts",
        "6",
        "--suite-prompts",
        "0",
        *NO_DECISION_SETS,
        "--against",
        "embedded:smollm2-135m-instruct",
        "--judge",
        "embedded:smollm2-135m-instruct",
    )["pairwise"]
    assert verdict["prompts"] == 6 and verdict["score"] < 0.5, verdict
