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
from isheep_lite.stages import FilterSummary, ResponsesSummary
from isheep_lite.store import read_jsonl


def _forget_from(run_dir: Path, stage: str, keep_lines: int) -> None:
    """What a kill during `stage` of iteration 1 leaves: that stage and every later one not done,
    its records cut to their first `keep_lines` lines."""
    m = json.loads((run_dir / "manifest.json").read_text())
    stages = list(m["iterations"]["1"])
    m["iterations"]["1"] = {k: m["iterations"]["1"][k] for k in stages[: stages.index(stage)]}
    m.pop("best", None), m.pop("final_model", None)
    (run_dir / "manifest.json").write_text(json.dumps(m))
    path = run_dir / "iter_01" / f"{stage}.jsonl"
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
    _forget_from(run_dir, "responses", keep_lines=10)
    run(r)
    assert ((run_dir / "iter_01" / "responses.jsonl").read_text(), (run_dir / "iter_01" / "kept.jsonl").read_text()) == before
