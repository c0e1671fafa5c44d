"""What the end-to-end runs share: the ablation recipes and the small counts they run with."""

from __future__ import annotations

from pathlib import Path

ABLATIONS = sorted((Path(__file__).resolve().parents[2] / "recipes" / "ablations").glob("*.yaml"))
THRESHOLDS = sorted((p for p in ABLATIONS if p.stem.startswith("threshold_")), key=lambda p: float(p.stem.split("_")[1]))
OTHERS = [p for p in ABLATIONS if p not in THRESHOLDS]
# what these runs check is that each recipe's or lever's stages run and record what they do, not the
# models' quality, so eval is skipped (no eval stage is recorded), the pools are small and training
# runs a quarter epoch (a few real optimizer steps)
SMALL = [
    "loop.iterations=1",
    "synth.num_instructions=8",
    "synth.response_max_tokens=128",
    "train.epochs=0.25",
    "eval.stop_prompts=0",
    "eval.ifeval_prompts=0",
    "eval.suite_prompts=0",
    "eval.heldout_prompts=0",
    "eval.knowledge_questions=0",
    "eval.pairwise=false",
]
# A threshold keeps only some scored pairs, so the shared pool needs enough pairs that the highest
# cut-off keeps a few, and answers long enough to end by themselves (at 160 tokens most are truncated).
POOL = ["synth.num_instructions=32", "synth.response_max_tokens=320"]
