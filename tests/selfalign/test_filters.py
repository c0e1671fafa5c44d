"""Rule filters, ROUGE-L and selection, on handcrafted records."""

from __future__ import annotations

import pytest

from isheep_lite.config import FilterConfig
from isheep_lite.selfalign import filters
from isheep_lite.selfalign.filters import RougeIndex, instruction_reject_reason, ranks, response_reject_reason, rouge_l, select
from isheep_lite.selfalign.grading import histogram

CFG = FilterConfig()


@pytest.mark.parametrize(
    "text, reason",
    [
        ("Write a haiku about autumn leaves.", None),
        ("Sort these five numbers.", None),
        ("Sort these numbers.", "too_short"),
        ("Sort numbers.", "too_short"),
        ("word " * 151, "too_long"),
        ("- List three fruits that are red.", "bad_first_char"),
        ("Écris un poème sur la mer.", "bad_first_char"),
        ("Describe the picture of the old bridge.", "unusable_keyword"),
        ("Draw a cat sitting on a chair.", "unusable_keyword"),
        ("Summarise the article at https://example.com please.", "link"),
        ("Explain gravity simply. Output: Gravity pulls.", "leaked_markup"),
        ("What a fun task! Here's a new one: name birds.", "chatter"),
        ("I'm ready to help. What's your task?", "chatter"),
        ("Write a letter to [NAME] about the meeting.", "placeholder"),
    ],
)
def test_instruction_filters(text: str, reason: str | None) -> None:
    assert instruction_reject_reason(text, CFG) == reason


@pytest.mark.parametrize(
    "response, finish, reason",
    [
        ("Paris is the capital of France.", "stop", None),
        ("", "stop", "empty_response"),
        ("Paris is the capital", "length", "truncated"),
        ("Paris.\nUser: and Spain?", "stop", "continues_dialogue"),
        ("<think>\nThe capital.\n</think>\n\nParis.", "stop", "reasoning_block"),
        ("Paris.</think>", "stop", "reasoning_block"),
        ("<|channel>thought\nThe capital.<channel|>Paris.", "stop", "reasoning_block"),
        ("Pick one:\nA) Paris\nB) Rome\nC) Oslo", "stop", "multiple_choice"),
        ("Which country do you mean?", "stop", "asks_back"),
        ("I'm sorry, but I cannot help with that.", "stop", "refusal"),
        ("What is the capital of France", "stop", "repeats_instruction"),
    ],
)
def test_response_filters(response: str, finish: str, reason: str | None) -> None:
    assert response_reject_reason("What is the capital of France?", response, finish, CFG) == reason


def _lcs(a: list[str], b: list[str]) -> int:
    """Textbook LCS, only to check the library-backed index against."""
    t = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            t[i + 1][j + 1] = t[i][j] + 1 if x == y else max(t[i][j + 1], t[i + 1][j])
    return t[-1][-1]


def test_rouge_l_f1_matches_definition() -> None:
    a, b = "The cat sat on the mat.", "A cat was sitting on the mat today"
    ta, tb = a.lower().replace(".", "").split(), b.lower().split()
    assert rouge_l(a, b) == pytest.approx(2 * _lcs(ta, tb) / (len(ta) + len(tb)))
    assert rouge_l(a, a) == pytest.approx(1.0)
    index = RougeIndex(["Completely different words here", b])
    assert index.max_f1(a) == pytest.approx(rouge_l(a, b))


def _rec(i: int, q: float, f: float) -> dict:
    return {"id": i, "scores": {"quality": q, "following": f}}


def test_selection_threshold_then_top_fraction() -> None:
    recs = [_rec(0, 9, 9), _rec(1, 8.5, 3), _rec(2, 7, 7), _rec(3, 6, 8), _rec(4, 2, 2)]
    kept, rejected = select(recs, ["quality", "following"], FilterConfig(min_score=5, keep_top=0.5))
    assert [r["id"] for r in kept] == [0, 2]
    reasons = {r["id"]: r["reason"] for r in rejected}
    assert reasons == {1: "below_min_score", 4: "below_min_score", 3: "below_top_fraction"}
    kept, _ = select(recs, ["quality"], FilterConfig(min_score=None, keep_top=None))
    assert len(kept) == 5


def test_unparsed_scores_are_rejected_with_their_reason() -> None:
    recs = [_rec(0, 9, 9), {**_rec(1, 5, 5), "scores": {"quality": None, "following": 5}}]
    kept, rejected = select(recs, ["quality", "following"], FilterConfig(keep_top=None))
    assert [r["id"] for r in kept] == [0] and rejected[0]["reason"] == "unparsed_score"


