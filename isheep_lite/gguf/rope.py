"""RoPE parameters recovered from a GGUF's metadata into an HF config (Llama 3 scaling, Phi-3.5 longrope)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from isheep_lite.gguf.header import _field_value, gguf_info, gguf_reader
from isheep_lite.recipe import UserError


def gguf_rope(path: Path) -> dict[str, Any]:
    """The HF `rope_parameters` a GGUF's RoPE keys and factor tensors stand for.

    transformers' GGUF reader drops RoPE scaling (a Llama 3.x GGUF comes back with plain RoPE, a
    Phi-3.5 one with neither its long/short factors nor its original context), so a model trained
    from a GGUF alone would learn under other positions than llama.cpp serves it with. Llama 3's
    parameters are not stored, only the factor per frequency (`rope_freqs`): they are solved for
    (Meta's low/high frequency factors 1 and 4; factor and original context from the tensor) and
    accepted only when they give the stored factors back. What cannot be restored is refused.
    """
    import math

    import gguf
    import numpy as np

    reader = gguf_reader(path)
    arch = str(_field_value(reader, "general.architecture"))
    meta = {k[len(arch) + 1 :]: _field_value(reader, k) for k in reader.fields if k.startswith(f"{arch}.")}
    tensors = {
        t.name: np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float64).reshape(-1)
        for t in reader.tensors
        if t.name.startswith("rope_")
    }
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": float(meta.get("rope.freq_base") or 10000.0)}
    scaling = meta.get("rope.scaling.type")
    if "rope_factors_long.weight" in tensors:
        orig = int(meta.get("rope.scaling.original_context_length") or 0)
        if not orig:
            raise UserError(f"{path}: long/short RoPE factors without rope.scaling.original_context_length; give model.hf")
        return {
            **rope,
            "rope_type": "longrope",
            "original_max_position_embeddings": orig,
            "long_factor": tensors["rope_factors_long.weight"].tolist(),
            "short_factor": tensors["rope_factors_short.weight"].tolist(),
        }
    if "rope_freqs.weight" in tensors:
        stored = tensors["rope_freqs.weight"]
        dim = int(meta.get("rope.dimension_count") or 2 * len(stored))
        wavelen = [2 * math.pi * rope["rope_theta"] ** (2 * i / dim) for i in range(len(stored))]
        factor, low, high = float(stored.max()), 1.0, 4.0
        smooth = [(w, (1 / f - 1 / factor) / (1 - 1 / factor)) for w, f in zip(wavelen, stored) if 1 < f < factor]
        orig_candidates = [round(w * (low + s * (high - low))) for w, s in smooth] or [8192]
        for orig in orig_candidates:
            params = {
                **rope,
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low,
                "high_freq_factor": high,
                "original_max_position_embeddings": int(orig),
            }
            if np.allclose(_llama3_factors(params, wavelen), stored, rtol=1e-4):
                return params
        raise UserError(
            f"{path}: its rope_freqs are not Llama 3's scaling with low/high frequency factors 1 and 4; give the HF weights as model.hf"
        )
    if scaling not in (None, "none"):
        raise UserError(f"{path}: RoPE scaling '{scaling}' cannot be read back from a GGUF; give the HF weights as model.hf")
    return rope


def _llama3_factors(p: dict[str, Any], wavelen: list[float]) -> list[float]:
    """Llama 3's RoPE factor per frequency (as llama.cpp's converter computes rope_freqs)."""
    orig, low, high, factor = p["original_max_position_embeddings"], p["low_freq_factor"], p["high_freq_factor"], p["factor"]
    out = []
    for w in wavelen:
        if w < orig / high:
            out.append(1.0)
        elif w > orig / low:
            out.append(factor)
        else:
            s = (orig / w - low) / (high - low)
            out.append(1 / ((1 - s) / factor + s))
    return out


def restore_config(config: Any, gguf_path: Path) -> None:
    """Put back into an HF config read from a GGUF what transformers' GGUF reader leaves out, as
    llama.cpp serves the same file: RoPE scaling (gguf_rope) and the trained context; for Gemma the
    attention scale (llama.cpp: 1/sqrt(head size), 1/sqrt(hidden/heads) for the 27B models) and
    Gemma 3's sliding/full layer pattern (every 6th layer full unless the GGUF lists it)."""

    info = gguf_info(gguf_path)
    reader = gguf_reader(gguf_path)
    meta = {k[len(info.arch) + 1 :]: _field_value(reader, k) for k in reader.fields if k.startswith(f"{info.arch}.")}
    if info.arch in ("gemma2", "gemma3"):
        big = info.n_layers == {"gemma2": 46, "gemma3": 62}[info.arch]
        heads = int(meta["attention.head_count"])
        config.query_pre_attn_scalar = meta["embedding_length"] // heads if big else meta["attention.key_length"]
    if info.arch == "gemma3":
        pattern = meta.get("attention.sliding_window_pattern")
        swa = [bool(x) for x in pattern] if pattern else [(i + 1) % 6 != 0 for i in range(info.n_layers)]
        config.layer_types = ["sliding_attention" if x else "full_attention" for x in swa]
    rope = gguf_rope(gguf_path)
    if rope["rope_type"] == "default":
        return
    if info.n_ctx_train:
        config.max_position_embeddings = info.n_ctx_train
    if "original_max_position_embeddings" in rope and hasattr(config, "original_max_position_embeddings"):
        config.original_max_position_embeddings = rope["original_max_position_embeddings"]
    config.rope_parameters = {**(getattr(config, "rope_parameters", None) or {}), **rope}
