"""Stage `train`: LoRA SFT on the kept pairs (of this iteration, or of every one so far with
loop.data=cumulative), in a child process (train.py) that resumes from its last checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from isheep_lite.recipe import UserError
from isheep_lite.rundir.jsonl import read_jsonl
from isheep_lite.stages import filter
from isheep_lite.stages.context import Context, Summary, once
from isheep_lite.training import train as trainer


@dataclass(frozen=True, kw_only=True)
class TrainSummary(Summary):
    STAGE = "train"
    FILES = ("adapter/",)
    trained_on: str  # the HF weights the adapter was trained on
    examples: int
    dropped_too_long: int  # pairs longer than train.max_seq_len (dropped, never cut)
    steps: int
    train_loss: float
    loss_first: float | None
    loss_last: float | None
    losses: list[float]  # one per logged step
    tokens: int
    resumed_from_step: int | None
    backend: str  # hf | unsloth, as resolved on this machine
    device: str
    micro_batch: int
    grad_accum: int  # per process
    processes: int = 1  # DDP processes (train.processes); the global batch is micro_batch × grad_accum × processes
    memory_plan: dict[str, Any] | None  # the planner's figures on CUDA
    oom_splits: int  # micro-batches split after running out of memory
    peak_vram_gb: float | None
    seconds_per_step: float
    objective: str = "sft"  # train.objective
    dpo: dict[str, Any] | None = None  # the preference step: pairs, steps, losses, reward_accuracy_last


def run(ctx: Context) -> TrainSummary:
    return once(ctx, TrainSummary, _train)


def _train(ctx: Context) -> TrainSummary:
    r, t = ctx.recipe, ctx.t
    iters = range(1, t + 1) if r.loop.data == "cumulative" else [t]
    data = [x["messages"] for i in iters for x in read_jsonl(ctx.store.iter_dir(i) / filter.KEPT)]
    preferences = [x for i in iters for x in read_jsonl(ctx.store.iter_dir(i) / filter.PREFERENCES)]
    if r.train.objective != "sft" and not preferences:
        raise UserError(
            f"iteration {t}: no preference pair (best and worst answer of one instruction, scores at least "
            f"train.dpo_margin apart) to learn from; lower train.dpo_margin or raise synth.responses_per_instruction"
        )
    if r.train.objective != "dpo" and not data:
        raise UserError(
            f"iteration {t}: no pair passed selection, nothing to train on (reasons in {ctx.dir / filter.REJECTED}); "
            "rerun under a new name with a lower filter.min_score or more synth.num_instructions"
        )
    ctx.engines.release()  # training needs the memory
    result = trainer.train(data, ctx.train_hf, ctx.given, ctx.dir, r.train, r.loop.seed + t, preferences=preferences)
    return TrainSummary(trained_on=str(ctx.train_hf), **result)