def test_ifd_ceiling_rejects_answers_the_instruction_does_not_explain() -> None:
    recs = [{**_rec(0, 5, 5), "ifd": 0.3}, {**_rec(1, 9, 9), "ifd": 1.2}, _rec(2, 6, 6)]
    kept, rejected = select(recs, ["quality", "following"], FilterConfig(keep_top=None, max_ifd=1.0))
    assert [r["id"] for r in kept] == [0, 2] and [r["reason"] for r in rejected] == ["high_ifd"]


def test_rank_by_ifd_and_by_the_mean_of_both_ranks() -> None:
    # Self-scores and IFD disagree: a ranks first by score, c by IFD (lower is better).
    recs = [{"id": i, "scores": {"quality": q}, "ifd": ifd} for i, q, ifd in [("a", 9, 1.2), ("b", 5, 0.5), ("c", 1, 0.1), ("d", 4, 0.9)]]

    def pick(by: str) -> list[str]:
        return [r["id"] for r in select(recs, ["quality"], FilterConfig(keep_top=0.25, rank_by=by))[0]]

    assert pick("score") == ["a"] and pick("ifd") == ["c"]
    # Fractional ranks: score a 1, b 2/3, d 1/3, c 0; −IFD c 1, b 2/3, d 1/3, a 0 → b has the best mean.
    assert pick("score+ifd") == ["b"]
    assert ranks([3.0, 1.0, 3.0, 2.0]) == [5 / 6, 0.0, 5 / 6, 1 / 3]


def test_without_assessment_the_rule_filters_alone_select() -> None:
    recs = [{"id": i, "scores": {}, "score": None} for i in range(3)]
    kept, rejected = select(recs, [], FilterConfig(keep_top=None, min_score=None))
    assert [r["id"] for r in kept] == [0, 1, 2] and rejected == []


def test_score_histogram_bins() -> None:
    assert histogram([1.0, 1.9, 2.0, 8.5, 9.0], 9) == {"1-2": 2, "2-3": 1, "3-4": 0, "4-5": 0, "5-6": 0, "6-7": 0, "7-8": 0, "8-9": 2}


def _graded(id_: str, instruction_id: str, sample: int, score: float | None) -> dict:
    return {"id": id_, "instruction_id": instruction_id, "sample": sample, "scores": {"verdict": score}, "score": score}


def test_best_of_n_keeps_each_instructions_best_graded_answer() -> None:
    records = [
        _graded("a", "a", 0, 4.0),
        _graded("a~1", "a", 1, 6.5),
        _graded("a~2", "a", 2, 5.0),
        _graded("b", "b", 0, 5.0),
        _graded("b~1", "b", 1, 5.0),  # a tie goes to the lower sample
        _graded("c", "c", 0, None),
        _graded("c~1", "c", 1, 3.0),  # a graded answer beats an unparsed one
    ]
    best, others = filters.best_of_n(records, ["verdict"])
    assert [x["id"] for x in best] == ["a~1", "b", "c~1"]
    assert [x["candidates"] for x in best] == [3, 2, 2] and [x["score_spread"] for x in best] == [2.5, 0.0, 0.0]
    assert sorted(x["id"] for x in others) == ["a", "a~2", "b~1", "c"] and {x["reason"] for x in others} == {"not_best_of_n"}


def test_candidates_keep_sample_zero_as_the_single_answer() -> None:
    from isheep_lite.selfalign import synth

    rows = synth.candidates([{"id": "i-1", "instruction": "x", "input": ""}, {"id": "i-2", "instruction": "y", "input": ""}], 3)
    assert [r["id"] for r in rows] == ["i-1", "i-1~1", "i-1~2", "i-2", "i-2~1", "i-2~2"]
    assert {r["instruction_id"] for r in rows[:3]} == {"i-1"} and [r["sample"] for r in rows[:3]] == [0, 1, 2]
    assert [r["id"] for r in synth.candidates(rows[:1], 1)] == ["i-1"]


def test_preference_pairs_take_each_kept_answers_worst_rival_beyond_the_margin() -> None:
    graded = [
        _graded("a", "a", 0, 4.0),
        _graded("a~1", "a", 1, 6.5),
        _graded("a~2", "a", 2, 5.0),
        _graded("b", "b", 0, 5.0),
        _graded("b~1", "b", 1, 5.5),
    ]
    kept = [x for x in graded if x["id"] in ("a~1", "b~1")]
    pairs = filters.preference_pairs(kept, graded, ["verdict"], margin=1.0)
    assert [(p["chosen"]["id"], p["rejected"]["id"], p["margin"]) for p in pairs] == [("a~1", "a", 2.5)], "b's spread 0.5 < margin"
    assert len(filters.preference_pairs(kept, graded, ["verdict"], margin=0.5)) == 2
