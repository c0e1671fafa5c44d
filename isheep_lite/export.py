"""Export a tuned model to GGUF, offline, with gguf-py alone.

No llama.cpp checkout, no compiler, no network (Unsloth's exporter clones and builds llama.cpp).
The base GGUF already holds everything llama.cpp needs besides the weights — tokenizer, chat
template, special tokens — so we copy its metadata, take the architecture numbers from the HF
config, and write the merged weights under llama.cpp's tensor names. For `llama` GGUFs the Q/K
projection rows must be re-permuted exactly as llama.cpp's converter does (transformers un-permutes
them when it reads a GGUF; FACTS.md). Quantised variants are made from the F16/F32 master by
llama.cpp's own quantiser, in-process.
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .recipe import UserError
from .store import replace_dir

# GGUF keys written from the HF config (not copied from the template), as (suffix, config attr, type).
_HPARAMS = (
    ("context_length", "max_position_embeddings", "u32"),
    ("embedding_length", "hidden_size", "u32"),
    ("block_count", "num_hidden_layers", "u32"),
    ("feed_forward_length", "intermediate_size", "u32"),
    ("attention.head_count", "num_attention_heads", "u32"),
    ("attention.head_count_kv", "num_key_value_heads", "u32"),
    ("attention.layer_norm_rms_epsilon", "rms_norm_eps", "f32"),
    ("rope.freq_base", "rope_theta", "f32"),
    ("vocab_size", "vocab_size", "u32"),
)
QUANT_TYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
               "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
               "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K"}


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotary layout → llama.cpp's (the inverse of what transformers does when it reads a GGUF)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _rope_theta(config: Mapping[str, Any]) -> float | None:
    if "rope_theta" in config:
        return config["rope_theta"]
    params = config.get("rope_parameters") or {}
    return params.get("rope_theta")


def write_gguf(
    tensors: Mapping[str, np.ndarray],
    config: Mapping[str, Any],
    template: Path,
    out: Path,
    outtype: str = "f16",
) -> None:
    """HF-named float tensors + HF config → GGUF at `out`, metadata copied from `template`.

    Written to a temporary name and renamed, so a crash never leaves a half-written model.
    """
    import gguf

    reader = gguf.GGUFReader(str(template))
    arch = reader.fields["general.architecture"].contents()
    arch_enum = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}.get(arch)
    if arch_enum is None:
        raise UserError(f"gguf-py does not know architecture '{arch}'")
    n_layers = int(config["num_hidden_layers"])
    name_map = gguf.get_tensor_name_map(arch_enum, n_layers)

    tmp = out.with_name(out.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    hparams: dict[str, tuple[Any, str]] = {}
    for suffix, attr, kind in _HPARAMS:
        value = _rope_theta(config) if attr == "rope_theta" else config.get(attr)
        if value is not None:
            hparams[f"{arch}.{suffix}"] = (value, kind)
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    hparams[f"{arch}.rope.dimension_count"] = (head_dim, "u32")
    skip = {"general.architecture", "general.alignment", "general.file_type", *hparams}
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in skip:
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub_type)
    for key, (value, kind) in hparams.items():
        if kind == "u32":
            writer.add_uint32(key, int(value))
        else:
            writer.add_float32(key, float(value))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if outtype == "f16" else gguf.LlamaFileType.ALL_F32)

    tied = bool(config.get("tie_word_embeddings", False))
    for hf_name, w in tensors.items():
        if hf_name == "lm_head.weight" and tied:
            continue
        name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UserError(f"no GGUF name for tensor '{hf_name}' (architecture {arch})")
        w = np.asarray(w, dtype=np.float32)
        if arch == "llama" and hf_name.endswith("self_attn.q_proj.weight"):
            w = permute_qk(w, config["num_attention_heads"])
        elif arch == "llama" and hf_name.endswith("self_attn.k_proj.weight"):
            w = permute_qk(w, config["num_key_value_heads"])
        if outtype == "f16" and w.ndim >= 2:
            w = w.astype(np.float16)
        writer.add_tensor(name, np.ascontiguousarray(w))
    _write_atomically(writer, tmp, out)


def _write_atomically(writer: Any, tmp: Path, out: Path) -> None:
    """Finish a GGUFWriter that writes to `tmp`, then rename it to `out` (never a half-written file)."""
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def lora_pairs(adapter_dir: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], float]:
    """A PEFT adapter as {HF weight name: (A, B)} float32, and the alpha llama.cpp needs.

    llama.cpp scales by alpha / rank; PEFT by lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA,
    so the alpha written is the one that gives PEFT's scale. What a GGUF adapter cannot hold
    (DoRA magnitudes, fully trained modules such as `modules_to_save`) is refused, not dropped.
    """
    from safetensors.numpy import load_file

    cfg = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    if cfg.get("use_dora"):
        raise UserError(f"{adapter_dir}: a DoRA adapter cannot be written as a llama.cpp LoRA adapter; set export.mode: merged")
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    scale = alpha / r ** 0.5 if cfg.get("use_rslora") else alpha / r
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, w in load_file(str(adapter_dir / "adapter_model.safetensors")).items():
        m = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])\.weight", key)
        if m is None:
            raise UserError(f"{adapter_dir}: tensor '{key}' is not a LoRA A/B matrix; a GGUF adapter holds only those "
                            "(set export.mode: merged to merge instead)")
        pairs.setdefault(m.group(1) + ".weight", {})[m.group(2)] = np.asarray(w, dtype=np.float32)
    out = {name: (ab["A"], ab["B"]) for name, ab in pairs.items()}
    return out, scale * r


def write_lora_gguf(adapter_dir: Path, config: Mapping[str, Any], template: Path, out: Path, outtype: str = "f16") -> None:
    """A PEFT LoRA adapter → a GGUF adapter llama.cpp applies at load time (`Engine(..., adapters=)`).

    The layout is llama.cpp's own converter's: `<tensor>.lora_a` (r × in) and `<tensor>.lora_b`
    (out × r) under the base tensor's GGUF name, general.type=adapter, adapter.lora.alpha. For
    `llama` GGUFs the Q/K output rows are permuted as in the base weights: permuting the rows of
    B·A is permuting the rows of B. Megabytes instead of a merged model's gigabytes, and no
    re-quantisation: the served base stays the user's own quantised GGUF.
    """
    import gguf

    reader = gguf.GGUFReader(str(template))
    arch = reader.fields["general.architecture"].contents()
    arch_enum = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch]
    name_map = gguf.get_tensor_name_map(arch_enum, int(config["num_hidden_layers"]))
    pairs, alpha = lora_pairs(adapter_dir)
    tmp = out.with_name(out.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    dtype = np.float16 if outtype == "f16" else np.float32
    for hf_name, (a, b) in pairs.items():
        name = name_map.get_name(hf_name, try_suffixes=(".weight",))
        if name is None:
            raise UserError(f"no GGUF name for LoRA target '{hf_name}' (architecture {arch})")
        if arch == "llama" and hf_name.endswith("self_attn.q_proj.weight"):
            b = permute_qk(b, config["num_attention_heads"])
        elif arch == "llama" and hf_name.endswith("self_attn.k_proj.weight"):
            b = permute_qk(b, config["num_key_value_heads"])
        writer.add_tensor(name + ".lora_a", np.ascontiguousarray(a.astype(dtype)))
        writer.add_tensor(name + ".lora_b", np.ascontiguousarray(b.astype(dtype)))
    _write_atomically(writer, tmp, out)


def quantize(src: Path, dst: Path, qtype: str) -> None:
    """llama.cpp's quantiser, in-process (no binary to build), atomically."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[qtype])
    tmp = dst.with_name(dst.name + ".tmp")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
    if rc != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"llama.cpp quantisation to {qtype} failed (code {rc})")
    os.replace(tmp, dst)


