"""Each quality lever runs for real on the embedded model, records what it did, and resumes after a
kill. A lever run starts from the ablation pool's instructions (manifest.fork) and runs every later
stage itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pools import OTHERS, SMALL

from isheep_lite import recipe
from isheep_lite.loop import run
from isheep_lite.manifest import Manifest, fork
from isheep_lite.stages import FilterSummary, InstructionsSummary, ResponsesSummary, TrainSummary
from isheep_lite.store import read_jsonl


def _forget_from(run_dir: Path, stage: str, records: str, keep_lines: int) -> None:
    """What a kill during `stage` of iteration 1 leaves: that stage and every later one not done,
    the records it appends (`records`.jsonl) cut to their first `keep_lines` lines."""
    m = json.loads((run_dir / "manifest.json").read_text())
    stages = list(m["iterations"]["1"])
    m["iterations"]["1"] = {k: m["iterations"]["1"][k] for k in stages[: stages.index(stage)]}
    m.pop("best", None), m.pop("final_model", None)
    (run_dir / "manifest.json").write_text(json.dumps(m))
    path = run_dir / "iter_01" / f"{records}.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:keep_lines]))


@pytest.mark.slow
def test_best_of_n_grades_every_answer_keeps_the_best_and_resumes(tmp_path: Path, ablation_pool: Path) -> None:
    r = recipe.load(OTHERS[0], [f"runs_dir={tmp_path}", "name=best_of_3", *SMALL, "synth.responses_per_instruction=3"])
    run_dir = tmp_path / r.name
    fork(ablation_pool, run_dir, ("instructions",))
    m = Manifest.of(run(r, force=True))
    answers, sel = m.get(1, ResponsesSummary), m.get(1, FilterSummary)
    assert answers and answers.per_instruction == 3 and answers.responses == 3 * 8
    responses = read_jsonl(run_dir / "iter_01" / "responses.jsonl")
    assert sorted({x["instruction_id"] for x in responses}) == sorted(
        x["id"] for x in read_jsonl(run_dir / "iter_01" / "instructions.jsonl")
    )
    assert len({x["response"] for x in responses}) > 8, "the samples of one instruction differ"
    kept = read_jsonl(run_dir / "iter_01" / "kept.jsonl")
    rejected = read_jsonl(run_dir / "iter_01" / "rejected.jsonl")
    assert sel and sel.kept == len(kept) >= 1 and sel.score_spread is not None and sel.score_spread >= 0
    assert "not_best_of_n" in sel.rejected_by_reason
    instruction_of = {x["id"]: x["instruction_id"] for x in responses}
    assert len({instruction_of[x["id"]] for x in kept}) == len(kept), "at most one answer per instruction"
    assert all(x["reason"] for x in rejected)
    # Killed while answering: the rerun ends with the same answers and the same selection.
    before = (run_dir / "iter_01" / "responses.jsonl").read_text(), (run_dir / "iter_01" / "kept.jsonl").read_text()
    _forget_from(run_dir, "responses", "responses", keep_lines=10)
    run(r)
    assert ((run_dir / "iter_01" / "responses.jsonl").read_text(), (run_dir / "iter_01" / "kept.jsonl").read_text()) == before


@pytest.mark.slow
def test_verifiable_constraints_and_the_preference_step_run_record_and_resume(tmp_path: Path, ablation_pool: Path) -> None:
    """Verifiable self-feedback on half the instructions, two answers each, SFT then DPO on the pairs."""
    levers = ["synth.verifiable_fraction=0.5", "synth.responses_per_instruction=2", "train.objective=sft+dpo", "train.dpo_margin=0"]
    r = recipe.load(OTHERS[0], [f"runs_dir={tmp_path}", "name=verifiable_dpo", *SMALL, *levers])
    run_dir = tmp_path / r.name
    fork(ablation_pool, run_dir, ())  # M_0 only: the instructions get their constraints here
    m = Manifest.of(run(r, force=True))
    ins, sel, tr = m.get(1, InstructionsSummary), m.get(1, FilterSummary), m.get(1, TrainSummary)
    written = read_jsonl(run_dir / "iter_01" / "instructions.jsonl")
    constrained = [x for x in written if "constraint" in x]
    assert ins and ins.constrained == len(constrained) >= 1 and len(written) == 8
    assert all(x["instruction"].startswith(x["base_instruction"] + " ") and x["constraint"]["kind"] for x in constrained)
    rejected = read_jsonl(run_dir / "iter_01" / "rejected.jsonl")
    broken = [x for x in rejected if x["reason"] == "fails_constraint"]
    assert sel and sel.rejected_by_reason.get("fails_constraint", 0) == len(broken)
    assert all("scores" not in x for x in broken), "a broken constraint is dropped before any grading"
    pairs = read_jsonl(run_dir / "iter_01" / "preferences.jsonl")
    assert sel.preferences == len(pairs) >= 1 and all(p["chosen"] != p["rejected"] for p in pairs)
    assert tr and tr.objective == "sft+dpo" and tr.dpo and tr.dpo["pairs"] == len(pairs) and tr.dpo["steps"] >= 1
    # Killed while writing instructions: the rerun ends with the same constrained instructions.
    before = (run_dir / "iter_01" / "instructions.jsonl").read_text()
    _forget_from(run_dir, "instructions", "completions", keep_lines=2)
    (run_dir / "iter_01" / "instructions.jsonl").unlink()
    run(r)
    assert (run_dir / "iter_01" / "instructions.jsonl").read_text() == before
