"""Stage `instructions`: the best model so far writes new instructions — few-shot from seed tasks
(the paper) or zero-seed (magpie) — and the rule filters drop unusable ones (synth.py, filters.py)."""

from __future__ import annotations

from dataclasses import dataclass

from isheep_lite.progress import progress_bar
from isheep_lite.rundir.jsonl import read_jsonl, write_jsonl
from isheep_lite.selfalign import constraints, filters, synth
from isheep_lite.stages.context import Context, Summary, once

COMPLETIONS, KEPT, REJECTED = "completions.jsonl", "instructions.jsonl", "instructions_rejected.jsonl"


@dataclass(frozen=True, kw_only=True)
class InstructionsSummary(Summary):
    STAGE = "instructions"
    FILES = (COMPLETIONS, KEPT, REJECTED)
    prompts: int  # generation prompts sent
    instructions: int  # usable instructions kept
    rejected: int
    rejected_by_reason: dict[str, int]
    constrained: int = 0  # kept instructions with a verifiable constraint appended (synth.verifiable_fraction)


def run(ctx: Context) -> InstructionsSummary:
    return once(ctx, InstructionsSummary, _generate)


def _generate(ctx: Context) -> InstructionsSummary:
    r, d = ctx.recipe, ctx.dir
    engine = ctx.engines.get(ctx.current)
    with progress_bar(f"it{ctx.t} instructions", r.synth.num_instructions) as bar:
        kept, rejected = synth.generate_instructions(
            engine, ctx.seeds, r.synth, r.filter, r.loop.seed, ctx.t, d / COMPLETIONS, progress=bar
        )
    if r.synth.verifiable_fraction:  # verifiable self-feedback: a checkable constraint on some instructions
        kept = constraints.attach(kept, r.synth.verifiable_fraction, synth.derive_seed(r.loop.seed, ctx.t, "verifiable"))
    write_jsonl(d / KEPT, kept)
    write_jsonl(d / REJECTED, rejected)
    return InstructionsSummary(
        prompts=len(read_jsonl(d / COMPLETIONS)),
        instructions=len(kept),
        rejected=len(rejected),
        rejected_by_reason=filters.count_by(rejected, "reason"),
        constrained=sum("constraint" in x for x in kept),
    )
