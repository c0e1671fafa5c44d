"""Training backends on CPU: backend selection, the planner's batch choice, and the CUDA
out-of-memory back-off — with fakes for the CUDA calls only; the training itself is real."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from isheep_lite.config import TrainConfig
from isheep_lite.recipe import UserError
from isheep_lite.training import encode, fit, hardware, train

CONVOS = [
    [{"role": "user", "content": f"Name fruit number {i}."}, {"role": "assistant", "content": f"Fruit {i} is a plum."}] for i in range(8)
]


@pytest.mark.parametrize(
    "name,cuda,has,triton,expected",
    [
        ("auto", True, True, True, "unsloth"),
        ("auto", False, True, True, "unsloth"),
        ("auto", True, False, False, "hf"),
        ("auto", False, False, False, "hf"),
        ("hf", True, True, True, "hf"),
        ("unsloth", False, True, True, "unsloth"),
    ],
)
def test_backend_selection(name: str, cuda: bool, has: bool, triton: bool, expected: str) -> None:
    assert hardware.resolve_backend(name, cuda, has, triton) == expected


def test_asking_for_what_cannot_run_is_one_line() -> None:
    with pytest.raises(UserError, match=r"pip install 'isheep-lite\[gpu\]'"):
        hardware.resolve_backend("unsloth", True, False)
    with pytest.raises(UserError, match="Triton"):
        hardware.resolve_backend("hf", False, True, has_triton=True)


def test_batches_come_from_the_planner_when_free_memory_is_known(tiny: dict[str, Path]) -> None:
    examples, _ = encode.build_examples(CONVOS, tiny["gguf"], 512)
    cfg = TrainConfig(batch_size=8, grad_accum=2)
    assert fit.choose_batches(cfg, tiny["hf"], examples, "hf", None)[:2] == (8, 2), "CPU: the recipe's values"
    roomy = fit.choose_batches(cfg, tiny["hf"], examples, "hf", 24e9)
    assert roomy[:2] == (16, 1) and roomy[2]["estimate_gb"] < 24
    # 0.92 GB free, 90 % of it usable: after 0.75 GB of CUDA overhead there is room for 4 sequences
    # of this model (the logits, 49k vocabulary × 6 B per token, dominate); the effective batch stays 16
    micro, accum, plan = fit.choose_batches(cfg, tiny["hf"], examples, "hf", 0.92e9)
    assert (micro, accum) == (4, 4) and plan["free_gb"] == 0.92 and plan["seq_len"] == max(len(e["input_ids"]) for e in examples)
    with pytest.raises(UserError, match="GB free"):
        fit.choose_batches(cfg, tiny["hf"], examples, "hf", 0.8e9)


def _adapter_after_two_steps(tiny: dict[str, Path], out: Path, oom_above: int | None) -> tuple[dict, int]:
    import torch

    examples, _ = encode.build_examples(CONVOS, tiny["gguf"], 512)
    cfg = TrainConfig(batch_size=4, grad_accum=1, lora_dropout=0.0, epochs=1, warmup_steps=0, checkpoint_steps=0, lr=1e-2)
    trainer = fit.make_trainer(tiny["hf"], examples, cfg, out, seed=0)
    if oom_above is not None:  # the fake: what a card with room for `oom_above` sequences would do
        forward = trainer.model.forward

        def fake_forward(*args, **kw):
            if kw["input_ids"].shape[0] > oom_above:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (fake)")
            return forward(*args, **kw)

        trainer.model.forward = fake_forward
    trainer.train()
    assert trainer.state.global_step == 2
    weights = {k: v.detach().clone() for k, v in trainer.model.named_parameters() if "lora_" in k}
    return weights, trainer.oom_splits


def test_oom_halves_the_micro_batch_and_loses_nothing(tiny: dict[str, Path], tmp_path: Path) -> None:
    import torch

    clean, splits = _adapter_after_two_steps(tiny, tmp_path / "a", None)
    assert splits == 1
    backed_off, splits = _adapter_after_two_steps(tiny, tmp_path / "b", oom_above=1)
    assert splits == 4, "4 → 2 → 1 sequence per piece"
    assert clean.keys() == backed_off.keys() and clean
    for k in clean:
        assert torch.allclose(clean[k], backed_off[k], atol=1e-5, rtol=1e-4), k
    with pytest.raises(torch.cuda.OutOfMemoryError):
        _adapter_after_two_steps(tiny, tmp_path / "c", oom_above=0)


@pytest.mark.slow
def test_training_result_records_backend_and_batches(tiny: dict[str, Path], tmp_path: Path) -> None:
    cfg = TrainConfig(batch_size=4, epochs=1, warmup_steps=0, checkpoint_steps=0)
    result = train.train(CONVOS, tiny["hf"], tiny["gguf"], tmp_path, cfg, seed=0)
    assert result["backend"] == "hf" and result["device"] == "cpu" and result["micro_batch"] == 4
    assert result["oom_splits"] == 1 and result["memory_plan"] is None and result["seconds_per_step"] > 0
    assert json.loads((tmp_path / "train_result.json").read_text())["steps"] == result["steps"] == 2
