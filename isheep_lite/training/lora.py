"""Which layers LoRA adapts: read from the model (text tower only), or the recipe's list."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from isheep_lite.config import TrainConfig
from isheep_lite.gguf.archs import TOWERS, in_tower
from isheep_lite.recipe import UserError

# LoRA targets: `train.target_modules: auto` takes every linear layer of the decoder blocks.
_LINEAR_CLASSES = ("Linear", "Linear4bit")  # torch.nn.Linear; bitsandbytes' Linear4bit, matched by name (no bnb import)


_FUSED = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}  # Phi-3, for the planner


def auto_targets(targets: Any) -> bool:
    """Whether a train.target_modules value asks for the automatic choice ("auto", as YAML stores it: [auto])."""
    return targets == "auto" or (isinstance(targets, (list, tuple)) and list(targets) == ["auto"])


def lora_targets(model: Any) -> list[str]:
    """The distinct leaf names of the linear layers inside the decoder blocks of `model`, in model order.

    Linear means a module whose class name ends in "Linear" or "Linear4bit" (torch's, bitsandbytes'
    4-bit); inside the blocks means a path through `.layers.`; anything under a vision or audio tower
    or a multimodal projector is left out, and so are lm_head and the embeddings, as are the inner
    layers of a LoRA-wrapped model. Llama/Qwen2/Mistral/Gemma: q/k/v/o_proj and gate/up/down_proj;
    Phi-3: qkv_proj, o_proj, gate_up_proj, down_proj; Gemma 3 ≥ 4B: those of `language_model` only."""
    names: list[str] = []
    for path, module in model.named_modules():
        if not type(module).__name__.endswith(_LINEAR_CLASSES) or ".layers." not in f".{path}" or in_tower(path):
            continue
        leaf = path.rsplit(".", 1)[-1]
        if "lora_" in path or "base_layer" in path or "lm_head" in leaf or "embed" in leaf:
            continue
        if leaf not in names:
            names.append(leaf)
    return names


def auto_class(config: Any) -> Any:
    """transformers' auto class that builds a model of `config` with its language-model head:
    AutoModelForCausalLM, or, for a vision checkpoint it does not map (Ministral 3's
    Mistral3ForConditionalGeneration), AutoModelForImageTextToText — trained on text alone."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    return AutoModelForCausalLM if type(config) in MODEL_FOR_CAUSAL_LM_MAPPING else AutoModelForImageTextToText


def config_lora_targets(hf_dir: Path) -> list[str]:
    """`lora_targets` of the model in `hf_dir` before it is loaded: built from its config.json on the
    meta device (no weights are read, no memory is taken)."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(hf_dir))
    with torch.device("meta"):
        model = auto_class(config).from_config(config)
    return lora_targets(model)


def frozen_towers(hf_dir: Path) -> list[str]:
    """The non-text towers of the model in `hf_dir` (from config.json: `vision_config`, `audio_config`),
    which training leaves as they are: LoRA adapts the text model only, and every GGUF written is the
    text model (the converter writes it alone; the mmproj file made for the base is the one to pair with it)."""
    import json

    config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    return [f"{part} tower" for part in ("vision", "audio") if config.get(f"{part}_config")]


def resolve_targets(cfg: TrainConfig, hf_dir: Path, model: Any = None) -> list[str]:
    """train.target_modules as names: an explicit list as given; auto read from `model` when given,
    else from hf_dir's config. A model with no linear layer in its decoder blocks is a UserError."""
    if not auto_targets(cfg.target_modules):
        return list(cfg.target_modules)
    names = lora_targets(model) if model is not None else config_lora_targets(hf_dir)
    if not names:
        raise UserError(f"{hf_dir}: no linear layer found in the model's decoder blocks; set train.target_modules")
    return names


def lora_target_kwargs(cfg: TrainConfig, hf_dir: Path, model: Any) -> dict[str, Any]:
    """The target arguments of both backends' LoRA config (peft's LoraConfig, Unsloth's get_peft_model):
    {"target_modules"} from `resolve_targets`, plus {"exclude_modules"} when a vision/audio tower has
    linear layers of the same names — peft matches target names by suffix, so they would be adapted too."""
    targets = resolve_targets(cfg, hf_dir, model)
    kwargs: dict[str, Any] = {"target_modules": targets}
    if any(in_tower(path) and path.rsplit(".", 1)[-1] in targets for path, _ in model.named_modules()):
        kwargs["exclude_modules"] = rf".*(?:{'|'.join(TOWERS)}).*"
    return kwargs


def planner_targets(targets: list[str]) -> list[str]:
    """Target names as the memory planner knows them: fused projections split into their parts
    (qkv_proj → q/k/v_proj, gate_up_proj → gate/up_proj). Split, a fused matrix's LoRA counts one
    extra input side per part (r × hidden each): a slight over-estimate, on the safe side."""
    out: list[str] = []
    for t in targets:
        out += _FUSED.get(t, [t])
    return out
