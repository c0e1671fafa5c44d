"""Metacognitive self-assessment: the model grades its own (instruction, response) pairs.

Two separate scores per pair, as in I-SHEEP (METHOD.md §6): response quality and instruction
following. Each score is read from next-token log-probabilities, not generated text: the assistant
turn is pre-filled with "Score: " and the expected value over the digit tokens 1..scale is taken.
That never fails to parse, costs one forward pass, and keeps a graded signal even when the model's
greedy answer would always be the same digit (a 135M model's usually is).
Pairs are scored in batches (`Engine.score_many`): many prompts in one forward pass, reading each
prompt's last-position logits.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from . import models
from .engine import Engine
from .recipe import AssessConfig
from .synth import user_message

CRITERIA = {
    "quality": (
        "How good is the response? A good response is correct, clear and to the point, "
        "with no repetition and nothing off-topic."
    ),
    "following": (
        "How well does the response follow the instruction? It should do exactly what the instruction "
        "asks (answer it, not continue or repeat it) and respect any format it requires."
    ),
}
PREFILL = "Score: "


def assessment_prompt(engine: Engine, instruction: str, response: str, aspect: str, scale: int) -> str:
    content = (
        "Read the instruction and the response below.\n\n"
        f"### Instruction\n{instruction}\n\n### Response\n{response}\n\n### Question\n{CRITERIA[aspect]} "
        f"Rate it from 1 (very poor) to {scale} (excellent). Reply with the number only."
    )
    return models.render_chat(engine.info, [{"role": "user", "content": content}], add_generation_prompt=True) + PREFILL


def expected_score(logprobs: list[float]) -> tuple[float, list[float], float]:
    """(expected score, distribution over 1..n renormalised, probability mass the digits had)."""
    top = max(logprobs)
    weights = [math.exp(lp - top) for lp in logprobs]
    total = sum(weights)
    dist = [w / total for w in weights]
    mass = total * math.exp(top)
    return sum((i + 1) * p for i, p in enumerate(dist)), dist, mass


def assess(
    engine: Engine,
    records: list[dict[str, Any]],
    cfg: AssessConfig,
    assessor_name: str,
    done: dict[str, dict[str, Any]],
    write: Callable[[dict[str, Any]], None],
    progress: Callable[[int], None] = lambda n: None,
) -> list[dict[str, Any]]:
    """Score every record on every aspect; `done` holds records scored before a resume."""
    digits = [engine.token_id(str(d)) for d in range(1, cfg.scale + 1)]
    progress(sum(r["id"] in done for r in records))
    # Fixed chunks over all records, each saved before the next; a resumed run rescores an
    # unfinished chunk whole (same batch composition, same scores) and writes only what is missing.
    chunk = 4 * engine.n_parallel
    for start in range(0, len(records), chunk):
        part = records[start : start + chunk]
        if all(r["id"] in done for r in part):
            continue
        prompts = [assessment_prompt(engine, user_message(r["instruction"], r["input"]), r["response"], a, cfg.scale)
                   for r in part for a in cfg.aspects]
        lps = iter(engine.score_many(prompts, digits))
        for rec in part:
            scores, dists, mass = {}, {}, {}
            for aspect in cfg.aspects:
                scores[aspect], dists[aspect], mass[aspect] = expected_score(next(lps))
            if rec["id"] in done:
                continue
            row = {
                **rec,
                "scores": {a: round(v, 4) for a, v in scores.items()},
                "score": round(sum(scores.values()) / len(scores), 4),
                "score_dist": {a: [round(p, 4) for p in d] for a, d in dists.items()},
                "digit_mass": {a: round(m, 4) for a, m in mass.items()},
                "assessor": assessor_name,
            }
            write(row)
            done[rec["id"]] = row
            progress(1)
    return [done[r["id"]] for r in records]
