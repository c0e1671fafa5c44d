"""The quality levers run for real on the embedded model, record what they did, and resume after a
kill — in one run, to keep CI short: verifiable constraints on half the instructions, best-of-2
answers, and SFT followed by the preference step. The run starts from the shared pool's M_0
(manifest.fork) and runs every stage of iteration 1 itself. Each lever alone is tested on
handmade records in tests/selfalign/test_constraints.py, test_filters.py and test_train_dpo.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pools import SMALL

from isheep_lite import recipe
from isheep_lite.selfalign import constraints, synth
from isheep_lite.loop import run
from isheep_lite.rundir.jsonl import read_jsonl
from isheep_lite.rundir.manifest import Manifest, fork
from isheep_lite.stages import FilterSummary, InstructionsSummary, ResponsesSummary, TrainSummary


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
def test_levers_run_record_what_they_did_and_resume_after_a_kill(tmp_path: Path, pool: Path) -> None:
    levers = ["synth.verifiable_fraction=0.5", "synth.responses_per_instruction=2", "train.objective=sft+dpo", "train.dpo_margin=0"]
    # a preference pair needs an instruction with two graded answers whose best is kept: no rank cut,
    # and answers long enough that fewer are dropped as truncated
    roomy = ["filter.keep_top=null", "synth.response_max_tokens=192"]
    r = recipe.load(None, [f"runs_dir={tmp_path}", "name=levers", *SMALL, *levers, *roomy])
    run_dir, it = tmp_path / r.name, tmp_path / r.name / "iter_01"
    fork(pool, run_dir, ())  # M_0 only: the instructions get their constraints in this run
    m = Manifest.of(run(r, force=True))
    ins, answers, sel, tr = m.get(1, InstructionsSummary), m.get(1, ResponsesSummary), m.get(1, FilterSummary), m.get(1, TrainSummary)
    # verifiable self-feedback: constraints attached, and answers that break them dropped before grading
    written = read_jsonl(it / "instructions.jsonl")
    constrained = [x for x in written if "constraint" in x]
    assert ins and ins.constrained == len(constrained) >= 1 and len(written) == 8
    phrases = [phrase for phrase, _ in constraints.TRAINING]  # each at the end of what the user writes, after any input
    messages = [synth.user_message(x["instruction"], x["input"]) for x in constrained]
    assert all(m.startswith(x["base_instruction"]) and x["constraint"]["kind"] for m, x in zip(messages, constrained))
    assert all(any(m.endswith(p) for p in phrases) for m in messages), messages
    rejected = read_jsonl(it / "rejected.jsonl")
    broken = [x for x in rejected if x["reason"] == "fails_constraint"]
    assert sel and sel.rejected_by_reason.get("fails_constraint", 0) == len(broken)
    assert all("scores" not in x for x in broken), "a broken constraint is dropped before any grading"
    # best-of-n: two different answers per instruction, at most one kept per instruction
    assert answers and answers.per_instruction == 2 and answers.responses == 2 * 8
    responses = read_jsonl(it / "responses.jsonl")
    assert sorted({x["instruction_id"] for x in responses}) == sorted(x["id"] for x in written)
    assert len({x["response"] for x in responses}) > 8, "the samples of one instruction differ"
    kept = read_jsonl(it / "kept.jsonl")
    instruction_of = {x["id"]: x["instruction_id"] for x in responses}
    assert sel.kept == len(kept) >= 1 and len({instruction_of[x["id"]] for x in kept}) == len(kept)
    assert "not_best_of_n" in sel.rejected_by_reason and sel.score_spread is not None and sel.score_spread >= 0
    # the preference step: pairs from the graded answers, learned after SFT
    pairs = read_jsonl(it / "preferences.jsonl")
    assert sel.preferences == len(pairs) >= 1 and all(p["chosen"] != p["rejected"] for p in pairs)
    assert tr and tr.objective == "sft+dpo" and tr.dpo and tr.dpo["pairs"] == len(pairs) and tr.dpo["steps"] >= 1
    # killed while answering: the rerun ends with the same answers, selection and preference pairs
    files = ("responses.jsonl", "kept.jsonl", "preferences.jsonl")
    before = [(it / f).read_text() for f in files]
    _forget_from(run_dir, "responses", "responses", keep_lines=10)
    run(r)
    assert [(it / f).read_text() for f in files] == before
