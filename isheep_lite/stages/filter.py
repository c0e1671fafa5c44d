"""Stage `filter` (selection): keep the best-graded pairs (filters.select) as chat conversations to train on;
every dropped pair is kept with its reason."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from isheep_lite.rundir import formats
from isheep_lite.rundir.jsonl import read_jsonl, write_jsonl
from isheep_lite.selfalign import filters, synth
from isheep_lite.stages import assess, responses
from isheep_lite.stages.context import Context, Summary, once

KEPT, REJECTED, PREFERENCES = "kept.jsonl", "rejected.jsonl", "preferences.jsonl"
DATA = "data"  # the kept pairs as messages, ShareGPT and Alpaca JSONL with a dataset card (formats.py)


@dataclass(frozen=True, kw_only=True)
class FilterSummary(Summary):
    STAGE = "filter"
    FILES = (KEPT, REJECTED, PREFERENCES)
    kept: int
    rejected: int
    kept_ratio: float  # kept / instructions answered
    rejected_by_reason: dict[str, int]
    preferences: int = 0  # best/worst answer pairs for a preference step (train.objective dpo, sft+dpo)
    score_spread: float | None = None  # best-of-n: mean over instructions of best minus worst graded answer


def run(ctx: Context) -> FilterSummary:
    return once(ctx, FilterSummary, _select)


def _select(ctx: Context) -> FilterSummary:
    r, d = ctx.recipe, ctx.dir
    answered = read_jsonl(d / responses.RESPONSES)
    candidates, rejected = filters.split_pairs(answered, r.filter)
    scored = {x["id"]: x for x in read_jsonl(d / assess.SCORED)}
    aspects = r.assess.aspects if r.assess.enabled else []
    pool, not_best = [scored[x["id"]] for x in candidates], []
    if r.synth.responses_per_instruction > 1:  # best-of-n: each instruction's best-graded answer goes on
        pool, not_best = filters.best_of_n(pool, aspects)
    kept, dropped = filters.select(pool, aspects, r.filter)
    dropped = not_best + dropped
    spreads = [x["score_spread"] for x in pool if x.get("score_spread") is not None]
    instructions = len({x.get("instruction_id", x["id"]) for x in answered})
    chats = [synth.conversation(x) for x in kept]
    by_reason = filters.count_by(rejected + dropped, "reason")
    write_jsonl(d / KEPT, [{"id": x["id"], "messages": c, "score": x["score"]} for x, c in zip(kept, chats)])
    write_jsonl(d / REJECTED, rejected + dropped)
    about = {
        "iteration": ctx.t,
        "run": r.name,
        "model": ctx.current.gguf.name,
        "answered": len(answered),
        "rejected_by_reason": by_reason,
        "assess": asdict(r.assess),
        "filter": asdict(r.filter),
    }
    formats.write_dataset(d / DATA, f"{r.name}-iter{ctx.t:02d}", kept, chats, about)
    pairs = filters.preference_pairs(kept, pool + not_best, aspects, r.train.dpo_margin) if r.train.objective != "sft" else []
    write_jsonl(
        d / PREFERENCES,
        [
            {
                "id": p["id"],
                "prompt": synth.conversation(p["chosen"])[:1],
                "chosen": p["chosen"]["response"],
                "rejected": p["rejected"]["response"],
                "margin": p["margin"],
            }
            for p in pairs
        ],
    )
    return FilterSummary(
        kept=len(kept),
        rejected=len(rejected) + len(dropped),
        kept_ratio=round(len(kept) / max(1, instructions), 4),
        rejected_by_reason=by_reason,
        preferences=len(pairs),
        score_spread=round(sum(spreads) / len(spreads), 4) if spreads else None,
    )
