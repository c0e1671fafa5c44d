"""Two real iterations on the embedded SmolLM2 (small counts), read back through the manifest API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from isheep_lite import Session, recipe
from isheep_lite.engines.base import Sampling
from isheep_lite.engines.llamacpp import Engine
from isheep_lite.loop import run
from isheep_lite.rundir.jsonl import read_jsonl
from isheep_lite.rundir.manifest import Manifest
from isheep_lite.stages import BaseSummary, EvalSummary, FilterSummary, InstructionsSummary, PromoteSummary, ResponsesSummary, TrainSummary

STAGES = ["instructions", "responses", "assess", "filter", "train", "export", "eval", "promote"]


@pytest.mark.slow
def test_two_real_iterations(tmp_path: Path, smol_hf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = recipe.load(
        None,
        [
            f"runs_dir={tmp_path}",
            "name=e2e",
            "loop.iterations=2",
            "synth.num_instructions=8",
            "synth.response_max_tokens=160",
            "train.epochs=1",
            "eval.stop_prompts=10",
            "eval.max_tokens=512",
            "eval.ifeval_prompts=9",
            "eval.suite_prompts=0",  # off by default; tests/e2e/test_eval_suite.py runs it
            "eval.heldout_prompts=8",
            "eval.knowledge_questions=20",
        ],
    )
    # A notebook's way in: iteration 1's data, stage by stage, looked at before training ...
    with Session(r) as s:
        selected = s.filter(1)
        kept = s.records(1, "kept")
        assert selected.kept == len(kept) >= 1 and s.store.is_done(0, "base") and not s.store.is_done(1, "train")
    data_seconds = {k: v["seconds"] for k, v in s.store.manifest["iterations"]["1"].items()}
    # ... and `run` of the same recipe goes on from there, redoing none of it.
    store = run(r)
    assert {k: store.manifest["iterations"]["1"][k]["seconds"] for k in data_seconds} == data_seconds
    assert [x for x in capsys.readouterr().out.splitlines() if x.startswith("memory plan: training ≈")]
    m = Manifest.of(store)
    assert m.memory_plan and m.memory_plan["export_ram_gib"] > 0
    assert m.iterations() == [1, 2]
    m0 = m.get(0, EvalSummary)
    assert m0 and m0.stop_rate is not None
    for t in (1, 2):
        assert list(m.seconds(t)) == STAGES and all(sec >= 0 for sec in m.seconds(t).values()), t
        ins, res, sel, tr = m.get(t, InstructionsSummary), m.get(t, ResponsesSummary), m.get(t, FilterSummary), m.get(t, TrainSummary)
        assert ins and ins.instructions == 8 and res and res.responses == 8
        assert sel and sel.kept >= 1 and tr and tr.steps >= 1
        # Each tuned model stops at least as often as the base on the 10 held-out prompts.
        ev = m.get(t, EvalSummary)
        assert ev and ev.prompts == 10 and not ev.suite and ev.ifeval and ev.stop_rate is not None
        ife = ev.ifeval  # a stratified 9 of IFEval (one a group), by the official checker
        assert ife["n_prompts"] == 9 and 0 <= ife["prompt_strict"] <= ife["prompt_loose"] <= 1
        assert ife["untrained"]["prompts"] + ife["trained_part"]["prompts"] == 9
        assert ev.stop_rate >= m0.stop_rate, (ev.stop_rate, m0.stop_rate)
    run_dir = tmp_path / "e2e"
    kept = read_jsonl(run_dir / "iter_01" / "kept.jsonl")
    assert kept and all([x["role"] for x in k["messages"]] == ["user", "assistant"] for k in kept)
    assert all(r["reason"] for r in read_jsonl(run_dir / "iter_01" / "rejected.jsonl"))
    from datasets import load_dataset  # the same pairs in the other formats, as a user loads them

    alpaca = load_dataset(str(run_dir / "iter_01" / "data"), "alpaca", split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert alpaca["output"] == [k["messages"][1]["content"] for k in kept]
    # Each tuned model was judged against M_0 in both orders and compared with the best before it;
    # the final model is the best one, and it loads and answers.
    for t in (1, 2):
        ev, verdict = m.get(t, EvalSummary), m.get(t, PromoteSummary)
        assert ev and ev.pairwise and verdict
        pw = ev.pairwise
        assert pw["prompts"] == 10 and pw["win"] + pw["tie"] + pw["loss"] == 10
        assert verdict.compared and verdict.best in (t, verdict.against)
        assert json.loads((run_dir / f"iter_0{t}" / "eval.json").read_text())["pairwise"] == pw
    last = m.get(2, PromoteSummary)
    assert last and m.best and m.best.iteration == last.best
    best = last.best
    assert (run_dir / "iter_02" / "completions.jsonl").exists()
    final = Path(str(m.final_model))
    base = m.get(0, BaseSummary)
    assert base and final == (run_dir / f"iter_{best:02d}" / "model-f16.gguf" if best else Path(base.gguf))
    with Engine(final, n_ctx=512) as e:
        assert e.chat([{"role": "user", "content": "Name a fruit."}], Sampling(max_tokens=16)).text.strip()
    assert f"Final model: `{final.name}` — M_{best}" in (run_dir / "MODEL_CARD.md").read_text()
    for t in (0, 1, 2):  # beside every exported model, a Modelfile for `ollama create`
        text = (run_dir / f"iter_{t:02d}" / "model-f16.Modelfile").read_text()
        assert text.startswith("FROM ./model-f16.gguf\n") and 'TEMPLATE """' in text and 'PARAMETER stop "<|im_end|>"' in text
    # The report has every plot at its documented size, and the run page works in a browser.
    from browser import check_page
    from helpers import assert_report

    from isheep_lite.rundir.report import write_report

    md = write_report(run_dir)
    assert_report(md)
    reason = read_jsonl(run_dir / "iter_01" / "rejected.jsonl")[0]["reason"]
    check_page(md.parent / "index.html", tmp_path, reason)
    # A rerun skips every finished stage (nothing is redone; the manifest's timings are unchanged).
    before = json.loads((run_dir / "manifest.json").read_text())
    run(r)
    assert json.loads((run_dir / "manifest.json").read_text())["iterations"] == before["iterations"]
