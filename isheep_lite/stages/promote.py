"""Stage `promote`: is M_t the new best model? Compared prompt by prompt, by a paired bootstrap, with
the best model so far *and* with M_0 — so small losses cannot compound over iterations — on every
decision set both were evaluated on: IFEval and the second set (their prompts whose constraint
kinds training does not see), the knowledge probe and the stop rate.

M_t is flagged `worse` when any set says it is below the best or M_0 with probability ≥
eval.worse_confidence (knowledge: when it also lost more than eval.knowledge_tolerance). It becomes
the new best only if it is at least as good as the best on every following set, has not forgotten
beyond the tolerance against either model, and its stop rate has not collapsed — a gain that shows
on one set alone is not a gain, and a model no following set could compare is not promoted. With
loop.promote=latest every M_t is promoted; the flags are still recorded. Each set is compared in one
metric: a run resumed with a set measured two ways is refused in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from isheep_lite.evals import measure
from isheep_lite.stages.context import Context, Summary, once
from isheep_lite.recipe import UserError
from isheep_lite.stages.eval import EvalSummary

FOLLOWING = ("ifeval", "heldout")  # the instruction-following decision sets, first the one promotion reports


@dataclass(frozen=True, kw_only=True)
class PromoteSummary(Summary):
    STAGE = "promote"
    against: int  # the best iteration before this one
    compared: bool  # False when the two models share no set of per-prompt outcomes
    worse: bool
    best: int  # the best iteration after this one
    delta: float | None = None  # the first following set's mean per-prompt difference, M_t − best (IFEval when measured)
    ci95: list[float] | None = None
    p_worse: float | None = None
    sets: dict[str, dict[str, Any]] | None = None  # per compared set: its metric, and vs_best, vs_m0: delta, ci95, p_worse
    reason: str | None = None  # why M_t was or was not promoted


def run(ctx: Context) -> PromoteSummary:
    """Run with `ctx.best` the best iteration before `ctx.t`."""
    return once(ctx, PromoteSummary, _decide)


def _decide(ctx: Context) -> PromoteSummary:
    e = ctx.recipe.eval
    new = ctx.done(EvalSummary)
    b = new.outcomes() if new else {}
    sets: dict[str, dict[str, Any]] = {}
    for ref, t in (("best", ctx.best), ("m0", 0)):
        old = ctx.done(EvalSummary, t=t)
        # which prompts are of trained kinds is the run's recipe's question, asked once: an older
        # model's evaluation (M_0's, shared from another run) is read with M_t's marks
        a = old.outcomes(new.marks() if new else None) if old else {}
        for name in sorted(set(a) & set(b)):
            (m_old, x_old), (m_new, x_new) = a[name], b[name]
            if m_old != m_new or len(x_old) != len(x_new):
                raise UserError(
                    f"iteration {ctx.t}: {name} of M_{t} is '{m_old}' over {len(x_old)} prompts, of M_{ctx.t} '{m_new}' over "
                    f"{len(x_new)}: they cannot be compared (eval.* changed on resume?); rerun under a new name"
                )
            sets.setdefault(name, {"metric": m_new})[f"vs_{ref}"] = measure.paired_bootstrap(x_old, x_new)
    following = [k for k in FOLLOWING if k in sets]
    if not following:
        promoted = ctx.recipe.loop.promote == "latest"
        why = "no instruction-following set could be compared" + ("; promoted (loop.promote=latest)" if promoted else "; not promoted")
        return PromoteSummary(against=ctx.best, compared=False, worse=False, best=ctx.t if promoted else ctx.best, sets=sets, reason=why)

    def flagged(name: str) -> bool:
        return any(
            c["p_worse"] >= e.worse_confidence and (name != "knowledge" or c["delta"] < -e.knowledge_tolerance) for c in _refs(sets[name])
        )

    worse = any(flagged(k) for k in sets)
    lost = [k for k in following if sets[k]["vs_best"]["delta"] < 0]
    lost += ["knowledge"] if "knowledge" in sets and any(c["delta"] < -e.knowledge_tolerance for c in _refs(sets["knowledge"])) else []
    lost += ["stop rate"] if "stop" in sets and flagged("stop") else []
    better = not lost or ctx.recipe.loop.promote == "latest"
    reason = f"lower on {', '.join(lost)}" if lost else "at least as good on " + ", ".join(sets)
    first = sets[following[0]]["vs_best"]
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


def _refs(compared: dict[str, Any]) -> list[dict[str, Any]]:
    """A set's comparisons: with the best model and with M_0."""
    return [compared[k] for k in ("vs_best", "vs_m0") if k in compared]
