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
