"""Stage `promote`: is M_t the new best model? Compared with the best so far, prompt by prompt, on
every set both were evaluated on: the instruction-following suite (or, without it, the stop rate),
the second held-out set, and the knowledge probe.

Each set is compared by a paired bootstrap. M_t is flagged `worse` when a following set says it is
below the best with probability ≥ eval.worse_confidence, or when it has forgotten: its knowledge
accuracy is below the best's by more than eval.knowledge_tolerance with that confidence. It becomes
the new best only if it is at least as good on every following set (ties go to the newer model) and
its knowledge accuracy has not dropped by more than the tolerance — a gain that shows on one set
alone is not a gain. With loop.promote=latest every M_t is promoted; the flag is still recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from isheep_lite.evals import measure
from isheep_lite.stages.context import Context, Summary, once
from isheep_lite.stages.eval import EvalSummary


@dataclass(frozen=True, kw_only=True)
class PromoteSummary(Summary):
    STAGE = "promote"
    against: int  # the best iteration before this one
    compared: bool  # False when the two models share no set of per-prompt outcomes
    worse: bool
    best: int  # the best iteration after this one
    delta: float | None = None  # the first following set's mean per-prompt difference, M_t − best
    ci95: list[float] | None = None
    p_worse: float | None = None
    sets: dict[str, dict[str, Any]] | None = None  # per compared set: delta, ci95, p_worse
    reason: str | None = None  # why M_t was or was not promoted


def run(ctx: Context) -> PromoteSummary:
    """Run with `ctx.best` the best iteration before `ctx.t`."""
    return once(ctx, PromoteSummary, _decide)


def _decide(ctx: Context) -> PromoteSummary:
    old, new = ctx.done(EvalSummary, t=ctx.best), ctx.done(EvalSummary)
    a, b = (old.outcomes(), new.outcomes()) if old and new else ({}, {})
    sets = {k: measure.paired_bootstrap(a[k], b[k]) for k in a if k in b and len(a[k]) == len(b[k])}
    following = [k for k in sets if k != "knowledge"]
    if not following:
        return PromoteSummary(against=ctx.best, compared=False, worse=False, best=ctx.t)
    e = ctx.recipe.eval
    forgot = "knowledge" in sets and sets["knowledge"]["delta"] < -e.knowledge_tolerance
    worse = any(sets[k]["p_worse"] >= e.worse_confidence for k in following) or (
        forgot and sets["knowledge"]["p_worse"] >= e.worse_confidence
    )
    lost = [k for k in following if sets[k]["delta"] < 0] + (["knowledge"] if forgot else [])
    better = not lost or ctx.recipe.loop.promote == "latest"
    reason = f"lower on {', '.join(lost)}" if lost else "at least as good on " + ", ".join(sets)
    first = sets[following[0]]
    return PromoteSummary(
        against=ctx.best,
        compared=True,
        worse=worse,
        best=ctx.t if better else ctx.best,
        delta=first["delta"],
        ci95=first["ci95"],
        p_worse=first["p_worse"],
        sets=sets,
        reason=reason,
    )
