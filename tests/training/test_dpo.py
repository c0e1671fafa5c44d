"""train.py's preference step (train.objective dpo / sft+dpo): pairs tokenized like SFT data, and a
DPO loss that goes down on a toy preference set (tiny random Llama, in this process)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from helpers import PREFERENCE_PAIRS

from isheep_lite.config import TrainConfig
from isheep_lite.training import encode, fit


def _run(tiny: dict[str, Path], out: Path, cfg: TrainConfig, pairs: list[dict[str, Any]], convos: list | None = None) -> dict[str, Any]:
    """train.train's child work (fit.run_training), in this process."""
    out.mkdir(parents=True, exist_ok=True)
    job = {
        "conversations": convos or [],
        "preferences": pairs,
        "hf_dir": str(tiny["hf"]),
        "gguf": str(tiny["gguf"]),
        "out_dir": str(out),
        "cfg": asdict(cfg),
        "seed": 0,
    }
    return fit.run_training(job)


def test_preference_pairs_share_the_prompt_and_end_each_answer_with_end_of_turn(tiny: dict[str, Path]) -> None:
    examples, dropped = encode.build_preferences(PREFERENCE_PAIRS[:2], tiny["gguf"], 512)
    sft, _ = encode.build_examples([[*PREFERENCE_PAIRS[0]["prompt"], {"role": "assistant", "content": "Blue."}]], tiny["gguf"], 512)
    assert dropped == 0 and len(examples) == 2
    first = examples[0]
    assert sft[0]["input_ids"] == first["prompt_ids"] + first["chosen_ids"], "the same token ids as SFT data"
    assert first["chosen_ids"][-1] == first["rejected_ids"][-1] == sft[0]["input_ids"][-1], "both answers end their turn"
    assert encode.build_preferences(PREFERENCE_PAIRS[:2], tiny["gguf"], 12) == ([], 2), "too long for max_seq_len: dropped, never cut"


@pytest.mark.slow
def test_dpo_loss_decreases_on_a_toy_preference_set(tiny: dict[str, Path], tmp_path: Path) -> None:
    cfg = TrainConfig(objective="dpo", dpo_lr=2e-3, dpo_beta=0.1, batch_size=4, epochs=6, warmup_steps=0, checkpoint_steps=0)
    result = _run(tiny, tmp_path / "dpo", cfg, PREFERENCE_PAIRS)
    losses, dpo = result["losses"], result["dpo"]
    assert result["objective"] == "dpo" and dpo["pairs"] == 8 and dpo["steps"] == result["steps"] >= 20
    assert abs(losses[0] - 0.6931) < 0.01, "a fresh adapter is the reference: the first loss is log 2"
    assert sum(losses[-4:]) / 4 < losses[0] - 0.1, losses
    assert dpo["reward_accuracy_last"] > 0.5 and (tmp_path / "dpo" / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_sft_then_dpo_records_both_phases(tiny: dict[str, Path], tmp_path: Path) -> None:
    convos = [[*p["prompt"], {"role": "assistant", "content": p["chosen"]}] for p in PREFERENCE_PAIRS]
    cfg = TrainConfig(objective="sft+dpo", batch_size=4, epochs=1, warmup_steps=0, checkpoint_steps=0)
    result = _run(tiny, tmp_path / "both", cfg, PREFERENCE_PAIRS, convos)
    assert result["objective"] == "sft+dpo" and result["examples"] == 8 and result["steps"] == 2
    assert result["dpo"]["pairs"] == 8 and result["dpo"]["steps"] == 4 and len(result["dpo"]["losses"]) == 4
    assert not (tmp_path / "both" / "checkpoints").exists() and not (tmp_path / "both" / "checkpoints-dpo").exists()
