"""Stage `eval` (evaluation): M_t's held-out checks (measure.checks): stop rate, the instruction-following
suite, and the pairwise verdict against M_0's answers; written to `iter_NN/eval.json` as well."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from isheep_lite.engines.serving import Served
from isheep_lite.evals import measure
from isheep_lite.gguf import header
from isheep_lite.rundir.files import atomic_write_text
from isheep_lite.stages import export
from isheep_lite.stages.context import Context, Summary, once

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
    heldout: dict[str, Any] | None = None  # the second set: strict, loose, instruction_strict, strict_pass, strict_ci95
    knowledge: dict[str, Any] | None = None  # the knowledge probe: accuracy, accuracy_ci95, correct per question

    def outcomes(self) -> dict[str, list[float]]:
        """Per-prompt outcomes per set, what promotion compares: `suite` (strict passes; without the
        suite, `stop`: answers that ended), `heldout` (the share of each prompt's constraints kept: a
        small model passes few whole prompts of two or three constraints, so whole-prompt passes
        barely move; strict passes where the share was not recorded), `knowledge` (right answers)."""
        out = {"suite" if self.ifeval else "stop": measure.passes(self.to_entry())}
        if self.heldout:
            out["heldout"] = [float(x) for x in self.heldout.get("constraints_kept") or self.heldout["strict_pass"]]
        if self.knowledge:
            out["knowledge"] = [float(x) for x in self.knowledge["correct"]]
        return {k: v for k, v in out.items() if v}


def run(ctx: Context) -> EvalSummary | None:
    """Evaluate M_t (M_0 at t = 0); None when every check is switched off."""
    r = ctx.recipe
    if not (r.eval.stop_prompts or r.eval.suite_prompts or r.eval.heldout_prompts or r.eval.knowledge_questions):
        return None
    return once(ctx, EvalSummary, _evaluate)


def _evaluate(ctx: Context) -> EvalSummary:
    r = ctx.recipe
    model = export.model(ctx) if ctx.t else ctx.base
    reference = ctx.done(EvalSummary, t=0) if ctx.t > 0 else None
    judge = (
        {"base": ctx.base, "current": None}[r.eval.judge]
        if r.eval.judge in ("base", "current")
        else Served(header.resolve_gguf(r.eval.judge))
    )
    result = measure.checks(model, r, ctx.engines, reference.to_entry() if reference else None, judge)
    atomic_write_text(ctx.dir / EVAL, json.dumps({"model": str(model), **result}, indent=2, ensure_ascii=False))
    return EvalSummary(**result)
