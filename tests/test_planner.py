"""The memory planner against published peak-memory figures, and the micro-batch it picks.

Reference: Unsloth's "Unsloth Requirements" page, table "Fine-tuning VRAM requirements"
(https://unsloth.ai/docs/get-started/fine-tuning-for-beginners/unsloth-requirements): the minimum
VRAM to fine-tune with Unsloth, by model size, for QLoRA (4-bit) and LoRA (16-bit). The page does
not name the models or the run; we read each size as the model Unsloth's notebooks use for it and
the run as the minimum one: batch 1, 512 tokens, LoRA r 16 on all seven projections, Unsloth's
gradient checkpointing. Architectures are from each model's published config.json.
"""
from __future__ import annotations

import pytest

from isheep_lite.planner import GB, Shape, estimate, plan_batches

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
#        name                      layers hidden inter heads kv head_dim vocab  tied    QLoRA GB  LoRA GB
MODELS = {
    "Llama-3.2-3B (3B)":     (Shape(28, 3072, 8192, 24, 8, 128, 128256, True), 3.5, 8),
    "Mistral-7B-v0.3 (7B)":  (Shape(32, 4096, 14336, 32, 8, 128, 32768, False), 5, 19),
    "Llama-3.1-8B (8B)":     (Shape(32, 4096, 14336, 32, 8, 128, 128256, False), 6, 22),
    "Gemma-2-9B (9B)":       (Shape(42, 3584, 14336, 16, 8, 256, 256000, True), 6.5, 24),
    "Phi-4 (14B)":           (Shape(40, 5120, 17920, 40, 10, 128, 100352, False), 8.5, 33),
    "Qwen2.5-32B (32B)":     (Shape(64, 5120, 27648, 40, 8, 128, 152064, False), 26, 76),
    "Llama-3.1-70B (70B)":   (Shape(80, 8192, 28672, 64, 8, 128, 128256, False), 41, 164),
}
# A recorded miss, not hidden: for 14B QLoRA the page lists 8.5 GB, less than Phi-4's weights alone
# take in NF4 with 16-bit embeddings and lm_head (9.1 GB here); our estimate is 11.1 GB (+30 %).
MISSES = {("Phi-4 (14B)", 4)}
CASES = [(name, bits) for name in MODELS for bits in (4, 16)]


def _estimate_gb(name: str, bits: int) -> float:
    shape = MODELS[name][0]
    return estimate(shape, bits=bits, r=16, targets=ALL, batch=1, seq_len=512, backend="unsloth")["total"] / GB


@pytest.mark.parametrize("name,bits", CASES)
def test_estimate_within_25_percent_of_published_peak(name: str, bits: int) -> None:
    published = MODELS[name][1] if bits == 4 else MODELS[name][2]
    ratio = _estimate_gb(name, bits) / published
    if (name, bits) in MISSES:
        assert not 0.75 <= ratio <= 1.25, "a recorded miss now fits: remove it from MISSES"
    else:
        assert 0.75 <= ratio <= 1.25, f"{name} {bits}-bit: estimate {ratio:.2f}× the published {published} GB"


def test_at_least_six_reference_configurations_fit() -> None:
    assert len(CASES) - len(MISSES) >= 6


def test_shape_from_config_counts_parameters() -> None:
    llama8b = {"num_hidden_layers": 32, "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
               "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False}
    s = Shape.from_config(llama8b)
    assert s == MODELS["Llama-3.1-8B (8B)"][0]
    assert abs(s.params() / 8.03e9 - 1) < 0.01  # Meta lists 8.03 B parameters (norms excluded here: 0.3 M)
    assert Shape.from_config({"text_config": llama8b}) == s


def test_plan_picks_the_largest_micro_batch_that_fits_and_keeps_the_effective_batch() -> None:
    s = MODELS["Qwen2.5-32B (32B)"][0]
    small = MODELS["Llama-3.2-3B (3B)"][0]
    roomy = plan_batches(small, 24 * GB, bits=4, r=16, targets=ALL, seq_len=1024, effective_batch=16, backend="unsloth")
    tight = plan_batches(small, 6 * GB, bits=4, r=16, targets=ALL, seq_len=1024, effective_batch=16, backend="unsloth")
    assert roomy["micro_batch"] > tight["micro_batch"] >= 1
    for p in (roomy, tight):
        assert p["micro_batch"] * p["grad_accum"] >= 16 and p["estimate_gb"] <= 0.9 * (24 if p is roomy else 6)
    with pytest.raises(MemoryError, match="GB free"):
        plan_batches(s, 16 * GB, bits=16, r=16, targets=ALL, seq_len=1024, effective_batch=8)
