"""Export a tuned model to GGUF with llama.cpp's own converter, offline, streaming.

Every architecture stores its weights for llama.cpp a little differently (Q/K row order for
llama, RMSNorm weights stored as w + 1 for Gemma, RoPE factor tensors for Llama 3 and Phi-3.5,
soft-capping and sliding-window keys): a hand-written name map got several of them silently wrong.
So a merged export is made in two steps:

1. `merge_into_dir`: the LoRA adapter is merged into the base weights one safetensors shard at a
   time, in the weights' stored dtype, into an HF directory — host RAM stays at about one shard
   plus one float32 tensor, never the whole model in float32.
2. `convert.convert`: llama.cpp's converter writes that directory as a GGUF (convert.py).

LoRA adapters for llama.cpp (`write_lora_gguf`) are written here directly: a GGUF adapter is only
A/B pairs under the base tensor names. Quantised variants come from the F16/F32 master through
llama.cpp's quantiser, in-process.
"""

from __future__ import annotations

import ctypes
import json
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from isheep_lite.gguf import archs, header
from isheep_lite.gguf.convert import convert
from isheep_lite.recipe import UserError
from isheep_lite.rundir.files import atomic_path

QUANT_TYPES = {
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
}
MASTER_TYPES = ("f16", "f32", "bf16")  # what the converter writes; every other type is quantised from the master


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotary layout → llama.cpp's (the inverse of what transformers does when it reads a GGUF)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _finish(writer: Any) -> None:
    """Write out a GGUFWriter's header, metadata and tensors, and close it."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


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
    scale = alpha / r**0.5 if cfg.get("use_rslora") else alpha / r
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, w in load_file(str(adapter_dir / "adapter_model.safetensors")).items():
        m = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])\.weight", key)
        if m is None:
            raise UserError(
                f"{adapter_dir}: tensor '{key}' is not a LoRA A/B matrix; a GGUF adapter holds only those "
                "(set export.mode: merged to merge instead)"
            )
        pairs.setdefault(m.group(1) + ".weight", {})[m.group(2)] = np.asarray(w, dtype=np.float32)
    out = {name: (ab["A"], ab["B"]) for name, ab in pairs.items()}
    return out, scale * r


def write_lora_gguf(adapter_dir: Path, config: Mapping[str, Any], template: Path, out: Path, outtype: str = "f16") -> None:
    """A PEFT LoRA adapter → a GGUF adapter llama.cpp applies at load time (`Engine(..., adapters=)`).

    The layout is llama.cpp's own converter's: `<tensor>.lora_a` (r × in) and `<tensor>.lora_b`
    (out × r) under the base tensor's GGUF name, general.type=adapter, adapter.lora.alpha. For
    architectures whose converter permutes Q/K (archs.Arch.permute_qk) the Q/K output rows are permuted as in the base weights: permuting the rows of
    B·A is permuting the rows of B. Megabytes instead of a merged model's gigabytes, and no
    re-quantisation: the served base stays the user's own quantised GGUF.
    """
    import gguf

    reader = header.gguf_reader(template)
    arch = str(reader.fields["general.architecture"].contents())
    row = archs.for_gguf(arch, str(template))
    if not row.adapter_gguf:
        raise UserError(f"{template.name}: a {arch} model's LoRA adapter is not exported as a GGUF adapter; set export.mode=merged")
    permute = row.permute_qk
    config = config.get("text_config") or config  # a vision model's text tower (Gemma 3 from 4B)
    arch_enum = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch]
    name_map = gguf.get_tensor_name_map(arch_enum, int(config["num_hidden_layers"]))
    pairs, alpha = lora_pairs(adapter_dir)
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        dtype = np.float16 if outtype == "f16" else np.float32
        for hf_name, (a, b) in pairs.items():
            name = name_map.get_name(hf_name, try_suffixes=(".weight",)) or name_map.get_name(
                "model." + _text_key(hf_name), try_suffixes=(".weight",)
            )
            if name is None:
                raise UserError(f"no GGUF name for LoRA target '{hf_name}' (architecture {arch})")
            if permute and hf_name.endswith("self_attn.q_proj.weight"):
                b = permute_qk(b, config["num_attention_heads"])
            elif permute and hf_name.endswith("self_attn.k_proj.weight"):
                b = permute_qk(b, config["num_key_value_heads"])
            writer.add_tensor(name + ".lora_a", np.ascontiguousarray(a.astype(dtype)))
            writer.add_tensor(name + ".lora_b", np.ascontiguousarray(b.astype(dtype)))
        _finish(writer)


# ---- merge, shard by shard ----------------------------------------------------------------------
def _weight_files(hf_dir: Path) -> list[Path]:
    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise UserError(
            f"{hf_dir}: no *.safetensors weights (a LoRA adapter is merged into safetensors shards; "
            "re-save the model with save_pretrained(safe_serialization=True))"
        )
    return files


MERGE_SHARD_BYTES = 1 << 30  # merged weights are written in shards of at most this much


def _text_key(name: str) -> str:
    """A weight's name without its leading `model.` / `language_model.` parts: a vision model's text
    tower is stored as `language_model.model.layers.…` (Gemma 3 from 4B) while PEFT names the module
    `model.language_model.layers.…`; both are `layers.…` here."""
    parts = name.split(".")
    while parts and parts[0] in ("model", "language_model"):
        parts.pop(0)
    return ".".join(parts)


def merge_into_dir(hf_dir: Path, adapter_dir: Path | None, out: Path) -> None:
    """`hf_dir` with the adapter merged in (W + scale·B·A), written to `out` one tensor at a time.

    Each tensor keeps its stored dtype (a bf16 checkpoint stays bf16, as Unsloth's merged save
    does); the product is formed in float32, one tensor at a time. The output is re-sharded into
    files of at most MERGE_SHARD_BYTES with their own index, so resident memory stays near one such
    shard whatever the input's shard size (a 5 GB input shard is read through a memory map, not
    held). Every other file of the directory (config, tokenizer, generation config) is copied as
    it is. Atomic: written under a temporary name and renamed.
    """
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    pairs, alpha = lora_pairs(adapter_dir) if adapter_dir is not None else ({}, 0.0)
    scale = {name: alpha / a.shape[0] for name, (a, _) in pairs.items()}
    by_key = {_text_key(name): name for name in pairs}  # a stored name → the adapter's, however either is prefixed
    with atomic_path(out, shared=True, directory=True) as tmp:
        for f in hf_dir.iterdir():
            if f.is_file() and not f.name.endswith((".safetensors", ".bin", ".pt", ".pth", ".index.json")):
                shutil.copy2(f, tmp / f.name)
        merged: set[str] = set()
        weight_map: dict[str, str] = {}
        pending: dict[str, Any] = {}
        pending_bytes, total = 0, 0

        def flush() -> None:
            nonlocal pending, pending_bytes
            if pending:
                name = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
                save_file(pending, str(tmp / name), metadata={"format": "pt"})
                weight_map.update(dict.fromkeys(pending, name))
                pending, pending_bytes = {}, 0

        for shard in _weight_files(hf_dir):
            with safe_open(str(shard), framework="pt") as src:
                for name in src.keys():
                    w = src.get_tensor(name)
                    target = name if name in pairs else by_key.get(_text_key(name))
                    if target is not None:
                        a, b = pairs[target]
                        delta = torch.from_numpy(b) @ torch.from_numpy(a)
                        w = (w.to(torch.float32) + scale[target] * delta).to(w.dtype)
                        merged.add(target)
                    size = w.numel() * w.element_size()
                    if pending and pending_bytes + size > MERGE_SHARD_BYTES:
                        flush()
                    pending[name], pending_bytes, total = w.contiguous(), pending_bytes + size, total + size
        flush()
        if missing := sorted(set(pairs) - merged):
            raise UserError(
                f"{adapter_dir}: LoRA targets {missing[:3]} have no weight in {hf_dir}; the adapter was trained on another model"
            )
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=1), encoding="utf-8")


def save_merged_hf(hf_dir: Path, adapter_dir: Path, out: Path) -> None:
    """Merged HF weights (for `loop.train_from: previous`: the next iteration trains on them)."""
    merge_into_dir(hf_dir, adapter_dir, out)


def quantize(src: Path, dst: Path, qtype: str) -> None:
    """llama.cpp's quantiser, in-process (no binary to build), atomically."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[qtype])
    with atomic_path(dst) as tmp:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            raise RuntimeError(f"llama.cpp quantisation to {qtype} failed (code {rc})")


