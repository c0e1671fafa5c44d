"""Stage `filter` (selection): keep the best-graded pairs (filters.select) as chat conversations to train on;
every dropped pair is kept with its reason."""

from __future__ import annotations

from dataclasses import dataclass

from .. import filters, synth
from ..store import read_jsonl, write_jsonl
from . import assess, responses
from .context import Context, Summary, once

KEPT, REJECTED = "kept.jsonl", "rejected.jsonl"


@dataclass(frozen=True, kw_only=True)
class FilterSummary(Summary):
    STAGE = "filter"
    FILES = (KEPT, REJECTED)
    kept: int
    rejected: int
    kept_ratio: float  # kept / answered
    rejected_by_reason: dict[str, int]


def run(ctx: Context) -> FilterSummary:
    return once(ctx, FilterSummary, _select)


def _select(ctx: Context) -> FilterSummary:
    r, d = ctx.recipe, ctx.dir
    answered = read_jsonl(d / responses.RESPONSES)
    candidates, rejected = filters.split_pairs(answered, r.filter)
    scored = {x["id"]: x for x in read_jsonl(d / assess.SCORED)}
    kept, dropped = filters.select([scored[x["id"]] for x in candidates], r.assess.aspects if r.assess.enabled else [], r.filter)
    write_jsonl(d / KEPT, [{"id": x["id"], "messages": synth.conversation(x), "score": x["score"]} for x in kept])
    write_jsonl(d / REJECTED, rejected + dropped)
    return FilterSummary(
        kept=len(kept),
        rejected=len(rejected) + len(dropped),
        kept_ratio=round(len(kept) / max(1, len(answered)), 4),
        rejected_by_reason=filters.count_by(rejected + dropped, "reason"),
    )
