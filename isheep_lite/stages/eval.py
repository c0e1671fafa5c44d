"""Stage `eval`: M_t on the decision sets (measure.checks) — IFEval, the second set, the knowledge
probe, the stop rate — plus the quick suite and the pairwise verdict against M_0's answers; the
summary also goes to `iter_NN/eval.json`, every answer to `iter_NN/eval_answers.jsonl`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from isheep_lite.engines.serving import Served
from isheep_lite.evals import measure
from isheep_lite.gguf import header
from isheep_lite.rundir.files import atomic_write_text
from isheep_lite.rundir.jsonl import write_jsonl
from isheep_lite.stages import export
from isheep_lite.stages.context import Context, Summary, once

EVAL, ANSWERS = "eval.json", "eval_answers.jsonl"
SETS = ("ifeval", "suite", "heldout")  # the sets whose answers go to ANSWERS, one line each


@dataclass(frozen=True, kw_only=True)
class EvalSummary(Summary):
    STAGE = "eval"
    FILES = (EVAL, ANSWERS)
    prompts: int | None = None  # stop-rate prompts
    stop_rate: float | None = None
    mean_tokens: float | None = None
    samples: list[dict[str, Any]] | None = None  # the stop-rate answers: id, prompt, finish, tokens, text
    ifeval: dict[str, Any] | None = None  # IFEval: prompt/instruction strict/loose, intervals, per prompt loose and trained
    suite: dict[str, Any] | None = None  # the quick suite: strict, loose, strict_ci95, strict_pass per prompt, …
    pairwise: dict[str, Any] | None = None  # vs M_0: win/tie/loss, score, score_ci95, judge
    heldout: dict[str, Any] | None = None  # the second set: strict, loose, constraints kept and trained per prompt, …
    knowledge: dict[str, Any] | None = None  # the knowledge probe: accuracy, accuracy_ci95, correct per question

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> "EvalSummary":
        """As Summary.from_entry; an entry written before IFEval was measured held the suite under `ifeval`."""
        old = entry.get("ifeval")
        if isinstance(old, dict) and "per_prompt_loose" not in old and "suite" not in entry:
            entry = {**entry, "suite": old, "ifeval": None}
        return super().from_entry(entry)

    def marks(self) -> dict[str, tuple[list[Any], list[bool]]]:
        """Per marked set: (its prompts — IFEval's keys, else their count —, which are of trained kinds)."""
        out = {}
        for name in ("ifeval", "heldout"):
            s = getattr(self, name)
            if s and "trained" in s:
                out[name] = (s.get("keys") or [len(s["trained"])], list(s["trained"]))
        return out

    def outcomes(self, marks: dict[str, tuple[list[Any], list[bool]]] | None = None) -> dict[str, tuple[str, list[float]]]:
        """What promotion compares, per set: (the metric, its per-prompt values). IFEval and the second
        set count only their prompts whose constraint kinds training does not see (measure.py) —
        by `marks` (another model's `marks()`: the run's recipe decides what is trained) where the
        set's prompts are the same, else by this model's own."""
        out: dict[str, tuple[str, list[float]]] = {}
        if self.samples:
            out["stop"] = ("stopped", measure.stopped(self.to_entry()))
        own = self.marks()
        for name, metric, values in (("ifeval", "prompt_loose", "per_prompt_loose"), ("heldout", "constraints_kept", "constraints_kept")):
            s = getattr(self, name)
            if s and values in s and "trained" in s:
                prompts, trained = (marks or {}).get(name, own[name])
                if prompts != own[name][0]:
                    trained = own[name][1]
                out[name] = (f"{metric} of untrained prompts", [float(x) for x, m in zip(s[values], trained) if not m])
            elif s:  # measured before prompts were marked trained: named apart, so it never compares with the new metric
                out[name] = (f"{metric} of every prompt", [float(x) for x in s.get(values) or s["strict_pass"]])
        if self.knowledge:
            out["knowledge"] = ("correct", [float(x) for x in self.knowledge["correct"]])
        return {k: v for k, v in out.items() if v[1]}


def run(ctx: Context) -> EvalSummary | None:
    """Evaluate M_t (M_0 at t = 0); None when every check is switched off."""
    e = ctx.recipe.eval
    if not (e.stop_prompts or e.ifeval_prompts or e.suite_prompts or e.heldout_prompts or e.knowledge_questions):
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
    answers = [{"set": name, **a} for name in SETS if result.get(name) for a in result[name].pop("answers", [])]
    write_jsonl(ctx.dir / ANSWERS, answers)
    atomic_write_text(ctx.dir / EVAL, json.dumps({"model": str(model), **result}, indent=2, ensure_ascii=False))
    return EvalSummary(**result)
