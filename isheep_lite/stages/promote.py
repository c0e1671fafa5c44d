"""Stage `promote`: is M_t the new best model? Compared with the best so far on the same held-out
prompts.

M_t is flagged `worse` when a paired bootstrap says it is below the best with probability ≥
eval.worse_confidence, and becomes the new best only if its mean is at least the best's (ties go
to the newer model). With loop.promote=latest every M_t is promoted; the flag is still recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import evaluate
from .context import Context, Summary, once
from .evaluation import EvalSummary


@dataclass(frozen=True, kw_only=True)
class PromoteSummary(Summary):
    STAGE = "promote"
    against: int  # the best iteration before this one
    compared: bool  # False when either model has no per-prompt outcomes to compare
    worse: bool
    best: int  # the best iteration after this one
    delta: float | None = None  # mean per-prompt difference, M_t − best
    ci95: list[float] | None = None
    p_worse: float | None = None


def run(ctx: Context) -> PromoteSummary:
    """Run with `ctx.best` the best iteration before `ctx.t`."""
    return once(ctx, PromoteSummary, _decide)


def _decide(ctx: Context) -> PromoteSummary:
    old, new = ctx.done(EvalSummary, t=ctx.best), ctx.done(EvalSummary)
    a, b = (old.passes(), new.passes()) if old and new else ([], [])
    if not a or len(a) != len(b):
        return PromoteSummary(against=ctx.best, compared=False, worse=False, best=ctx.t)
    cmp = evaluate.paired_bootstrap(a, b)
    worse = cmp["p_worse"] >= ctx.recipe.eval.worse_confidence
    better = cmp["delta"] >= 0 or ctx.recipe.loop.promote == "latest"
    return PromoteSummary(against=ctx.best, compared=True, worse=worse, best=ctx.t if better else ctx.best, **cmp)
