"""Stage `assess`: metacognitive self-assessment — a model grades each answered pair that passed the
pair rules (grading.py), written one record at a time so a resumed run grades only what is missing."""

from __future__ import annotations

from dataclasses import dataclass

from isheep_lite.progress import progress_bar
from isheep_lite.rundir.jsonl import JsonlWriter, read_jsonl, write_jsonl
from isheep_lite.selfalign import filters, grading
from isheep_lite.stages import responses
from isheep_lite.stages.context import Context, Summary, once

SCORED = "scored.jsonl"


@dataclass(frozen=True, kw_only=True)
class AssessSummary(Summary):
    STAGE = "assess"
    FILES = (SCORED,)
    scored: int  # pairs graded
    assessor: str | None  # the grading model's folder (iter_NN) or M_0; None with assess.enabled false
    score_mean: float | None = None
    score_sd: float | None = None
    score_min: float | None = None
    score_max: float | None = None
    score_hist: dict[str, int] | None = None  # pairs per unit bin of the scale


def run(ctx: Context) -> AssessSummary:
    return once(ctx, AssessSummary, _grade)


def _grade(ctx: Context) -> AssessSummary:
    r, d = ctx.recipe, ctx.dir
    candidates, _ = filters.split_pairs(read_jsonl(d / responses.RESPONSES), r.filter)
    if not r.assess.enabled:  # the no-assessment ablation: every candidate goes on unscored
        write_jsonl(d / SCORED, [{**x, "scores": {}, "score": None} for x in candidates])
        return AssessSummary(scored=0, assessor=None)
    assessor = ctx.current if r.assess.assessor == "current" else ctx.base
    name = assessor.name if r.assess.assessor == "current" else "M_0"
    done = {x["id"]: x for x in read_jsonl(d / SCORED)}
    judge = ctx.engines.get(assessor)
    with JsonlWriter(d / SCORED) as out, progress_bar(f"it{ctx.t} self-assessment", len(candidates)) as bar:
        rows = grading.assess(judge, candidates, r.assess, name, done, out.write, bar)
    scores = [x["score"] for x in rows if x["score"] is not None]
    if not scores:
        return AssessSummary(scored=len(rows), assessor=name)
    mean = sum(scores) / len(scores)
    sd = (sum((x - mean) ** 2 for x in scores) / len(scores)) ** 0.5
    return AssessSummary(
        scored=len(rows),
        assessor=name,
        score_mean=round(mean, 4),
        score_sd=round(sd, 4),
        score_min=round(min(scores), 4),
        score_max=round(max(scores), 4),
        score_hist=grading.histogram(scores, r.assess.scale),
    )
