"""Training precision per GPU generation, for both backends, and the automatic LoRA targets — all on
a CPU: the CUDA queries are faked, the backends' loaders and TRL's config are replaced by recorders,
and the target modules are read from tiny random models built from transformers' config classes."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from isheep_lite import recipe
from isheep_lite.config import TrainConfig
from isheep_lite.recipe import UserError
from isheep_lite.training import fit, hardware, lora

SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# compute capability → the precision both backends must train in; None: no CUDA (the CPU)
DEVICES = {
    "t4": ((7, 5), "fp16"),
    "v100": ((7, 0), "fp16"),
    "a100": ((8, 0), "bf16"),
    "l4-ada": ((8, 9), "bf16"),
    "h100": ((9, 0), "bf16"),
    "cpu": (None, "fp32"),
}


@pytest.mark.parametrize("device", DEVICES)
def test_precision_follows_compute_capability(device: str) -> None:
    capability, expected = DEVICES[device]
    assert hardware.train_precision(capability) == expected


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """torch.cuda answering as the device named by the test's `device` parameter. is_bf16_supported
    says True everywhere — as a T4 does (emulation) — so a precision that trusts it would be caught."""
    import torch

    capability, expected = DEVICES[request.getfixturevalue("device")]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: capability is not None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)

    def get_device_capability(*a: Any, **k: Any) -> tuple[int, int]:
        assert capability is not None, "the capability is read only when CUDA is available"
        return capability

    monkeypatch.setattr(torch.cuda, "get_device_capability", get_device_capability)
    return expected


def _tiny_llama(vocab: int = 256) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            bos_token_id=1,
            eos_token_id=2,
        )
    )


class _Recorder:
    def __init__(self) -> None:
        self.calls: dict[str, dict[str, Any]] = {}

    def record(self, name: str, result: Any = None) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = kwargs
            return result(*args, **kwargs) if callable(result) else result

        return call


@pytest.mark.parametrize("device", DEVICES)
def test_unsloth_backend_loads_and_trains_in_the_devices_precision(
    device: str, fake_gpu: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import torch

    rec = _Recorder()
    fast = types.SimpleNamespace(
        from_pretrained=rec.record("from_pretrained", (_tiny_llama(), object())),
        get_peft_model=rec.record("get_peft_model", lambda model, **kw: model),
    )
    monkeypatch.setitem(sys.modules, "unsloth", types.SimpleNamespace(FastLanguageModel=fast))
    cuda = fake_gpu != "fp32"
    fit.load_model(tmp_path, TrainConfig(), "unsloth", cuda, seed=0)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[fake_gpu]
    assert rec.calls["from_pretrained"]["dtype"] == dtype, "Unsloth's dtype= is explicit: never its own guess"
    assert rec.calls["from_pretrained"]["load_in_4bit"] == cuda
    assert rec.calls["get_peft_model"]["target_modules"] == SEVEN and rec.calls["get_peft_model"]["lora_dropout"] == 0.0
    assert _sft_flags(monkeypatch, tmp_path, "unsloth") == _expected_flags(fake_gpu)


@pytest.mark.parametrize("device", DEVICES)
def test_hf_backend_loads_and_trains_in_the_devices_precision(
    device: str, fake_gpu: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import peft
    import torch
    import transformers

    rec = _Recorder()
    monkeypatch.setattr(
        transformers,
        "AutoModelForCausalLM",
        types.SimpleNamespace(from_pretrained=rec.record("from_pretrained", lambda *a, **k: _tiny_llama())),
    )
    monkeypatch.setattr(transformers, "AutoTokenizer", types.SimpleNamespace(from_pretrained=lambda *a, **k: object()))
    monkeypatch.setattr(transformers, "BitsAndBytesConfig", rec.record("bnb", "q"))
    monkeypatch.setattr(peft, "prepare_model_for_kbit_training", lambda model: model)
    cuda = fake_gpu != "fp32"
    _tiny_llama().config.save_pretrained(tmp_path)  # what picks the auto class (a causal LM here)
    model, _ = fit.load_model(tmp_path, TrainConfig(), "hf", cuda, seed=0)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[fake_gpu]
    assert rec.calls["from_pretrained"]["dtype"] == dtype
    if cuda:  # QLoRA: 4-bit base computing in the same dtype
        assert rec.calls["from_pretrained"]["quantization_config"] == "q"
        assert rec.calls["bnb"]["bnb_4bit_compute_dtype"] == dtype
    else:
        assert "bnb" not in rec.calls and "quantization_config" not in rec.calls["from_pretrained"]
    assert sorted(model.peft_config["default"].target_modules) == sorted(SEVEN)
    assert _sft_flags(monkeypatch, tmp_path, "hf") == _expected_flags(fake_gpu)


def _expected_flags(precision: str) -> dict[str, bool]:
    return {"bf16": precision == "bf16", "fp16": precision == "fp16", "use_cpu": precision == "fp32"}


def _sft_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, backend: str) -> dict[str, bool]:
    """SFTConfig's precision flags as make_trainer sets them, and check load_model got the same precision."""
    import trl

    loaded: dict[str, Any] = {}

    def fake_load(hf_dir: Path, cfg: TrainConfig, backend_: str, cuda: bool, seed: int, precision: Any = None) -> Any:
        loaded.update(backend=backend_, precision=precision)
        return object(), types.SimpleNamespace(pad_token="<pad>")

    class FakeTrainer:
        def __init__(self, **kw: Any) -> None:
            self.kw = kw

    monkeypatch.setattr(fit, "load_model", fake_load)
    monkeypatch.setattr(trl, "SFTConfig", lambda **kw: kw)
    monkeypatch.setattr(trl, "SFTTrainer", FakeTrainer)
    trainer = fit.make_trainer(tmp_path, [{"input_ids": [1, 2], "labels": [1, 2]}], TrainConfig(), tmp_path, 0, backend)
    args = trainer.kw["args"]
    flags = {k: args[k] for k in ("bf16", "fp16", "use_cpu")}
    assert loaded == {"backend": backend, "precision": "bf16" if flags["bf16"] else "fp16" if flags["fp16"] else "fp32"}
    return flags


