"""`isheep report`: report.md and every plot, from a run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import assert_report, fake_ifeval

from isheep_lite.recipe import UserError
from isheep_lite.rundir import report
from isheep_lite.rundir.jsonl import write_jsonl
from isheep_lite.stages import TrainSummary


def _eval(strict: float, n: int = 20) -> dict:
    k = round(strict * n)
    return {
        "status": "done",
        "seconds": 10.0,
        "stop_rate": 0.75,
        "prompts": 4,
        "samples": [{"id": f"s{i}", "finish": "stop" if i else "length", "tokens": 50, "text": "x"} for i in range(4)],
        "ifeval": {**fake_ifeval(strict, 50, trained=20), "tokens": 4000},
        "suite": {"strict": k / n, "loose": k / n, "strict_pass": [1] * k + [0] * (n - k), "strict_ci95": [0.1, 0.6], "tokens": 900},
        "heldout": {"strict": 0.25, "loose": 0.3, "strict_pass": [1, 0, 0, 0], "strict_ci95": [0.0, 0.75], "tokens": 300},
        "knowledge": {"accuracy": 0.375, "correct": [1, 1, 1, 0, 0, 0, 0, 0], "accuracy_ci95": [0.125, 0.75], "tokens": 80},
    }


def test_report_from_a_handmade_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    its: dict = {"0": {"eval": _eval(0.3)}}
    for t in (1, 2):
        d = run / f"iter_{t:02d}"
        d.mkdir(parents=True)
        write_jsonl(d / "completions.jsonl", [{"prompt": i, "tokens": 40} for i in range(10)])
        write_jsonl(d / "scored.jsonl", [{"id": f"{t}-{i}", "score": 4 + i / 10} for i in range(30)])
        its[str(t)] = {
            "instructions": {
                "status": "done",
                "seconds": 8.0,
                "prompts": 10,
                "instructions": 12,
                "rejected": 3,
                "rejected_by_reason": {"chatter": 3},
            },
            "responses": {"status": "done", "seconds": 5.0, "responses": 12, "tokens": 600, "finished": 10},
            "assess": {"status": "done", "seconds": 3.0, "scored": 30, "assessor": "M_0", "score_mean": 5.4, "score_sd": 0.9},
            "filter": {
                "status": "done",
                "seconds": 0.0,
                "kept": 6,
                "rejected": 6,
                "kept_ratio": 0.5,
                "rejected_by_reason": {"truncated": 2, "below_top_fraction": 4},
            },
            "train": {
                "status": "done",
                "seconds": 20.0,
                **TrainSummary(
                    trained_on="hf",
                    examples=6,
                    dropped_too_long=0,
                    steps=3,
                    train_loss=1.0,
                    loss_first=1.2,
                    loss_last=0.9,
                    losses=[1.2, 1.0, 0.9],
                    tokens=600,
                    resumed_from_step=None,
                    backend="hf",
                    device="cpu",
                    micro_batch=4,
                    grad_accum=1,
                    memory_plan=None,
                    oom_splits=0,
                    peak_vram_gb=None,
                    seconds_per_step=6.6,
                ).to_entry(),
            },
            "eval": {**_eval(0.4 if t == 1 else 0.1), "pairwise": {"score": 0.6, "score_ci95": [0.4, 0.8], "win": 2, "tie": 1, "loss": 1}},
            "promote": {
                "status": "done",
                "against": 0 if t == 1 else 1,
                "compared": True,
                "delta": 0.1 if t == 1 else -0.3,
                "ci95": [0.0, 0.2] if t == 1 else [-0.5, -0.1],
                "p_worse": 0.0 if t == 1 else 1.0,
                "worse": t == 2,
                "best": 1,
            },
        }
    (run / "manifest.json").write_text(json.dumps({"iterations": its, "best": {"iteration": 1, "gguf": "x.gguf"}}))
    md = report.write_report(run)
    assert_report(md)
    text = md.read_text()
    assert "| M_2 |" in text and "flagged worse, not promoted" in text and "Best model: **M_1**" in text
    assert "| 0.25 (0.00–0.75) | 0.38 (0.12–0.75) |" in text, "the held-out set and the knowledge probe, with intervals"
    assert "| M_1 | 0.40 (0.00–1.00) | 0.40 (0.00–1.00) | 0.40 (0.00–1.00) | 0.40 (0.00–1.00) |" in text, "IFEval, whole and split"
    assert "IFEval, untrained kinds" in text and "IFEval, trained kinds" in text


def test_an_eval_written_before_ifeval_was_measured_reads_its_suite_as_the_suite() -> None:
    from isheep_lite.stages import EvalSummary

    old = {"status": "done", "ifeval": {"strict": 0.3, "loose": 0.4, "strict_pass": [1, 0, 0], "strict_ci95": [0, 1]}}
    e = EvalSummary.from_entry(old)
    assert e.suite == old["ifeval"] and e.ifeval is None
    assert e.outcomes() == {}, "the suite is no decision set"


def test_report_refuses_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a run directory"):
        report.write_report(tmp_path)
