"""Stage `responses`: the best model so far answers each kept instruction (sampled; each answer is
appended as it finishes, so a crash loses only unfinished ones)."""

from __future__ import annotations

from dataclasses import dataclass

from isheep_lite.progress import progress_bar
from isheep_lite.rundir.jsonl import read_jsonl
from isheep_lite.selfalign import synth
from isheep_lite.stages import instructions
from isheep_lite.stages.context import Context, Summary, once

RESPONSES = "responses.jsonl"


@dataclass(frozen=True, kw_only=True)
class ResponsesSummary(Summary):
    STAGE = "responses"
    FILES = (RESPONSES,)
    responses: int
    per_instruction: int = 1  # answers sampled per instruction (synth.responses_per_instruction)
    tokens: int  # generated tokens
    finished: int  # answers ended by the end-of-turn token (the rest hit synth.response_max_tokens)


def run(ctx: Context) -> ResponsesSummary:
    return once(ctx, ResponsesSummary, _answer)


def _answer(ctx: Context) -> ResponsesSummary:
    r, d = ctx.recipe, ctx.dir
    todo = synth.candidates(read_jsonl(d / instructions.KEPT), r.synth.responses_per_instruction)
    engine = ctx.engines.get(ctx.current)
    with progress_bar(f"it{ctx.t} responses", len(todo)) as bar:
        rows = synth.generate_responses(engine, todo, r.synth, r.loop.seed, ctx.t, d / RESPONSES, progress=bar)
    return ResponsesSummary(
        responses=len(rows),
        per_instruction=r.synth.responses_per_instruction,
        tokens=sum(x["gen"]["tokens"] for x in rows),
        finished=sum(x["gen"]["finish"] == "stop" for x in rows),
    )
