"""The best-iteration logic and the pairwise judge, with fake evaluators (no real model needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import QUALITY, fake_iterations, fake_ifeval, fake_run, iteration_of, passes

from isheep_lite import config, loop, recipe
from isheep_lite.engines.llamacpp import Engine
from isheep_lite.engines.serving import Served
from isheep_lite.evals import measure
from isheep_lite.recipe import UserError


def test_worse_iteration_is_flagged_not_promoted_and_next_starts_from_best(
    tmp_path: Path, tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, seen = fake_run(tmp_path, tiny, monkeypatch, "loop.train_from=previous")
    m = store.manifest["iterations"]
    it = {t: store.iter_dir(t) / "model-f16.gguf" for t in (1, 2, 3)}
    assert m["1"]["promote"]["best"] == 1 and not m["1"]["promote"]["worse"]
    assert m["2"]["promote"]["worse"] and m["2"]["promote"]["best"] == 1, m["2"]["promote"]
    assert m["2"]["promote"]["p_worse"] >= 0.9 and m["2"]["promote"]["delta"] == -0.5
    # Iteration 3 generates with M_1 (the best), not with the worse M_2, and trains from M_1's weights.
    assert seen[2][0] == it[1] and seen[3][0] == it[1]
    assert seen[3][1] == store.iter_dir(1) / "merged"
    # A tie with the best goes to the newer model; the final model is the best one.
    assert m["3"]["promote"]["best"] == 3 and store.manifest["best"]["iteration"] == 3
    assert Path(store.manifest["final_model"]) == it[3]


def test_stop_when_worse_ends_the_run(tmp_path: Path, tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    store, seen = fake_run(tmp_path, tiny, monkeypatch, "loop.stop_when_worse=true")
    assert sorted(seen) == [1, 2] and "3" not in store.manifest["iterations"]
    assert "iteration 2 scored worse than iteration 1" in store.manifest["stopped_early"]
    assert Path(store.manifest["final_model"]) == store.iter_dir(1) / "model-f16.gguf"
    # The rerun resumes to the same decision without redoing anything.
    before = dict(store.manifest)
    store2, seen2 = fake_run(tmp_path, tiny, monkeypatch, "loop.stop_when_worse=true")
    assert store2.manifest["iterations"] == before["iterations"] and store2.manifest["best"] == before["best"]


def test_a_session_reads_back_what_the_run_decided_and_refuses_what_it_did_not_run(
    tmp_path: Path, tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, seen = fake_run(tmp_path, tiny, monkeypatch, "loop.stop_when_worse=true")
    before, first = store.manifest["iterations"], dict(seen)
    r = recipe.load(store.root / "recipe.yaml")
    seen.clear()
    with loop.Session(r) as s:
        assert s.promote(2).worse and s.promote(2).best == 1 and s.promote(1).best == 1
        assert s.models[1].gguf == store.iter_dir(1) / "model-f16.gguf"
        assert s.eval(2).ifeval and s.eval(2).ifeval["prompt_loose"] == QUALITY[2]
        with pytest.raises(UserError, match="stopped after iteration 2"):
            s.instructions(3)
        with pytest.raises(UserError, match="iterations 1 to 3"):
            s.promote(4)
        with pytest.raises(UserError, match="no such records"):
            s.records(1, "kept")  # the faked iterations wrote no records
        assert s.finish() == store.iter_dir(1) / "model-f16.gguf"
    # the iterations were asked for with the same models as in the run, and the manifest is unchanged
    assert seen == first and s.store.manifest["iterations"] == before
    with pytest.raises(UserError, match="only while open"):
        s.instructions(1)  # closed: its engines and the run directory's lock are released


def test_promote_latest_keeps_the_flag_but_promotes(tmp_path: Path, tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    store, seen = fake_run(tmp_path, tiny, monkeypatch, "loop.promote=latest")
    assert store.manifest["iterations"]["2"]["promote"]["worse"]
    assert seen[3][0] == store.iter_dir(2) / "model-f16.gguf"


def _run(tmp_path: Path, tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch, scores: dict[int, dict[str, Any]], *extra: str):
    """loop.run where iteration t's model scores `scores[t]`: a rate per set — ifeval, heldout (the share
    of each prompt's constraints kept), knowledge, stop — a set left out is not measured; ifeval_prompts sets how many IFEval prompts (100 unless given)."""

    def fake_checks(model: Served, r: config.Recipe, engines: Any, reference: Any = None, judge: Any = None) -> dict[str, Any]:
        s = scores[iteration_of(model)]
        out: dict[str, Any] = {}
        if "ifeval" in s:
            out["ifeval"] = fake_ifeval(s["ifeval"], s.get("ifeval_prompts", 100), trained=s.get("ifeval_trained_prompts", 0))
        if "heldout" in s:
            kept = s["heldout"]
            out["heldout"] = {
                "strict_pass": passes(kept, 80),
                "strict": kept,
                "strict_ci95": [0, 1],
                "constraints_kept": [kept] * 80,
                "trained": [0] * 80,
            }
        if "knowledge" in s:
            out["knowledge"] = {"correct": passes(s["knowledge"], 100), "accuracy": s["knowledge"], "accuracy_ci95": [0, 1]}
        if "stop" in s:
            stopped = passes(s["stop"], 20)
            out["samples"] = [
                {"id": i, "prompt": "p", "finish": "stop" if x else "length", "tokens": 1, "text": ""} for i, x in enumerate(stopped)
            ]
            out.update(prompts=20, stop_rate=s["stop"], mean_tokens=1.0)
        return out

    monkeypatch.setattr(measure, "checks", fake_checks)
    fake_iterations(monkeypatch)
    r = recipe.load(
        None,
        [
            f"runs_dir={tmp_path}",
            "name=guard",
            f"model.gguf={tiny['gguf']}",
            f"model.hf={tiny['hf']}",
            "model.serve_base=original",
            f"loop.iterations={len(scores) - 1}",
            *extra,
        ],
    )
    return loop.run(r).manifest["iterations"]


