"""constraints.py: every verifiable check passes and fails on handwritten responses."""

from __future__ import annotations

import pytest

from isheep_lite.selfalign import constraints

CASES = [  # (constraint, a response that keeps it, one that breaks it)
    ({"kind": "word_range", "hi": 5}, "Bees like calm hands.", "Bees like calm hands and smoke."),
    ({"kind": "word_range", "lo": 3, "hi": 5}, "Tides follow the Moon.", "Tides."),
    ({"kind": "sentence_range", "hi": 2}, "One. Two.", "One. Two. Three."),
    ({"kind": "sentence_range", "lo": 3}, "One. Two! Three?", "One. Two."),
    ({"kind": "paragraph_count", "n": 2}, "First part.\n\nSecond part.", "Only one part.\nStill the same one."),
    ({"kind": "dash_items", "n": 2}, "Packing:\n- a tent\n- a stove", "- a tent\n- a stove\n- a lamp"),
    ({"kind": "numbered_items", "n": 3}, "1. Water\n2. Soil\n3. Pot", "1. Water\n3. Soil\n2. Pot"),
    ({"kind": "all_lowercase"}, "a quiet evening.", "A quiet evening."),
    ({"kind": "all_uppercase"}, "A QUIET EVENING.", "A QUIET evening."),
    ({"kind": "include_words", "words": ["gentle", "evening"]}, "A Gentle breeze this evening.", "A gentleman's evening."),
    ({"kind": "exclude_words", "words": ["and"]}, "Sand, wind, Andes.", "Salt and pepper."),
    ({"kind": "starts_with", "text": "Picture"}, "  picture a harbour.", "Imagine a harbour."),
    ({"kind": "ends_with", "text": "Thanks for reading."}, "Done. Thanks for reading.\n", "Thanks for reading. Bye."),
    ({"kind": "no_char", "char": ","}, "No commas here.", "One, two."),
    ({"kind": "char_at_least", "char": "z", "n": 3}, "Zebras zigzag lazily.", "Zebras rest."),
    ({"kind": "json_keys", "keys": ["summary", "tip"]}, '```json\n{"summary": "x", "tip": "y"}\n```', '{"summary": "x"}'),
    ({"kind": "first_line_prefix", "text": "Topic:"}, "Topic: tides\nThey rise.", "They rise.\nTopic: tides"),
]


@pytest.mark.parametrize("constraint, good, bad", CASES, ids=[f"{c['kind']}-{i}" for i, (c, _, _) in enumerate(CASES)])
def test_check_passes_and_fails(constraint: dict, good: str, bad: str) -> None:
    assert constraints.check(constraint, good)
    assert not constraints.check(constraint, bad)


def test_every_kind_has_a_case() -> None:
    assert {c["kind"] for c, _, _ in CASES} == set(constraints.CHECKS)


def test_empty_replies_keep_no_negative_constraint() -> None:
    for kind in ("exclude_words", "no_char"):
        args = {"words": ["and"]} if kind == "exclude_words" else {"char": ","}
        assert not constraints.check({"kind": kind, **args}, "  ")


def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    w = [x.lower() for x in constraints.words(text)]
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def test_training_constraints_are_worded_apart_from_every_evaluation_prompt() -> None:
    """No eval prompt or eval constraint phrasing appears in what the loop trains on: the training
    library shares no four-word run with the suite's or the held-out set's prompts, and neither the
    library nor the seeds nor the generation prompt share one with any eval prompt of any set."""
    from isheep_lite.evals import measure, suite
    from isheep_lite.selfalign import synth

    evaluation = [it.prompt for it in suite.suite()] + [it["prompt"] for it in measure.heldout_items(1000)]
    evaluation += [q["question"] for q in measure.knowledge_questions(1000)] + [p["prompt"] for p in measure.stop_prompts(1000)]
    eval_grams = set().union(*(_ngrams(t, 4) for t in evaluation))
    training = [phrase for phrase, _ in constraints.TRAINING]
    shared = {phrase: _ngrams(phrase, 4) & eval_grams for phrase in training if _ngrams(phrase, 4) & eval_grams}
    assert not shared, shared
    # whole eval prompts never appear in the seeds or the generation prompt
    seeds = [s["instruction"] for s in synth.load_seeds("builtin")] + [synth.META_PROMPT]
    assert not [t for t in evaluation if any(t.lower() in s.lower() for s in seeds)]


def test_every_training_constraint_is_checkable_and_attach_is_seeded() -> None:
    assert all(rule["kind"] in constraints.CHECKS for _, rule in constraints.TRAINING)
    recs = [{"id": f"r{i}", "instruction": "Describe a harbour at dawn.", "input": ""} for i in range(200)]
    once, again = constraints.attach(recs, 0.3, seed=7), constraints.attach(recs, 0.3, seed=7)
    assert once == again and 40 <= sum("constraint" in x for x in once) <= 80
    x = next(x for x in once if "constraint" in x)
    assert x["base_instruction"] == "Describe a harbour at dawn." and x["instruction"].startswith(x["base_instruction"] + " ")
    assert constraints.attach(recs, 0.0, seed=7) == recs


def test_a_constraint_follows_the_input_never_stands_between_instruction_and_input() -> None:
    from isheep_lite.selfalign import synth

    recs = [
        {"id": f"r{i}", "instruction": "Create a card with answers to the following question:", "input": "5 + 10 = ?"} for i in range(40)
    ]
    for x in (x for x in constraints.attach(recs, 1.0, seed=3) if "constraint" in x):
        phrase = next(p for p, rule in constraints.TRAINING if rule["kind"] == x["constraint"]["kind"] and p in x["input"])
        message = synth.user_message(x["instruction"], x["input"])
        assert x["instruction"] == x["base_instruction"] and message.endswith(phrase), message
        assert message.index("5 + 10 = ?") < message.index(phrase)


def test_an_answer_that_breaks_its_constraint_is_dropped_before_grading() -> None:
    from isheep_lite.config import FilterConfig
    from isheep_lite.selfalign import filters

    base = {"instruction": "Name a calm colour. Reply in 50 words or less.", "input": "", "gen": {"finish": "stop"}}
    rows = [
        {**base, "id": "ok", "response": "Pale blue feels calm to most people.", "constraint": {"kind": "word_range", "hi": 50}},
        {**base, "id": "long", "response": " ".join(["blue"] * 60) + ".", "constraint": {"kind": "word_range", "hi": 50}},
    ]
    keep, drop = filters.split_pairs(rows, FilterConfig())
    assert [x["id"] for x in keep] == ["ok"] and [(x["id"], x["reason"]) for x in drop] == [("long", "fails_constraint")]
