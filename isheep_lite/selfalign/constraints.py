"""Verifiable constraints: parameterised checks a rule decides, no judge model.

A constraint is a dict `{"kind": ..., **args}`; `check(constraint, response)` says whether the
response keeps it. The second held-out instruction-following set (data/if_heldout.jsonl) states
several of them per prompt in its own words; the checks are kept apart from any phrasing so the
same rule can be worded differently wherever it is asked for.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable


def words(t: str) -> list[str]:
    return re.findall(r"\b[\w'-]+\b", t)


def sentences(t: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", t.strip()) if s.strip()]


def paragraphs(t: str) -> list[str]:
    return [p for p in re.split(r"\n\s*\n", t.strip()) if p.strip()]


def _has_word(t: str, w: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", t, re.I) is not None


def _json_object(t: str) -> dict[str, Any] | None:
    t = re.sub(r"^```(?:json)?\s*|\s*```$", "", t.strip())
    try:
        value = json.loads(t)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


CHECKS: dict[str, Callable[..., bool]] = {
    "word_range": lambda r, lo=1, hi=10**9: lo <= len(words(r)) <= hi,
    "sentence_range": lambda r, lo=1, hi=10**9: lo <= len(sentences(r)) <= hi,
    "paragraph_count": lambda r, n: len(paragraphs(r)) == n,
    "dash_items": lambda r, n: len(re.findall(r"^\s*- \S", r, re.M)) == n,
    "numbered_items": lambda r, n: [int(m) for m in re.findall(r"^\s*(\d+)[.)] \S", r, re.M)] == list(range(1, n + 1)),
    "all_lowercase": lambda r: bool(re.search(r"[a-z]", r)) and r == r.lower(),
    "all_uppercase": lambda r: bool(re.search(r"[A-Z]", r)) and r == r.upper(),
    "include_words": lambda r, words: all(_has_word(r, w) for w in words),
    "exclude_words": lambda r, words: bool(r.strip()) and not any(_has_word(r, w) for w in words),
    "starts_with": lambda r, text: r.strip().lower().startswith(text.lower()),
    "ends_with": lambda r, text: r.strip().endswith(text),
    "no_char": lambda r, char: bool(r.strip()) and char not in r,
    "char_at_least": lambda r, char, n: r.lower().count(char) >= n,
    "json_keys": lambda r, keys: (obj := _json_object(r)) is not None and all(k in obj for k in keys),
    "first_line_prefix": lambda r, text: r.strip().split("\n", 1)[0].strip().startswith(text),
}


def check(constraint: dict[str, Any], response: str) -> bool:
    """Whether `response` keeps `constraint` ({"kind", **args})."""
    args = {k: v for k, v in constraint.items() if k != "kind"}
    return bool(CHECKS[constraint["kind"]](response, **args))


# ---- verifiable self-feedback: constraints appended to self-written instructions ------------------
# Worded apart from both evaluation sets (the suite in evals/suite.py, the held-out set in
# data/if_heldout.jsonl) with other parameter values, so training on them teaches following a
# constraint, not the evaluation's sentences (tests/selfalign/test_constraints.py checks the disjointness).
TRAINING: tuple[tuple[str, dict[str, Any]], ...] = (
    ("Reply in 50 words or less.", {"kind": "word_range", "hi": 50}),
    ("Aim for somewhere from 40 to 90 words.", {"kind": "word_range", "lo": 40, "hi": 90}),
    ("Say it in two sentences at most.", {"kind": "sentence_range", "hi": 2}),
    ("Stretch your answer over five or more sentences.", {"kind": "sentence_range", "lo": 5}),
    ("Format the answer as two paragraphs separated by one blank line.", {"kind": "paragraph_count", "n": 2}),
    ("Answer with three dash-led lines, each starting '- '.", {"kind": "dash_items", "n": 3}),
    ("Answer with a list numbered 1. to 4.", {"kind": "numbered_items", "n": 4}),
    ("Write the answer without any uppercase letters.", {"kind": "all_lowercase"}),
    ("Write the answer in uppercase only.", {"kind": "all_uppercase"}),
    ("Be sure the word 'clearly' appears in the answer.", {"kind": "include_words", "words": ["clearly"]}),
    ("Use the words 'first' and 'finally' in the answer.", {"kind": "include_words", "words": ["first", "finally"]}),
    ("Steer clear of the word 'just'.", {"kind": "exclude_words", "words": ["just"]}),
    ("Keep the words 'thing' and 'stuff' out of the answer.", {"kind": "exclude_words", "words": ["thing", "stuff"]}),
    ("Start the answer with 'In short,'.", {"kind": "starts_with", "text": "In short,"}),
    ("Make 'Sure.' the answer's opening word.", {"kind": "starts_with", "text": "Sure."}),
    ("End the answer with the words 'That is all.'", {"kind": "ends_with", "text": "That is all."}),
    ("No semicolons anywhere in the answer.", {"kind": "no_char", "char": ";"}),
    ("Skip question marks entirely in the answer.", {"kind": "no_char", "char": "?"}),
    ('Return the answer as JSON with an "answer" field.', {"kind": "json_keys", "keys": ["answer"]}),
    ("Put 'Answer:' at the start of the first line.", {"kind": "first_line_prefix", "text": "Answer:"}),
)


# The IFEval instruction ids each kind of rule trains, read generously: a rule of the same family
# counts as training it even when its wording and parameters differ (no semicolons trains "no commas",
# a word to use trains both keyword existence and keyword frequency). A decision-set prompt that
# carries any trained kind is a trained prompt: the guard decides on the others (evals.measure).
IFEVAL_IDS: dict[str, tuple[str, ...]] = {
    "word_range": ("length_constraints:number_words",),
    "sentence_range": ("length_constraints:number_sentences",),
    "paragraph_count": ("length_constraints:number_paragraphs",),
    "dash_items": ("detectable_format:number_bullet_lists",),
    "numbered_items": ("detectable_format:number_bullet_lists",),
    "all_lowercase": ("change_case:english_lowercase",),
    "all_uppercase": ("change_case:english_capital", "change_case:capital_word_frequency"),
    "include_words": ("keywords:existence", "keywords:frequency"),
    "exclude_words": ("keywords:forbidden_words",),
    "starts_with": ("length_constraints:nth_paragraph_first_word",),
    "ends_with": ("startend:end_checker",),
    "no_char": ("punctuation:no_comma",),
    "char_at_least": ("keywords:letter_frequency",),
    "json_keys": ("detectable_format:json_format",),
    "first_line_prefix": ("length_constraints:nth_paragraph_first_word",),
}


def trained_kinds(verifiable_fraction: float) -> frozenset[str]:
    """The constraint kinds training sees — the library's, when synth.verifiable_fraction appends it to
    instructions — under every name a decision set uses for them: the rule kinds and their IFEval ids."""
    if not verifiable_fraction:
        return frozenset()
    kinds = {rule["kind"] for _, rule in TRAINING}
    return frozenset(kinds | {i for k in kinds for i in IFEVAL_IDS[k]})


def attach(records: list[dict[str, Any]], fraction: float, seed: int) -> list[dict[str, Any]]:
    """A seeded `fraction` of the records, each with one TRAINING constraint appended to what the user
    writes — after the input where there is one, so a rule never stands between an instruction and
    the text it works on (the instruction before it kept as `base_instruction`, the rule as
    `constraint`); the rest unchanged. Which record gets which constraint depends only on `seed` and
    the record's id."""
    import random

    out = []
    for rec in records:
        rng = random.Random(f"{seed}:verifiable:{rec['id']}")
        if rng.random() >= fraction:
            out.append(rec)
            continue
        phrase, rule = TRAINING[rng.randrange(len(TRAINING))]
        at = "input" if rec.get("input") else "instruction"
        out.append(
            {
                **rec,
                "base_instruction": rec["instruction"],
                at: f"{rec[at].rstrip()}\n\n{phrase}" if at == "input" else f"{rec[at].rstrip()} {phrase}",
                "constraint": {"kind": rule["kind"], **{k: v for k, v in rule.items() if k != "kind"}},
            }
        )
    return out