def _remove_leftovers(out_dir: Path) -> None:
    """What an export killed part-way left in `out_dir` (temporaries named after a pid that is gone).

    The run's lock makes this process the only writer of `out_dir`, so every temporary there is stale.
    """
    for p in [*out_dir.glob("model-*.gguf.tmp*"), *out_dir.glob("merged-for-export*")]:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def export(hf_dir: Path, adapter_dir: Path | None, template_gguf: Path, out_dir: Path, types: list[str]) -> dict[str, str]:
    """Merged model → `model-<type>.gguf` for each type (the first is the F16/F32 master).

    The merged HF directory is a temporary next to the output (the base directory itself when
    there is no adapter), removed once the master is written.
    """
    if types[0] not in MASTER_TYPES:
        raise UserError(f"export.types must start with one of {', '.join(MASTER_TYPES)} (the master the others are quantised from)")
    master = out_dir / f"model-{types[0]}.gguf"
    _remove_leftovers(out_dir)
    if adapter_dir is None:
        convert(hf_dir, template_gguf, master, types[0])
    else:
        merged = out_dir / "merged-for-export"
        try:
            merge_into_dir(hf_dir, adapter_dir, merged)
            convert(merged, template_gguf, master, types[0])
        finally:
            shutil.rmtree(merged, ignore_errors=True)
    paths = {types[0]: str(master)}
    for q in types[1:]:
        dst = out_dir / f"model-{q}.gguf"
        quantize(master, dst, q)
        paths[q] = str(dst)
    (out_dir / "export.json").write_text(json.dumps(paths, indent=2))
    return paths
