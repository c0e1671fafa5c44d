"""constraints.py: every verifiable check passes and fails on handwritten responses."""

from __future__ import annotations

import pytest

from isheep_lite import constraints

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
