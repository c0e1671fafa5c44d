"""Stage `eval` (evaluation): M_t's held-out checks (evaluate.checks): stop rate, the instruction-following
suite, and the pairwise verdict against M_0's answers; written to `iter_NN/eval.json` as well."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .. import evaluate, models
from ..serving import Served
from ..store import atomic_write_text
from .context import Context, Summary, once

EVAL = "eval.json"


@dataclass(frozen=True, kw_only=True)
class EvalSummary(Summary):
    STAGE = "eval"
    FILES = (EVAL,)
    prompts: int | None = None  # stop-rate prompts
    stop_rate: float | None = None
    mean_tokens: float | None = None
    samples: list[dict[str, Any]] | None = None  # the stop-rate answers: id, prompt, finish, tokens, text
    ifeval: dict[str, Any] | None = None  # the suite: strict, loose, strict_ci95, strict_pass per prompt, …
    pairwise: dict[str, Any] | None = None  # vs M_0: win/tie/loss, score, score_ci95, judge

    def passes(self) -> list[float]:
        """Per-prompt outcome used to rank models: suite strict passes, else stopped answers."""
        return evaluate.passes(self.to_entry())


def run(ctx: Context) -> EvalSummary | None:
    """Evaluate `ctx.model` (None when every check is switched off)."""
    r = ctx.recipe
    if not (r.eval.stop_prompts or r.eval.suite_prompts):
        return None
    return once(ctx, EvalSummary, _evaluate)


def _evaluate(ctx: Context) -> EvalSummary:
    r, model = ctx.recipe, ctx.model
    assert model is not None
    reference = ctx.done(EvalSummary, t=0) if ctx.t > 0 else None
    judge = (
        {"base": ctx.base, "current": None}[r.eval.judge]
        if r.eval.judge in ("base", "current")
        else Served(models.resolve_gguf(r.eval.judge))
    )
    result = evaluate.checks(model, r, ctx.engines, reference.to_entry() if reference else None, judge)
    atomic_write_text(ctx.dir / EVAL, json.dumps({"model": str(model), **result}, indent=2, ensure_ascii=False))
    return EvalSummary(**result)
