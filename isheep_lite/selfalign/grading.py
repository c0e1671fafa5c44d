"""Metacognitive self-assessment: the model grades its own (instruction, response) pairs.

Aspects, each scored separately: I-SHEEP's two, response quality and instruction
following, graded 1..scale, and a yes/no verdict ("does the response answer the instruction
correctly?") mapped onto the same scale. Each score is read from next-token log-probabilities, not
generated text: the assistant turn is pre-filled ("Score: " / "Answer:") and the expected value over
the answer tokens is taken. That never fails to parse, costs one forward pass, and keeps a graded
signal even when the model's greedy answer would always be the same token (a 135M model's usually is).
Pairs are scored in batches (`Engine.score_many`): many prompts in one forward pass, reading each
prompt's last-position logits. `assess.calibrate` asks every question a second time with the
instruction withheld and keeps the difference. The default — the calibrated verdict — is the only
form of the grade that a 135M judge gets above chance on the labelled sets (docs/measurements.md).
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

from isheep_lite.config import AssessConfig
from isheep_lite.engines.base import EngineBase, Sampling
from isheep_lite.gguf import chat
from isheep_lite.selfalign.synth import user_message

CRITERIA = {
    "quality": ("How good is the response? A good response is correct, clear and to the point, with no repetition and nothing off-topic."),
    "following": (
        "How well does the response follow the instruction? It should do exactly what the instruction "
        "asks (answer it, not continue or repeat it) and respect any format it requires."
    ),
}
PREFILL = "Score: "
# A yes/no verdict instead of a graded score: the probability of " Yes" against " No", mapped onto
# 1..scale. With the embedded model its AUROC on the three labelled sets (0.583 pooled) is above
# either graded aspect's (chance); calibrated (below) it is 0.63 pooled and 0.671 on the set written
# after it was fixed (bench/results/assess-quality-*.json).
VERDICT_QUESTION = "Does the response answer the instruction correctly? Answer Yes or No."
VERDICT_PREFILL = "Answer:"
VERDICT_WORDS = (" No", " Yes")
# Contextual calibration (`assess.calibrate`): the same question is asked a second time with the
# instruction replaced by this placeholder, and the recorded score is the difference. A small judge
# says much the same about a response whatever it was asked for (fluent text looks "good"); what moves
# when the instruction is shown is the part of the grade that is about the pair.
WITHHELD = "(none)"


def calibrated(aspect: str, scale: int, shown: tuple, withheld: tuple) -> float | None:
    """One score on 1..scale from the score with the instruction shown and with it withheld.

    Verdict with log-probs: 1 + (scale − 1)·σ(log-odds(Yes | shown) − log-odds(Yes | withheld)), the
    probability of Yes once the judge's prior for this response is divided out. Otherwise (graded
    aspects, grammar or parsed answers): the midpoint plus half the difference, which stays in 1..scale.
    The midpoint means "the instruction changed nothing".
    """
    (s, dist, _), (s0, dist0, _) = shown, withheld
    if s is None or s0 is None:
        return None
    if aspect == "verdict" and dist is not None and dist0 is not None:
        eps = 1e-12
        lo = math.log((dist[1] + eps) / (dist[0] + eps)) - math.log((dist0[1] + eps) / (dist0[0] + eps))
        return 1 + (scale - 1) / (1 + math.exp(-max(-50.0, min(50.0, lo))))
    return (scale + 1) / 2 + (s - s0) / 2


def assessment_prompt(engine: EngineBase, instruction: str, response: str, aspect: str, scale: int) -> str:
    question = (
        VERDICT_QUESTION
        if aspect == "verdict"
        else (f"{CRITERIA[aspect]} Rate it from 1 (very poor) to {scale} (excellent). Reply with the number only.")
    )
    content = (
        "Read the instruction and the response below.\n\n"
        f"### Instruction\n{instruction}\n\n### Response\n{response}\n\n### Question\n{question}"
    )
    prefill = VERDICT_PREFILL if aspect == "verdict" else PREFILL
    return chat.render_chat(engine.info, [{"role": "user", "content": content}], add_generation_prompt=True) + prefill


def expected_score(logprobs: list[float]) -> tuple[float, list[float], float]:
    """(expected score, distribution over 1..n renormalised, probability mass the digits had)."""
    top = max(logprobs)
    weights = [math.exp(lp - top) for lp in logprobs]
    total = sum(weights)
    dist = [w / total for w in weights]
    mass = total * math.exp(top)
    return sum((i + 1) * p for i, p in enumerate(dist)), dist, mass


def parse_score(text: str, scale: int) -> int | None:
    """The first whole number 1..scale in a generated reply, or None (free-generation mode)."""
    for m in re.finditer(r"(?<![\d.])(\d+)(?!\d|\.\d)", text):
        value = int(m.group(1))
        return value if 1 <= value <= scale else None
    return None


def score_prompts(
    engine: EngineBase, prompts: list[str], cfg: AssessConfig, aspect: str
) -> list[tuple[float | None, list[float] | None, float | None]]:
    """(score, distribution over the answers, their probability mass) per pre-filled prompt, by `cfg.mode`.

    logprob: one forward pass, expected value of the next-token distribution (never fails);
    grammar: greedy generation constrained by a GBNF grammar to one valid answer;
    generate: free greedy reply without the pre-fill, parsed (None when it holds no answer) —
    for backends that expose neither log-probs nor grammars.
    A graded aspect answers a digit 1..scale; the verdict answers No/Yes, scored 1 or scale
    (its expected score is 1 + (scale − 1)·P(Yes)).
    """
    verdict = aspect == "verdict"
    answers = list(VERDICT_WORDS) if verdict else [str(d) for d in range(1, cfg.scale + 1)]
    values = [1.0, float(cfg.scale)] if verdict else [float(d) for d in range(1, cfg.scale + 1)]
    if cfg.mode == "logprob":
        out = []
        for lp in engine.score_many(prompts, [engine.token_id(a) for a in answers]):
            _, dist, mass = expected_score(lp)
            out.append((sum(v * q for v, q in zip(values, dist)), dist, mass))
        return out
    prefill = VERDICT_PREFILL if verdict else PREFILL
    if cfg.mode == "grammar":
        rule = '" Yes" | " No"' if verdict else f"[1-{cfg.scale}]"
        s = Sampling(temperature=0.0, max_tokens=3, grammar=f"root ::= {rule}")
        return [
            (values[[a.strip() for a in answers].index(c.text.strip())], None, None) for c in engine.generate(prompts, [s] * len(prompts))
        ]
    s = Sampling(temperature=0.0, max_tokens=48)
    outs = engine.generate([p[: -len(prefill)] for p in prompts], [s] * len(prompts))
    parse = parse_verdict if verdict else parse_score
    return [(None if (v := parse(c.text, cfg.scale)) is None else float(v), None, None) for c in outs]


def parse_verdict(text: str, scale: int) -> int | None:
    """scale for a reply that starts with yes, 1 for no, None otherwise (free-generation mode)."""
    m = re.match(r"\W*(yes|no)\b", text, re.IGNORECASE)
    return None if m is None else scale if m.group(1).lower() == "yes" else 1


def ifd(engine: EngineBase, records: list[dict[str, Any]]) -> list[float]:
    """Instruction-following difficulty: PPL(response | instruction) / PPL(response | empty request).

    Both perplexities are over the same tokens — the assistant turn after the chat template — so the
    ratio measures only how much the instruction helps predict the response. Near or above 1: the
    response ignores its instruction (off-topic, generic); well below 1: it answers it.
    """

    def prompt(user: str) -> str:
        return chat.render_chat(engine.info, [{"role": "user", "content": user}], add_generation_prompt=True)

    answers = [r["response"] for r in records]
    cond = engine.completion_logprobs([prompt(user_message(r["instruction"], r["input"])) for r in records], answers)
    free = engine.completion_logprobs([prompt("") for _ in records], answers)
    return [math.exp(-lc / n + lf / n) for (lc, n), (lf, _) in zip(cond, free)]


def assess(
    engine: EngineBase,
    records: list[dict[str, Any]],
    cfg: AssessConfig,
    assessor_name: str,
    done: dict[str, dict[str, Any]],
    write: Callable[[dict[str, Any]], None],
    progress: Callable[[int], None] = lambda n: None,
) -> list[dict[str, Any]]:
    """Score every record on every aspect; `done` holds records scored before a resume."""
    progress(sum(r["id"] in done for r in records))
    # Fixed chunks over all records, each saved before the next; a resumed run rescores an
    # unfinished chunk whole (same batch composition, same scores) and writes only what is missing.
    chunk = 4 * engine.n_parallel
    for start in range(0, len(records), chunk):
        part = records[start : start + chunk]
        if all(r["id"] in done for r in part):
            continue

        def scored(instruction: Callable[[dict[str, Any]], str]) -> Any:
            per_aspect = [
                score_prompts(engine, [assessment_prompt(engine, instruction(r), r["response"], a, cfg.scale) for r in part], cfg, a)
                for a in cfg.aspects
            ]
            return iter(x for row in zip(*per_aspect) for x in row)

        results = scored(lambda r: user_message(r["instruction"], r["input"]))
        baselines = scored(lambda r: WITHHELD) if cfg.calibrate else None
        ifds = iter(ifd(engine, part) if cfg.ifd else [None] * len(part))
        for rec in part:
            scores, dists, mass, raw, base = {}, {}, {}, {}, {}
            for aspect in cfg.aspects:
                shown = next(results)
                scores[aspect], dists[aspect], mass[aspect] = shown
                if baselines is not None:
                    withheld = next(baselines)
                    raw[aspect], base[aspect] = shown[0], withheld[0]
                    scores[aspect] = calibrated(aspect, cfg.scale, shown, withheld)
            rec_ifd = next(ifds)
            if rec["id"] in done:
                continue
            valid = [v for v in scores.values() if v is not None]
            row = {
                **rec,
                "scores": {a: None if v is None else round(v, 4) for a, v in scores.items()},
                "score": round(sum(valid) / len(valid), 4) if len(valid) == len(scores) else None,
                "assessor": assessor_name,
            }
            if rec_ifd is not None:
                row["ifd"] = round(rec_ifd, 4)
            if cfg.calibrate:  # the two scores the calibrated one came from
                row["scores_shown"] = {a: None if v is None else round(v, 4) for a, v in raw.items()}
                row["scores_withheld"] = {a: None if v is None else round(v, 4) for a, v in base.items()}
            if cfg.mode == "logprob":
                row["score_dist"] = {a: [round(p, 4) for p in d] for a, d in dists.items()}
                row["digit_mass"] = {a: round(m, 4) for a, m in mass.items()}
            write(row)
            done[rec["id"]] = row
            progress(1)
    return [done[r["id"]] for r in records]


def histogram(xs: list[float], scale: int) -> dict[str, int]:
    """Counts of scores in unit bins "1-2", …, "(scale-1)-scale" (the last bin holds the top score too)."""
    counts = {f"{lo}-{lo + 1}": 0 for lo in range(1, scale)}
    for x in xs:
        lo = min(max(int(x), 1), scale - 1)
        counts[f"{lo}-{lo + 1}"] += 1
    return counts