def merged_state(hf_dir: Path, adapter_dir: Path | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Base HF weights with the LoRA adapter merged in, as float32 numpy, plus the config dict."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    state = {k: v.detach().to(torch.float32).numpy() for k, v in model.state_dict().items()}
    return state, model.config.to_dict()


def save_merged_hf(hf_dir: Path, adapter_dir: Path, out: Path) -> None:
    """Merged HF weights (for `loop.train_from: previous`: the next iteration trains on them)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload().save_pretrained(tmp)
    AutoTokenizer.from_pretrained(str(hf_dir)).save_pretrained(tmp)
    replace_dir(tmp, out)


def export(
    hf_dir: Path, adapter_dir: Path | None, template_gguf: Path, out_dir: Path, types: list[str]
) -> dict[str, str]:
    """Merged model → `model-<type>.gguf` for each type (the first is the F16/F32 master)."""
    state, config = merged_state(hf_dir, adapter_dir)
    master = out_dir / f"model-{types[0]}.gguf"
    write_gguf(state, config, template_gguf, master, types[0])
    paths = {types[0]: str(master)}
    for q in types[1:]:
        dst = out_dir / f"model-{q}.gguf"
        quantize(master, dst, q)
        paths[q] = str(dst)
    (out_dir / "export.json").write_text(json.dumps(paths, indent=2))
    return paths
