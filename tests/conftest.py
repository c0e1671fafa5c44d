"""Shared fixtures.

Fast tests use a tiny randomly initialised Llama built here (SmolLM2's tokenizer and chat template,
2 layers, hidden size 64: ~13 MB), saved both as HF weights and as GGUF, so every stage runs for
real in seconds. The few end-to-end tests (marked slow) use the real embedded SmolLM2.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def isheep_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keep the GGUF→HF conversion cache of a test session out of the user's home (CI may set it)."""
    if "ISHEEP_CACHE" not in os.environ:
        os.environ["ISHEEP_CACHE"] = str(tmp_path_factory.mktemp("isheep-cache"))
    return Path(os.environ["ISHEEP_CACHE"])


@pytest.fixture(scope="session")
def smol_gguf() -> Path:
    from isheep_lite.gguf import header

    return header.resolve_gguf("embedded:smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smol_hf(smol_gguf: Path) -> Path:
    """Real SmolLM2 HF weights, dequantised from the embedded GGUF once per session."""
    from isheep_lite.gguf import weights

    return weights.resolve_hf(None, smol_gguf)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory, smol_gguf: Path) -> dict[str, Path]:
    """{"hf": dir, "gguf": file}: a random 2-layer Llama with SmolLM2's vocabulary and template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tiny_archs import COMMON

    from isheep_lite.gguf import convert

    root = tmp_path_factory.mktemp("tiny")
    tokenizer = AutoTokenizer.from_pretrained(str(smol_gguf.parent), gguf_file=smol_gguf.name)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        **COMMON,  # the architecture tests' tiny dimensions
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    hf = root / "hf"
    model.save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    gguf = root / "tiny-f32.gguf"
    convert.convert(hf, smol_gguf, gguf, "f32")
    return {"hf": hf, "gguf": gguf}


@pytest.fixture(scope="session")
def tiny_engine(tiny: dict[str, Path]):
    from isheep_lite.engines.llamacpp import Engine

    with Engine(tiny["gguf"], n_ctx=1024, n_threads=2) as e:
        yield e


@pytest.fixture(scope="session")
def taught(tmp_path_factory: pytest.TempPathFactory, smol_gguf: Path):
    """taught(kind, family) → (HF dir, GGUF): a tiny model of `kind` taught to answer in the chat
    template `family` (tests/tiny_archs.py), made once per session."""
    from tiny_archs import taught_model

    made: dict[tuple[str, str], tuple[Path, Path]] = {}

    def get(kind: str, family: str) -> tuple[Path, Path]:
        if (kind, family) not in made:
            made[kind, family] = taught_model(kind, family, smol_gguf, tmp_path_factory.mktemp(f"taught-{kind}"))
        return made[kind, family]

    return get
