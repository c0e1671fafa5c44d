"""Which training backend runs on this machine, and in which precision."""

from __future__ import annotations

from typing import Any, Literal

from isheep_lite.recipe import UserError


def resolve_backend(name: str, cuda: bool, has_unsloth: bool, has_triton: bool = False) -> str:
    """`auto` → unsloth wherever it is installed, else hf; `unsloth` must be installed.

    Why auto takes Unsloth on a CPU too: where the gpu extra is installed (Triton, TRL 1.15), TRL's
    fused LM head runs a Triton kernel even on a CPU and fails ("0 active drivers"), while Unsloth's
    CPU trainer gives the same losses as hf on the same data (tests/test_train_unsloth.py), 6 % faster
    (bench/bench_train.py: 2.59 vs 2.74 s/step, SmolLM2-135M, 2-core CPU)."""
    if name == "unsloth" and not has_unsloth:
        raise UserError("train.backend=unsloth needs Unsloth: pip install 'isheep-lite[gpu]'")
    backend = ("unsloth" if has_unsloth else "hf") if name == "auto" else name
    if backend == "hf" and not cuda and has_triton:
        raise UserError(
            "train.backend=hf cannot train on a CPU where Triton is installed (TRL runs a GPU-only kernel); "
            "use train.backend=unsloth or auto"
        )
    return backend


Precision = Literal["bf16", "fp16", "fp32"]


def train_precision(capability: tuple[int, int] | None) -> Precision:
    """The precision to train in on a GPU of this CUDA compute capability (None: no GPU, the CPU).

    bf16 only where it is native, compute capability ≥ 8.0 (Ampere, Ada, Hopper and later); fp16 on
    older GPUs (T4 7.5, V100 7.0); fp32 on the CPU. Not `torch.cuda.is_bf16_supported()`: it answers
    True on a T4 too (bf16 by emulation), where Unsloth loads the model in fp16 and a bf16 trainer
    then fails at its first step. Both backends take every dtype from this one answer
    (`load_dtype_kwargs`, `sft_precision_flags`)."""
    if capability is None:
        return "fp32"
    return "bf16" if tuple(capability) >= (8, 0) else "fp16"


def device_precision() -> Precision:
    """`train_precision` of this machine: GPU 0's compute capability, read only when CUDA is available."""
    import torch

    capability = tuple(torch.cuda.get_device_capability()) if torch.cuda.is_available() else None
    return train_precision(capability)  # type: ignore[arg-type]


def precision_dtype(precision: Precision) -> Any:
    """The torch dtype of a precision."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def load_dtype_kwargs(backend: str, precision: Precision, four_bit: bool) -> dict[str, Any]:
    """The dtype arguments `load_model` passes: {"dtype"} of the backend's from_pretrained (Unsloth's
    FastLanguageModel or transformers' AutoModelForCausalLM), plus {"bnb_4bit_compute_dtype"} of the
    hf backend's BitsAndBytesConfig when the base is 4-bit. Always explicit — on a CPU too, where
    Unsloth's own choice would be bfloat16."""
    dtype = precision_dtype(precision)
    if backend == "hf" and four_bit:
        return {"dtype": dtype, "bnb_4bit_compute_dtype": dtype}
    return {"dtype": dtype}


def sft_precision_flags(precision: Precision) -> dict[str, bool]:
    """SFTConfig's mixed-precision flags: the same precision the model was loaded in."""
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}
