"""A verifiable instruction-following suite, written for this project (IFEval-style, offline).

Each prompt is an evaluation-only topic plus one constraint whose compliance a deterministic checker
decides — no judge model. Accuracy is reported strict (the response as given) and loose (IFEval's
relaxation: the check may pass after dropping the first and/or last line, or markdown asterisks,
which forgives "Sure! Here is…" preambles and sign-offs).

Topics are held out: none is a seed task or a generation prompt (a test checks ROUGE-L < 0.5).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable

TOPICS = (
    "describe a day in the life of a lighthouse keeper",
    "explain why bread goes stale",
    "give advice to someone keeping bees for the first time",
    "announce a new solar-powered camping lantern",
    "explain how a magnetic compass works",
    "describe the life cycle of a frog",
    "tell a friend about a hiking trip in the mountains",
    "explain the rules of a simple card game",
)

# kind → (instruction text template, checker(response, **args) -> bool, args)
Check = Callable[..., bool]


def _words(t: str) -> list[str]:
    return re.findall(r"\b[\w'-]+\b", t)


def _sentences(t: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", t.strip()) if s.strip()]


def _bullets(t: str) -> int:
    return len(re.findall(r"^\s*[*-]\s+\S", t, flags=re.M))


def _json_ok(t: str) -> bool:
    t = t.strip()
    t = re.sub(r"^```(?:json)?\s*|\s*```$", "", t)
    try:
        json.loads(t)
        return True
    except ValueError:
        return False


END_PHRASE = "Is there anything else I can help with?"

CHECKERS: dict[str, tuple[str, Check, dict[str, Any]]] = {
    "max_words": ("Answer in at most {n} words.", lambda r, n: 0 < len(_words(r)) <= n, {"n": 40}),
    "min_words": ("Write at least {n} words.", lambda r, n: len(_words(r)) >= n, {"n": 120}),
    "max_sentences": ("Use no more than {n} sentences.", lambda r, n: 0 < len(_sentences(r)) <= n, {"n": 3}),
    "bullets": (
        "Your answer must contain exactly {n} bullet points, each on its own line starting with '* '.",
        lambda r, n: _bullets(r) == n,
        {"n": 3},
    ),
    "lowercase": (
        "Your entire response must be in lowercase letters; no capital letters are allowed.",
        lambda r: bool(r.strip()) and r == r.lower(),
        {},
    ),
    "uppercase": (
        "Your entire response must be in English, in capital letters only.",
        lambda r: bool(re.search(r"[A-Z]", r)) and r == r.upper(),
        {},
    ),
    "json": ("Wrap your entire output in JSON format.", lambda r: _json_ok(r), {}),
    "keywords": (
        "Include the keywords '{a}' and '{b}' in your response.",
        lambda r, a, b: a in r.lower() and b in r.lower(),
        {"a": "patience", "b": "morning"},
    ),
    "forbidden": (
        "Do not use the word '{w}' anywhere in your response.",
        lambda r, w: bool(r.strip()) and not re.search(rf"\b{w}\b", r, re.I),
        {"w": "the"},
    ),
    "letter_freq": (
        "In your response, the letter '{c}' should appear at least {n} times.",
        lambda r, c, n: r.lower().count(c) >= n,
        {"c": "k", "n": 6},
    ),
    "end_phrase": (
        f"Finish your response with this exact phrase: '{END_PHRASE}'. No other words should follow it.",
        lambda r: r.strip().endswith(END_PHRASE),
        {},
    ),
    "title": (
        "Your answer must contain a title, wrapped in double angular brackets, such as <<my title>>.",
        lambda r: bool(re.search(r"<<[^<>\n]+>>", r)),
        {},
    ),
    "placeholders": (
        "Include at least {n} placeholders in square brackets, such as [name].",
        lambda r, n: len(re.findall(r"\[[^\[\]\n]+\]", r)) >= n,
        {"n": 2},
    ),
    "postscript": (
        "At the end of your response, add a postscript starting with P.S.",
        lambda r: bool(re.search(r"^\s*P\.S\.", r, re.M)),
        {},
    ),
    "no_commas": ("Do not use any commas in your response.", lambda r: bool(r.strip()) and "," not in r, {}),
    "sections": (
        "Your response must have {n} sections. Mark the beginning of each section with 'SECTION X'.",
        lambda r, n: len(re.findall(r"\bSECTION\s+\d+", r)) == n,
        {"n": 2},
    ),
    "two_responses": (
        "Give two different responses, separated by six asterisks: ******.",
        lambda r: r.count("******") == 1 and all(p.strip() for p in r.split("******")),
        {},
    ),
    "quotation": (
        "Wrap your entire response in double quotation marks.",
        lambda r: len(r.strip()) > 1 and r.strip()[0] == '"' and r.strip()[-1] == '"',
        {},
    ),
    "paragraphs": (
        "There should be exactly {n} paragraphs, separated by the markdown divider ***.",
        lambda r, n: len([p for p in r.split("***") if p.strip()]) == n and r.count("***") == n - 1,
        {"n": 3},
    ),
    "start_word": ("Start your response with the word '{w}'.", lambda r, w: r.strip().lower().startswith(w.lower()), {"w": "Imagine"}),
}


@dataclass(frozen=True)
class Item:
    id: str
    prompt: str
    kind: str
    args: dict[str, Any]


def suite() -> list[Item]:
    """The full suite: every topic × every constraint kind (8 × 20 = 160 prompts)."""
    items = []
    for k, (template, _, args) in CHECKERS.items():
        for i, topic in enumerate(TOPICS):
            prompt = f"{topic[0].upper()}{topic[1:]}. {template.format(**args)}"
            items.append(Item(f"{k}-{i}", prompt, k, args))
    return items


def subset(n: int) -> list[Item]:
    """A balanced subset: round-robin over kinds, so a small n still covers every constraint."""
    by_kind: dict[str, list[Item]] = {}
    for it in suite():
        by_kind.setdefault(it.kind, []).append(it)
    out: list[Item] = []
    i = 0
    while len(out) < n and i < len(TOPICS):
        out += [items[i] for items in by_kind.values()][: n - len(out)]
        i += 1
    return out


def check(item: Item, response: str) -> bool:
    return bool(CHECKERS[item.kind][1](response, **item.args))


def loose_variants(response: str) -> list[str]:
    """IFEval's loose variants: drop the first and/or last line, with and without asterisks."""
    lines = response.split("\n")
    cut = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return cut + [v.replace("*", "") for v in cut]


def score(items: list[Item], responses: list[str]) -> dict[str, Any]:
    """Strict and loose accuracy (one constraint per prompt: prompt level = instruction level)."""
    strict = [check(it, r) for it, r in zip(items, responses)]
    loose = [any(check(it, v) for v in loose_variants(r)) for it, r in zip(items, responses)]
    per_kind: dict[str, list[int]] = {}
    for it, ok in zip(items, strict):
        per_kind.setdefault(it.kind, []).append(int(ok))
    n = len(items)
    return {
        "prompts": n,
        "strict": round(sum(strict) / n, 4),
        "loose": round(sum(loose) / n, 4),
        "strict_pass": [int(x) for x in strict],
        "loose_pass": [int(x) for x in loose],
        "by_kind": {k: round(sum(v) / len(v), 3) for k, v in per_kind.items()},
    }
