"""The instruction-following suite: every checker passes and fails on handwritten responses."""

from __future__ import annotations

import pytest

from isheep_lite.evals import suite
from isheep_lite.selfalign import synth
from isheep_lite.selfalign.filters import RougeIndex

E = suite.END_PHRASE
CASES = {
    "max_words": ("Bees need calm hands and a smoky start.", " ".join(["word"] * 41)),
    "min_words": (" ".join(["lantern"] * 120), "Too short."),
    "max_sentences": ("One. Two. Three.", "One. Two. Three. Four."),
    "bullets": ("Intro\n* a\n* b\n* c", "* a\n* b"),
    "lowercase": ("all lowercase here.", "Not lowercase."),
    "uppercase": ("ALL CAPS HERE.", "ALL CAPS but not all."),
    "json": ('```json\n{"a": 1}\n```', "a: 1"),
    "keywords": ("Patience every morning.", "Patience only."),
    "forbidden": ("A frog lays eggs in water.", "The frog lays eggs."),
    "letter_freq": ("kick the kettle, kayak to the kiosk", "no such letter"),
    "end_phrase": (f"Done. {E}", f"{E} And more."),
    "title": ("<<Frogs>>\nThey hop.", "<Frogs>\nThey hop."),
    "placeholders": ("Meet [name] at [place].", "Meet [name] there."),
    "postscript": ("Hello.\nP.S. Bye.", "Hello. Bye."),
    "no_commas": ("No commas here.", "Yes, commas."),
    "sections": ("SECTION 1 intro\nSECTION 2 body", "SECTION 1 only"),
    "two_responses": ("First.\n******\nSecond.", "Only one."),
    "quotation": ('"Quoted answer."', "Not quoted."),
    "paragraphs": ("One.\n***\nTwo.\n***\nThree.", "One.\n***\nTwo."),
    "start_word": ("Imagine a frog.", "A frog, imagine."),
}


def test_every_kind_has_cases() -> None:
    assert set(CASES) == set(suite.CHECKERS) and len(CASES) >= 15


@pytest.mark.parametrize("kind", sorted(CASES))
def test_checker_passes_and_fails(kind: str) -> None:
    item = next(it for it in suite.suite() if it.kind == kind)
    good, bad = CASES[kind]
    assert suite.check(item, good), good
    assert not suite.check(item, bad), bad


def test_suite_size_subset_and_loose_scoring() -> None:
    items = suite.suite()
    assert len(items) >= 120 and len({it.id for it in items}) == len(items)
    sub = suite.subset(40)
    assert len(sub) == 40 and {it.kind for it in sub} == set(suite.CHECKERS)
    lower = next(it for it in items if it.kind == "lowercase")
    result = suite.score([lower], ["Sure! Here it is:\nall lowercase now."])
    assert result["strict"] == 0 and result["loose"] == 1


def test_suite_is_held_out_from_seeds_and_generation_prompts() -> None:
    seeds = [s["instruction"] for s in synth.load_seeds("builtin")]
    index = RougeIndex(seeds + [synth.META_PROMPT])
    worst = max(index.max_f1(t) for t in suite.TOPICS)
    assert worst < 0.5, worst