def test_precision_kwargs_of_each_backend() -> None:
    import torch

    assert hardware.load_dtype_kwargs("hf", "fp16", four_bit=True) == {"dtype": torch.float16, "bnb_4bit_compute_dtype": torch.float16}
    assert hardware.load_dtype_kwargs("hf", "fp32", four_bit=False) == {"dtype": torch.float32}
    assert hardware.load_dtype_kwargs("unsloth", "bf16", four_bit=True) == {"dtype": torch.bfloat16}
    assert hardware.sft_precision_flags("fp16") == {"bf16": False, "fp16": True}
    assert hardware.sft_precision_flags("fp32") == {"bf16": False, "fp16": False}


# ---- LoRA target modules ------------------------------------------------------------------------
TEXT = dict(
    vocab_size=256,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=16,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


def _config(kind: str) -> Any:
    import transformers as t

    if kind == "gemma3-vlm":  # Gemma 3 ≥ 4B: language_model.* beside a SigLIP vision tower
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14)
        return t.Gemma3Config(
            text_config={k: v for k, v in TEXT.items() if not k.endswith("token_id")}, vision_config=vision, mm_tokens_per_image=4
        )
    cls = {
        "llama": t.LlamaConfig,
        "qwen2": t.Qwen2Config,
        "mistral": t.MistralConfig,
        "gemma2": t.Gemma2Config,
        "gemma3": t.Gemma3TextConfig,
        "phi3": t.Phi3Config,
    }[kind]
    return cls(**TEXT)


EXPECTED = {
    "llama": SEVEN,
    "qwen2": SEVEN,
    "mistral": SEVEN,
    "gemma2": SEVEN,
    "gemma3": SEVEN,
    "gemma3-vlm": SEVEN,
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
}


