"""grading.py: the self-assessment — expected scores, the calibrated verdict, grammar and free-text modes, resume."""

from __future__ import annotations

import math

import pytest

from isheep_lite.config import AssessConfig
from isheep_lite.engines.llamacpp import Engine
from isheep_lite.selfalign import grading


def test_expected_score() -> None:
    score, dist, mass = grading.expected_score([math.log(0.25), math.log(0.25), math.log(0.5)])
    assert score == pytest.approx(1 * 0.25 + 2 * 0.25 + 3 * 0.5)
    assert sum(dist) == pytest.approx(1.0) and mass == pytest.approx(1.0)


def test_assess_scores_every_record_and_resumes(tiny_engine: Engine) -> None:
    recs = [{"id": f"r{i}", "instruction": f"Name {i} fruits.", "input": "", "response": "Apple, pear."} for i in range(3)]
    written: list[dict] = []
    cfg = AssessConfig(aspects=["quality", "following"], calibrate=False)  # the paper's two graded aspects
    out = grading.assess(tiny_engine, recs, cfg, "M_0", {}, written.append)
    assert [r["id"] for r in out] == ["r0", "r1", "r2"] and written == out
    for r in out:
        assert set(r["scores"]) == {"quality", "following"}
        assert all(1.0 <= v <= cfg.scale for v in r["scores"].values())
        assert sum(r["score_dist"]["quality"]) == pytest.approx(1.0, abs=1e-3)
    again: list[dict] = []
    resumed = grading.assess(tiny_engine, recs, cfg, "M_0", {r["id"]: r for r in out[:2]}, again.append)
    assert [r["id"] for r in again] == ["r2"] and resumed[:2] == out[:2]


def test_verdict_is_the_probability_of_yes_on_the_score_scale(tiny_engine: Engine) -> None:
    recs = [{"id": "r0", "instruction": "Name two fruits.", "input": "", "response": "Apple, pear."}]
    [row] = grading.assess(tiny_engine, recs, AssessConfig(aspects=["verdict"], calibrate=False), "M_0", {}, lambda r: None)
    p_no, p_yes = row["score_dist"]["verdict"]
    assert p_no + p_yes == pytest.approx(1.0, abs=1e-3) and row["score"] == pytest.approx(1 + 8 * p_yes, abs=1e-3)
    prompt = grading.assessment_prompt(tiny_engine, "Name two fruits.", "Apple, pear.", "verdict", 9)
    assert prompt.endswith(grading.VERDICT_PREFILL) and "Answer Yes or No" in prompt
    assert grading.parse_verdict("Yes, it does.", 9) == 9 and grading.parse_verdict(" no.", 9) == 1
    assert grading.parse_verdict("Maybe", 9) is None and grading.parse_verdict("Yesterday", 9) is None


def test_calibrated_verdict_divides_out_the_judges_prior_for_the_response(tiny_engine: Engine) -> None:
    recs = [
        {"id": f"r{i}", "instruction": q, "input": "", "response": "Apple, pear."}
        for i, q in enumerate(["Name two fruits.", "Name two rivers."])
    ]
    cfg = AssessConfig(aspects=["verdict", "quality"], calibrate=True)
    out = grading.assess(tiny_engine, recs, cfg, "M_0", {}, lambda r: None)
    plain = grading.assess(tiny_engine, recs, AssessConfig(aspects=["verdict", "quality"], calibrate=False), "M_0", {}, lambda r: None)
    # the withheld-instruction prompt: the same question, the placeholder where the instruction was
    withheld = grading.assessment_prompt(tiny_engine, grading.WITHHELD, "Apple, pear.", "verdict", 9)
    [[lp_no, lp_yes]] = tiny_engine.score_many([withheld], [tiny_engine.token_id(w) for w in grading.VERDICT_WORDS])
    for row, ref in zip(out, plain):
        assert row["scores_shown"] == pytest.approx(ref["scores"], abs=1e-3)
        p_no, p_yes = row["score_dist"]["verdict"]
        lo = math.log(p_yes / p_no) - (lp_yes - lp_no)
        assert row["scores"]["verdict"] == pytest.approx(1 + 8 / (1 + math.exp(-lo)), abs=2e-3)
        q, q0 = row["scores_shown"]["quality"], row["scores_withheld"]["quality"]
        assert row["scores"]["quality"] == pytest.approx(5 + (q - q0) / 2, abs=2e-3)
        assert 1 <= row["scores"]["quality"] <= 9
    # the same response with the same placeholder: one baseline for both instructions
    assert out[0]["scores_withheld"] == out[1]["scores_withheld"]
    # unchanged judgement with and without the instruction sits at the midpoint
    same = (5.0, [0.3, 0.7], 1.0)
    assert grading.calibrated("verdict", 9, same, same) == pytest.approx(5.0)
    assert grading.calibrated("quality", 9, same, same) == pytest.approx(5.0)
    assert grading.calibrated("quality", 9, (None, None, None), same) is None


@pytest.mark.parametrize("mode", ["grammar", "generate"])
def test_assess_by_grammar_or_generated_text(tiny_engine: Engine, mode: str) -> None:
    recs = [{"id": f"r{i}", "instruction": f"Name {i} fruits.", "input": "", "response": "Apple, pear."} for i in range(5)]
    cfg = AssessConfig(mode=mode, aspects=["quality", "following", "verdict"], calibrate=False)
    out = grading.assess(tiny_engine, recs, cfg, "M_0", {}, lambda r: None)
    assert [r["id"] for r in out] == [r["id"] for r in recs] and all("score_dist" not in r for r in out)
    for r in out:
        for aspect, v in r["scores"].items():
            if mode == "grammar":  # the grammar admits nothing but a valid answer: always a valid score
                assert v in ({1.0, 9.0} if aspect == "verdict" else {1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0})
            else:  # a random model's free reply rarely holds an answer: None is kept, never guessed
                assert v is None or 1 <= v <= 9
        assert (r["score"] is None) == any(v is None for v in r["scores"].values())


def test_parse_score_takes_the_first_number_in_range() -> None:
    assert grading.parse_score("Score: 7/9 because it is good", 9) == 7
    assert grading.parse_score("I would give it 8.", 9) == 8
    assert grading.parse_score("It is 12 out of 9", 9) is None
    assert grading.parse_score("3.5 stars", 9) is None
    assert grading.parse_score("no number here", 9) is None
