"""train.processes > 1: LoRA training as DDP processes (gloo on a CPU), with the global batch of one process."""

from __future__ import annotations

from pathlib import Path

import pytest

from isheep_lite.config import TrainConfig
from isheep_lite.training import fit, train

WORDS = ["apple", "river", "candle", "mountain", "violin", "harbor", "meadow", "lantern"]
CONVERSATIONS = [
    [{"role": "user", "content": f"Write the word {w} {k + 1} times."}, {"role": "assistant", "content": " ".join([w] * (k + 1))}]
    for w in WORDS
    for k in range(4)
]


def test_each_process_takes_an_equal_share_of_the_effective_batch() -> None:
    for batch, accum, world in [(4, 2, 2), (4, 1, 2), (2, 3, 6), (8, 1, 4), (3, 4, 2)]:
        share = fit.rank_share(TrainConfig(batch_size=batch, grad_accum=accum), world)
        assert share.batch_size * share.grad_accum * world == batch * accum and batch % share.batch_size == 0
    assert fit.rank_share(TrainConfig(batch_size=4, grad_accum=2), 1) == TrainConfig(batch_size=4, grad_accum=2)


@pytest.mark.slow
def test_two_gloo_processes_follow_the_loss_curve_of_one(tiny: dict[str, Path], tmp_path: Path) -> None:
    cfg = TrainConfig(batch_size=4, grad_accum=2, epochs=2, lr=1e-3, warmup_steps=0, checkpoint_steps=0, threads=1)
    curves = {}
    for n in (1, 2):
        result = train.train(
            CONVERSATIONS, tiny["hf"], tiny["gguf"], tmp_path / f"p{n}", TrainConfig(**{**cfg.__dict__, "processes": n}), 0
        )
        assert result["processes"] == n and result["steps"] == 8 and (tmp_path / f"p{n}" / "adapter").is_dir()
        curves[n] = result["losses"]
    # Same examples in every optimizer step (32 examples, 8 per step, 2 epochs): the curves agree up
    # to float32 reduction order (gloo's all-reduce sums the two halves' gradients); measured here:
    # equal to the four decimals the trainer logs.
    assert len(curves[1]) == len(curves[2]) == 8
    assert max(abs(a - b) for a, b in zip(curves[1], curves[2])) < 1e-3, curves
    assert curves[1][-1] < curves[1][0], "and it learns"