def _model(kind: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(_config(kind))


@pytest.mark.parametrize("kind", EXPECTED)
def test_auto_targets_are_the_decoder_blocks_own_linears(kind: str, tmp_path: Path) -> None:
    model = _model(kind)
    assert type(model).__name__ == ("Gemma3ForConditionalGeneration" if kind == "gemma3-vlm" else type(model).__name__)
    names = lora.lora_targets(model)
    assert sorted(names) == sorted(EXPECTED[kind]) and len(set(names)) == len(names)
    _config(kind).save_pretrained(tmp_path)  # before loading: the same names from config.json, on the meta device
    assert sorted(lora.config_lora_targets(tmp_path)) == sorted(EXPECTED[kind])
    assert sorted(lora.resolve_targets(TrainConfig(), tmp_path)) == sorted(EXPECTED[kind])
    assert lora.resolve_targets(TrainConfig(target_modules=["q_proj", "v_proj"]), tmp_path) == ["q_proj", "v_proj"]


@pytest.mark.parametrize("kind", ["phi3", "gemma3-vlm"])
def test_peft_adapts_exactly_the_auto_targets(kind: str, tmp_path: Path) -> None:
    """Phi-3's fused layers get adapters; a vision tower's q/k/v_proj do not (peft matches names by suffix)."""
    from peft import LoraConfig, get_peft_model

    model = _model(kind)
    kwargs = lora.lora_target_kwargs(TrainConfig(), tmp_path, model)
    adapted = get_peft_model(model, LoraConfig(r=4, task_type="CAUSAL_LM", **kwargs))
    wrapped = {p.rsplit(".", 1)[0] for p, _ in adapted.named_modules() if p.endswith(".lora_A")}
    assert wrapped and not any(t in p for p in wrapped for t in ("vision", "lm_head", "embed"))
    assert {p.rsplit(".", 1)[-1] for p in wrapped} == set(EXPECTED[kind])
    assert len(wrapped) == 2 * len(EXPECTED[kind]), "every target in both decoder layers"
    assert ("exclude_modules" in kwargs) == (kind == "gemma3-vlm")


def test_planner_counts_fused_layers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The memory planner knows q/k/v/gate/up by name: Phi-3's fused layers are counted as their parts,
    never as if those adapters were free."""
    from isheep_lite import planner

    assert lora.planner_targets(["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]) == SEVEN
    _config("phi3").save_pretrained(tmp_path)
    examples = [{"input_ids": list(range(300)), "labels": list(range(300))}]
    real = planner.plan_batches
    asked: list[list[str]] = []

    def plan_batches(*args: Any, **kw: Any) -> dict[str, Any]:
        asked.append(kw["targets"])
        return real(*args, **kw)

    monkeypatch.setattr(planner, "plan_batches", plan_batches)
    auto = fit.choose_batches(TrainConfig(batch_size=8), tmp_path, examples, "hf", 0.9e9)
    assert sorted(asked[-1]) == sorted(SEVEN)
    assert fit.choose_batches(TrainConfig(batch_size=8, target_modules=SEVEN), tmp_path, examples, "hf", 0.9e9) == auto


def test_no_decoder_linears_is_one_line(tmp_path: Path) -> None:
    import torch

    with pytest.raises(UserError, match="set train.target_modules"):
        lora.resolve_targets(TrainConfig(), tmp_path, torch.nn.Sequential(torch.nn.Linear(2, 2)))


# ---- the recipe ---------------------------------------------------------------------------------
def test_recipe_defaults_are_auto_targets_and_no_dropout() -> None:
    r = recipe.load()
    assert r.train.lora_dropout == 0.0, "Unsloth's fast path needs dropout 0"
    assert lora.auto_targets(r.train.target_modules)
    assert recipe.load(None, ["train.target_modules=auto"]).train.target_modules == r.train.target_modules
    assert recipe.load(None, ["train.target_modules=[q_proj, v_proj]"]).train.target_modules == ["q_proj", "v_proj"]
    assert json.loads(json.dumps(r.to_dict()))["train"]["target_modules"] == ["auto"]


@pytest.mark.parametrize("value", ["[]", "''", "[auto, q_proj]", "5", "[q_proj, 3]"])
def test_bad_target_modules_are_one_line(value: str) -> None:
    with pytest.raises(UserError, match="train.target_modules") as e:
        recipe.load(None, [f"train.target_modules={value}"])
    assert "\n" not in str(e.value)


def test_a_vision_models_tower_is_named_as_left_untouched(tmp_path: Path) -> None:
    """Gemma 3 from 4B: the run says its vision tower stays as it is (only the text model is trained)."""
    _config("gemma3-vlm").save_pretrained(tmp_path / "vlm")
    _config("gemma3").save_pretrained(tmp_path / "text")
    assert lora.frozen_towers(tmp_path / "vlm") == ["vision tower"]
    assert lora.frozen_towers(tmp_path / "text") == []