def test_a_gain_on_one_set_and_a_loss_on_the_other_is_not_promoted(
    tmp_path: Path, tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # M_1 gains 20 points on IFEval but loses 20 on the second set: not promoted, and flagged worse.
    m = _run(
        tmp_path,
        tiny,
        monkeypatch,
        {0: {"ifeval": 0.3, "heldout": 0.4, "knowledge": 0.5}, 1: {"ifeval": 0.5, "heldout": 0.2, "knowledge": 0.5}},
    )
    p = m["1"]["promote"]
    assert p["compared"] and p["best"] == 0 and p["worse"], p
    assert set(p["sets"]) == {"ifeval", "heldout", "knowledge"} and p["reason"] == "lower on heldout"
    assert p["sets"]["ifeval"]["vs_best"]["delta"] == 0.2 and p["sets"]["heldout"]["vs_m0"]["delta"] == -0.2
    assert p["delta"] == 0.2, "the summary's headline difference is IFEval's"


def test_forgetting_beyond_the_tolerance_blocks_promotion(tmp_path: Path, tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    # M_1 gains on both following sets but forgets 10 points of knowledge (tolerance 3): not promoted.
    # M_2 gains on both and loses 2 points of knowledge, within the tolerance: promoted.
    sets = {0: (0.3, 0.3, 0.5), 1: (0.4, 0.4, 0.4), 2: (0.4, 0.4, 0.48)}
    m = _run(tmp_path, tiny, monkeypatch, {t: {"ifeval": a, "heldout": b, "knowledge": c} for t, (a, b, c) in sets.items()})
    assert m["1"]["promote"]["best"] == 0 and m["1"]["promote"]["reason"] == "lower on knowledge"
    assert m["2"]["promote"]["best"] == 2 and m["2"]["promote"]["reason"].startswith("at least as good on")
    assert m["2"]["promote"]["sets"]["knowledge"]["vs_best"]["delta"] == pytest.approx(-0.02)


def test_knowledge_lost_a_little_each_iteration_is_caught_against_m0(
    tmp_path: Path, tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each iteration gains on IFEval and loses 3 points of knowledge, each within the tolerance against
    # the best model; the second time, M_2 is 6 points below M_0: not promoted.
    scores = {0: {"ifeval": 0.3, "knowledge": 0.6}, 1: {"ifeval": 0.35, "knowledge": 0.57}, 2: {"ifeval": 0.4, "knowledge": 0.54}}
    m = _run(tmp_path, tiny, monkeypatch, scores)
    assert m["1"]["promote"]["best"] == 1, m["1"]["promote"]
    p = m["2"]["promote"]
    assert p["best"] == 1 and p["reason"] == "lower on knowledge", p
    assert p["sets"]["knowledge"]["vs_best"]["delta"] == pytest.approx(-0.03) and p["sets"]["knowledge"]["vs_m0"]["delta"] == pytest.approx(
        -0.06
    )


def test_a_model_no_following_set_could_compare_is_not_promoted(
    tmp_path: Path, tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # only the knowledge probe measured: nothing says M_1 follows instructions better
    m = _run(tmp_path, tiny, monkeypatch, {0: {"knowledge": 0.5}, 1: {"knowledge": 0.6}})
    p = m["1"]["promote"]
    assert not p["compared"] and p["best"] == 0 and "not promoted" in p["reason"], p


def test_a_runaway_model_whose_answers_stop_ending_is_not_promoted(
    tmp_path: Path, tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # M_1 gains on IFEval but 15 of its 20 stop-rate answers now run to the length limit (M_0: 1 of 20)
    m = _run(tmp_path, tiny, monkeypatch, {0: {"ifeval": 0.3, "stop": 0.95}, 1: {"ifeval": 0.4, "stop": 0.25}})
    p = m["1"]["promote"]
    assert p["worse"] and p["best"] == 0 and p["reason"] == "lower on stop rate", p
    assert p["sets"]["stop"]["vs_m0"]["p_worse"] >= 0.9


def test_promotion_decides_on_the_prompts_whose_kinds_training_does_not_see(
    tmp_path: Path, tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the same IFEval pass rate, but M_1's last 40 prompts carry trained kinds: promotion compares 60
    scores = {0: {"ifeval": 0.3, "ifeval_trained_prompts": 40}, 1: {"ifeval": 0.3, "ifeval_trained_prompts": 40}}
    p = _run(tmp_path, tiny, monkeypatch, scores)["1"]["promote"]
    assert p["sets"]["ifeval"]["metric"] == "prompt_loose of untrained prompts"
    assert p["compared"] and p["best"] == 1


def test_a_set_measured_two_ways_is_refused_on_resume(tmp_path: Path, tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    # M_0 measured on 100 IFEval prompts, M_1 (after a recipe edit) on 60: one line, nothing compared
    with pytest.raises(UserError, match="cannot be compared"):
        _run(tmp_path, tiny, monkeypatch, {0: {"ifeval": 0.3}, 1: {"ifeval": 0.3, "ifeval_prompts": 60}})


def test_no_trained_constraint_kind_reaches_a_set_the_guard_decides_on() -> None:
    """With the default recipe's verifiable constraints, the prompts promotion compares on IFEval and
    on the second set carry no kind the training library teaches (by rule name or IFEval id)."""
    from isheep_lite.evals import ifeval
    from isheep_lite.selfalign import constraints
    from isheep_lite.stages import EvalSummary

    r = recipe.load()
    trained = constraints.trained_kinds(r.synth.verifiable_fraction)
    assert {rule["kind"] for _, rule in constraints.TRAINING} <= trained, "the default recipe trains on the library"
    sets = {
        "ifeval": [p.instruction_id_list for p in ifeval.prompts()],
        "heldout": [[c["kind"] for c in it["constraints"]] for it in measure.heldout_items(r.eval.heldout_prompts)],
    }
    marks = {k: measure.trained_marks(v, trained) for k, v in sets.items()}
    e = EvalSummary(
        ifeval={"per_prompt_loose": list(range(len(marks["ifeval"]))), "trained": marks["ifeval"]},
        heldout={"constraints_kept": list(range(len(marks["heldout"]))), "trained": marks["heldout"], "strict_pass": []},
    )
    compared = e.outcomes()
    for name, kinds in sets.items():
        read = [int(i) for i in compared[name][1]] if name in compared else []  # the prompts' positions, as the fake outcomes
        assert not any(set(kinds[i]) & trained for i in read), name
        assert len(read) == marks[name].count(0)
    assert len(compared["ifeval"][1]) >= 100, "IFEval keeps enough untrained prompts to decide on"


def test_paired_bootstrap() -> None:
    same = measure.paired_bootstrap([1, 0, 1, 0], [1, 0, 1, 0])
    assert same["delta"] == 0 and same["p_worse"] == 0
    worse = measure.paired_bootstrap([1] * 20, [1] * 10 + [0] * 10)
    assert worse["delta"] == -0.5 and worse["p_worse"] == 1.0 and worse["ci95"][1] < 0
    with pytest.raises(ValueError):
        measure.paired_bootstrap([1, 0], [1])


class _StubJudge:
    """Prefers the response that contains GOOD; with `bias_a`, always says A (a position-biased judge)."""

    def __init__(self, info: Any, bias_a: bool = False):
        self.info, self.bias_a = info, bias_a

    def token_id(self, text: str) -> int:
        return {" A": 10, " B": 11}[text]

    def score_many(self, prompts: list[str], token_ids: list[int]) -> list[list[float]]:
        out = []
        for p in prompts:
            a = p.split("### Response A\n")[1].split("### Response B")[0]
            prefer_a = self.bias_a or "GOOD" in a
            out.append([-0.1, -2.0] if prefer_a else [-2.0, -0.1])
        return out


def test_pairwise_judges_both_orders(tiny_engine: Engine) -> None:
    requests = ["q1", "q2", "q3", "q4"]
    new = ["GOOD answer", "GOOD answer", "meh", "meh"]
    old = ["meh", "meh", "GOOD answer", "meh"]
    fair = measure.pairwise(_StubJudge(tiny_engine.info), requests, new, old)
    assert (fair["win"], fair["tie"], fair["loss"]) == (2, 1, 1) and fair["score"] == 0.5 + 0.125
    assert fair["score_ci95"][0] <= fair["score"] <= fair["score_ci95"][1]
    assert fair["log_odds"][:2] == [3.8, 3.8] and fair["log_odds"][2] == -3.8
    biased = measure.pairwise(_StubJudge(tiny_engine.info, bias_a=True), requests, new, old)
    assert (biased["win"], biased["tie"], biased["loss"]) == (0, 4, 0) and biased["judge_prefers_a"] == 1.0


def test_empty_answers_are_decided_by_rule_not_by_the_judge(tiny_engine: Engine) -> None:
    # The biased judge always prefers A; an empty answer must still lose, wherever it stands.
    out = measure.pairwise(
        _StubJudge(tiny_engine.info, bias_a=True), ["q1", "q2", "q3", "q4"], ["", "GOOD", " \n", "meh"], ["GOOD", "", "", "meh"]
    )
    assert out["verdicts"] == [0.0, 1.0, 0.5, 0.5] and out["judged"] == 1 and out["judge_prefers_a"] == 1.0
    assert out["log_odds"] == [None, None, None, 0.0]  # pure position bias cancels to zero


def test_pairwise_on_a_real_engine(tiny_engine: Engine) -> None:
    out = measure.pairwise(tiny_engine, ["Name a colour."], ["Blue."], ["Green."])
    assert out["win"] + out["tie"] + out["loss"] == 1 and 0 <= out["score"] <= 1


def test_an_older_evaluation_is_read_with_the_runs_own_trained_marks() -> None:
    """M_0's evaluation shared from a run whose recipe trained other kinds (a sweep's fork) is read
    with M_t's marks when the prompts are the same, so both count the same prompts; over other
    prompts each keeps its own."""
    from isheep_lite.stages.eval import EvalSummary

    def summary(keys: list[int], loose: list[int], trained: list[bool]) -> EvalSummary:
        return EvalSummary(ifeval={"keys": keys, "per_prompt_loose": loose, "trained": trained})

    m0 = summary([1, 2, 3, 4], [1, 0, 1, 0], [True, True, False, False])  # its run trained two kinds
    mt = summary([1, 2, 3, 4], [0, 0, 1, 1], [False, False, False, False])  # this run trains none
    assert m0.outcomes()["ifeval"][1] == [1.0, 0.0]
    assert m0.outcomes(mt.marks())["ifeval"] == ("prompt_loose of untrained prompts", [1.0, 0.0, 1.0, 0.0])
    assert len(m0.outcomes(mt.marks())["ifeval"][1]) == len(mt.outcomes()["ifeval"][1])
    other = summary([5, 6, 7, 8], [1, 1, 0, 0], [True, False, False, False])
    assert m0.outcomes(other.marks())["ifeval"][1] == [1.0, 0.0]  # other prompts: its own marks
