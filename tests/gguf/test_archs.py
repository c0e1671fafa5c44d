"""Every architecture in the matrix exports faithfully: llama.cpp reads what transformers computes.

Per architecture: a tiny random HF model (SmolLM2's real tokenizer) is made the user's model —
its base GGUF written by the toolkit's own export — then a LoRA adapter is trained on it for a few
steps, the merged model is exported through `export.export`, and llama.cpp's next-token logits of
the export are compared with transformers' merged model over 600 positions: past
`original_max_position_embeddings` where the model has RoPE scaling, past the sliding window
where it has one. Each of the bugs a hand-written exporter makes (RoPE factors dropped, Gemma's
norm stored without its +1, soft-capping or sliding window lost) drops top-1 agreement far below
the 99 % asked here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from isheep_lite.config import TrainConfig
from isheep_lite.gguf import archs, convert, export, header, weights
from isheep_lite.recipe import UserError
from isheep_lite.training import fit
from tiny_archs import BUILDERS, save_user_model

N_POSITIONS = 600


@pytest.fixture(scope="module")
def tokenizer(smol_gguf: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smol_gguf.parent), gguf_file=smol_gguf.name)


def _user_model(kind: str, tokenizer: Any, smol_gguf: Path, root: Path) -> tuple[Path, Path]:
    """(HF dir, its GGUF): a tiny random model of `kind` as a user would bring it."""
    import torch

    torch.manual_seed(0)
    model = BUILDERS[kind](len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    with torch.no_grad():  # random norms: a norm stored without Gemma's +1 cannot pass by luck
        for name, p in model.named_parameters():  # and a projector that is not zero: images count
            if name.endswith("norm.weight") or "multi_modal_projector" in name:
                p.copy_(torch.randn_like(p) * 0.5)
    return save_user_model(model, tokenizer, smol_gguf, root, kind)


def _train_here(convos: list, hf: Path, gguf: Path, out: Path, cfg: TrainConfig) -> dict[str, Any]:
    """train.train's child work (fit.run_training: the same examples, trainer and adapter), run in
    this process: each architecture is spared a fresh interpreter importing torch, transformers and
    trl. The child process itself is tested by the training and resume tests."""
    from dataclasses import asdict

    out.mkdir(parents=True, exist_ok=True)
    return fit.run_training(
        {"conversations": convos, "hf_dir": str(hf), "gguf": str(gguf), "out_dir": str(out), "cfg": asdict(cfg), "seed": 0}
    )


def _llama_logits(gguf: Path, ids: list[int], lora: Path | None = None) -> np.ndarray:
    from llama_cpp import Llama

    # an F32 KV cache: what is compared is the export, not llama.cpp's F16 cache, whose rounding a
    # trained sliding-window model (Gemma 3's vision checkpoint here) turns into logit differences of 0.7
    kw: dict[str, Any] = {"lora_path": str(lora)} if lora else {}
    f32 = 0  # GGML_TYPE_F32
    llm = Llama(
        model_path=str(gguf),
        n_ctx=1024,
        n_batch=1024,
        n_ubatch=1024,
        logits_all=True,
        n_threads=2,
        verbose=False,
        type_k=f32,
        type_v=f32,
        **kw,
    )
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


def _hf_logits(hf: Path, adapter: Path, ids: list[int]) -> np.ndarray:
    import torch
    from peft import PeftModel
    from transformers import AutoConfig

    from isheep_lite.training.lora import auto_class

    model = auto_class(AutoConfig.from_pretrained(str(hf))).from_pretrained(str(hf), dtype=torch.float32, attn_implementation="eager")
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def _agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    return float((a.argmax(-1) == b.argmax(-1)).mean()), float(np.abs(a - b).max())


def _check_gguf_only_input(kind: str, tokenizer: Any, gguf: Path, tmp_path: Path) -> None:
    """A user who gives only a GGUF: where the row says transformers reads it back, the HF weights
    the toolkit trains on (dequantised, RoPE scaling restored from the GGUF) compute what llama.cpp
    computes from that GGUF, past the original context where the model scales RoPE; elsewhere the
    GGUF alone is refused before any work, asking for the HF weights."""
    import torch
    from transformers import AutoModelForCausalLM

    info = header.gguf_info(gguf)
    if not archs.for_gguf(info.arch, str(gguf)).from_gguf or 0 < info.rope_dims < info.head_dim:  # Phi-4-mini's partial RoPE
        with pytest.raises(UserError, match="give the model's HF weights as model.hf"):
            weights.check_dequantisable(gguf)
        return
    hf = tmp_path / "from-gguf"
    weights.gguf_to_hf(gguf, hf)
    ids = np.random.default_rng(2).integers(100, len(tokenizer), N_POSITIONS).tolist()
    model = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    top1, delta = _agreement(_llama_logits(gguf, ids), expected)
    print(f"{kind}: GGUF-only input top-1 agreement {top1:.4f}, max |Δlogit| {delta:.4g}")
    assert top1 >= 0.99, f"{kind}: HF weights made from the GGUF agree with llama.cpp on {top1:.1%} of positions"


def _mmproj_from_base(hf: Path, out: Path) -> Path:
    """The mmproj GGUF a user's Gemma 3 GGUF came with: llama.cpp's converter (--mmproj) on the base
    checkpoint in the Hub's layout (`vision_tower.vision_model.*`; transformers 5 saves it without
    `vision_model`), with a preprocessor config of the tiny tower's image size."""
    import json
    import shutil

    import conversion
    import gguf
    from safetensors.torch import load_file, save_file

    hub = out / "hub-layout"
    hub.mkdir()
    for f in hf.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, hub / f.name)
    state = {k.replace("vision_tower.", "vision_tower.vision_model.", 1): v for k, v in load_file(str(hf / "model.safetensors")).items()}
    save_file(state, str(hub / "model.safetensors"), metadata={"format": "pt"})
    tokens = json.loads((hf / "config.json").read_text())["mm_tokens_per_image"]
    pre = {"image_seq_length": tokens, "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "image_processor_type": "Gemma3ImageProcessor"}
    (hub / "preprocessor_config.json").write_text(json.dumps(pre))
    mmproj = out / "mmproj.gguf"
    cls = conversion.get_model_class("Gemma3ForConditionalGeneration", mmproj=True)
    cls(hub, gguf.LlamaFileType.ALL_F32, mmproj, hparams=conversion.ModelBase.load_hparams(hub, False)).write()
    return mmproj


def _mtmd_logits(gguf_path: Path, lora: Path | None, mmproj: Path, image: np.ndarray, text: bytes) -> tuple[np.ndarray, list[list[int]]]:
    """llama.cpp's multimodal path (mtmd): `text` with the image at its marker, on the text GGUF (and
    its LoRA adapter) paired with `mmproj`; the last position's logits and the token ids of the text
    around the image."""
    import ctypes

    import llama_cpp
    from llama_cpp import mtmd_cpp as mtmd

    kw: dict[str, Any] = {"lora_path": str(lora)} if lora else {}
    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=256, n_batch=256, n_threads=2, verbose=False, type_k=0, type_v=0, **kw)
    params = mtmd.mtmd_context_params_default()
    params.use_gpu, params.n_threads, params.print_timings = False, 2, False
    ctx = mtmd.mtmd_init_from_file(str(mmproj).encode(), llm._model.model, params)
    assert ctx, "llama.cpp refuses the mmproj beside this GGUF"
    pixels = (ctypes.c_uint8 * image.size).from_buffer_copy(image.tobytes())
    bitmap = mtmd.mtmd_bitmap_init(image.shape[1], image.shape[0], pixels)
    chunks = mtmd.mtmd_input_chunks_init()
    try:
        prompt = text.replace(b"<image>", mtmd.mtmd_default_marker())
        inp = mtmd.mtmd_input_text(text=prompt, text_len=len(prompt), add_special=True, parse_special=True)
        assert mtmd.mtmd_tokenize(ctx, chunks, ctypes.byref(inp), (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap), 1) == 0
        texts = []
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk, n = mtmd.mtmd_input_chunks_get(chunks, i), ctypes.c_size_t()
            if mtmd.mtmd_input_chunk_get_type(chunk) == 0:  # MTMD_INPUT_CHUNK_TYPE_TEXT
                ids = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                texts.append([ids[j] for j in range(n.value)])
        n_past = llama_cpp.llama_pos(0)
        assert mtmd.mtmd_helper_eval_chunks(ctx, llm._ctx.ctx, chunks, 0, 0, 256, True, ctypes.byref(n_past)) == 0
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),)).copy()
        return logits, texts
    finally:
        mtmd.mtmd_input_chunks_free(chunks)
        mtmd.mtmd_bitmap_free(bitmap)
        mtmd.mtmd_free(ctx)
        llm.close()


def _check_mmproj_pairing(hf: Path, adapter: Path, served: dict[str, tuple[Path, Path | None]], tmp_path: Path) -> None:
    """A Gemma 3 GGUF that came with an mmproj file keeps working with it: each served form of the
    trained model (merged export; base GGUF + GGUF adapter), paired with the base's mmproj in
    llama.cpp, computes what transformers computes from the trained vision checkpoint for a prompt
    with an image — and the image changes the answer."""
    import torch
    from peft import PeftModel
    from transformers import Gemma3ForConditionalGeneration

    mmproj = _mmproj_from_base(hf, tmp_path)
    image = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    model = Gemma3ForConditionalGeneration.from_pretrained(str(hf), dtype=torch.float32, attn_implementation="eager")
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().eval()
    image_token = model.config.image_token_id
    pixels = torch.tensor((image / 255.0 - 0.5) / 0.5, dtype=torch.float32).permute(2, 0, 1)[None]
    for form, (gguf_path, lora) in served.items():
        logits, (before, after) = _mtmd_logits(gguf_path, lora, mmproj, image, b"Look at this: <image> What colour is it?")
        ids = torch.tensor([before + [image_token] * model.config.mm_tokens_per_image + after])
        with torch.no_grad():
            expected, other = (
                model(input_ids=ids, pixel_values=p, token_type_ids=(ids == image_token).long()).logits[0, -1].numpy()
                for p in (pixels, torch.zeros_like(pixels))
            )
        delta = float(np.abs(logits - expected).max())
        print(f"gemma3_vision: {form} + the base's mmproj, max |Δlogit| {delta:.3g} after an image")
        assert delta < 1e-2 and logits.argmax() == expected.argmax(), form
        assert np.abs(other - expected).max() > 10 * delta, "the image must change the logits"


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(BUILDERS))
def test_trained_model_exports_faithfully(kind: str, tokenizer: Any, smol_gguf: Path, tmp_path: Path) -> None:
    hf, base_gguf = _user_model(kind, tokenizer, smol_gguf, tmp_path)
    info = header.gguf_info(base_gguf)
    assert info.n_ctx_train == 1024, "context length must survive the export"
    assert archs.for_hf(hf) == archs.for_gguf(info.arch, str(base_gguf)), "the HF config and its GGUF name one row"
    _check_gguf_only_input(kind, tokenizer, base_gguf, tmp_path)
    convo = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue, like the sea."}]
    cfg = TrainConfig(lora_r=8, lora_alpha=16, lora_dropout=0.0, lr=5e-2, epochs=3, batch_size=2, warmup_steps=0)
    _train_here([convo] * 4, hf, base_gguf, tmp_path / "run", cfg)
    adapter = tmp_path / "run" / "adapter"
    from safetensors.numpy import load_file

    assert any(np.abs(w).max() > 0 for k, w in load_file(str(adapter / "adapter_model.safetensors")).items() if "lora_B" in k)

    out = tmp_path / "export"
    out.mkdir()
    merged = Path(export.export(hf, adapter, base_gguf, out, ["f32"])["f32"])
    ids = np.random.default_rng(1).integers(100, len(tokenizer), N_POSITIONS).tolist()
    expected = _hf_logits(hf, adapter, ids)
    top1, delta = _agreement(_llama_logits(merged, ids), expected)
    print(f"{kind}: merged export top-1 agreement {top1:.4f} over {N_POSITIONS} positions, max |Δlogit| {delta:.4g}")
    assert top1 >= 0.99, f"{kind}: merged export agrees with transformers on {top1:.1%} of positions"

    lora = tmp_path / "adapter-f32.gguf"
    import json

    config = json.loads((hf / "config.json").read_text())
    if not archs.for_gguf(info.arch, str(base_gguf)).adapter_gguf:  # merged only: the adapter is refused, not written wrong
        with pytest.raises(UserError, match="set export.mode=merged"):
            export.write_lora_gguf(adapter, config, base_gguf, lora, "f32")
        assert not lora.exists()
        return
    export.write_lora_gguf(adapter, config, base_gguf, lora, "f32")
    top1, delta = _agreement(_llama_logits(base_gguf, ids, lora), expected)
    print(f"{kind}: GGUF LoRA adapter top-1 agreement {top1:.4f}, max |Δlogit| {delta:.4g}")
    assert top1 >= 0.99, f"{kind}: base + GGUF adapter agrees with transformers on {top1:.1%} of positions"
    if kind == "gemma3_vision":
        _check_mmproj_pairing(hf, adapter, {"merged export": (merged, None), "base + GGUF adapter": (base_gguf, lora)}, tmp_path)


@pytest.mark.slow
def test_metadata_of_the_users_gguf_survives(smol_gguf: Path, smol_hf: Path, tmp_path: Path) -> None:
    """Tokenizer, chat template, stop tokens and context length of the embedded model survive its export."""
    import gguf

    out = tmp_path / "m.gguf"
    convert.convert(smol_hf, smol_gguf, out, "f16")
    src, dst = gguf.GGUFReader(str(smol_gguf)), gguf.GGUFReader(str(out))
    for key in [k for k in src.fields if k.startswith(("tokenizer.", "general.name", "general.license"))]:
        assert key in dst.fields, key
        assert dst.fields[key].contents() == src.fields[key].contents(), key
    assert dst.fields["llama.context_length"].contents() == src.fields["llama.context_length"].contents() == 8192
    assert not [k for k in dst.fields if k.startswith("split.")]


def test_unsupported_architecture_is_refused_naming_the_supported_ones(tmp_path: Path) -> None:
    import json

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["FalconForCausalLM"], "model_type": "falcon"}))
    with pytest.raises(UserError) as e:
        archs.for_hf(tmp_path)
    assert "FalconForCausalLM is not supported" in str(e.value) and "gemma3" in str(e.value)
    with pytest.raises(UserError, match="architecture 'gpt2' is not supported"):
        archs.for_gguf("gpt2", "model.gguf")


def test_a_mixture_of_experts_is_refused_by_config_and_by_gguf_header(tmp_path: Path) -> None:
    """Gemma 4 26B-A4B shares its class with the dense Gemma 4 models: its experts are what refuse it."""
    import json

    from isheep_lite.gguf import header

    dense = {"architectures": ["Gemma4ForConditionalGeneration"], "text_config": {"enable_moe_block": False, "num_experts": None}}
    moe = {**dense, "text_config": {"enable_moe_block": True, "num_experts": 128, "top_k_experts": 8}}
    (tmp_path / "config.json").write_text(json.dumps(dense))
    assert archs.for_hf(tmp_path).gguf_arch == "gemma4"
    (tmp_path / "config.json").write_text(json.dumps(moe))
    with pytest.raises(UserError, match=r"mixture-of-experts model \(128 experts\) is not supported"):
        archs.for_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Qwen3ForCausalLM"], "num_experts": 0}))
    assert archs.for_hf(tmp_path).gguf_arch == "qwen3"
    with pytest.raises(UserError, match="mixture-of-experts"):
        header.check_arch(header_gguf(tmp_path / "moe.gguf", "gemma4", PLAIN_TEMPLATE, experts=128))


PLAIN_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def header_gguf(path: Path, arch: str, chat_template: str | None = None, experts: int = 0) -> Path:
    """A GGUF that is only a header (and one small tensor) of `arch`: what the up-front checks read."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_context_length(64)
    if experts:
        w.add_expert_count(experts)
    if chat_template:
        w.add_chat_template(chat_template)
    w.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_what_a_row_cannot_do_is_refused_up_front(tmp_path: Path) -> None:
    """A Qwen3.5 model: its adapter is exported merged only, and transformers cannot load it back
    from a GGUF (the transformers backend loads every model from its GGUF)."""
    import subprocess
    import sys

    header_gguf(tmp_path / "qwen35.gguf", "qwen35", PLAIN_TEMPLATE)  # a Qwen3.5 header with a chat template
    argv = [sys.executable, "-m", "isheep_lite", "recipe", f"model.gguf={tmp_path / 'qwen35.gguf'}", "model.hf=" + str(tmp_path)]
    (tmp_path / "config.json").write_text('{"architectures": ["Qwen3_5ForCausalLM"], "model_type": "qwen3_5_text"}')
    proc = subprocess.run([*argv, "export.mode=adapter"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: export.mode=adapter: a qwen35 model's LoRA adapter is exported merged only; set export.mode=merged"
    ], proc.stderr
    proc = subprocess.run([*argv, "model.backend=transformers"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: model.backend=transformers loads each model from its GGUF, which transformers does not read back "
        "exactly for a qwen35 model; use model.backend=llama_cpp"
    ], proc.stderr


@pytest.mark.parametrize("command", ["recipe", "run", "eval"])
def test_unsupported_gguf_is_refused_before_any_work(command: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    model = header_gguf(tmp_path / "gpt2.gguf", "gpt2")  # llama.cpp knows gpt2; the toolkit cannot train and export it
    runs = tmp_path / "runs"
    args = [str(model)] if command == "eval" else [f"model.gguf={model}", f"runs_dir={runs}"]
    proc = subprocess.run(
        [sys.executable, "-m", "isheep_lite", command, *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "architecture 'gpt2' is not supported" in lines[0] and "qwen2" in lines[0], proc.stderr
    assert not runs.exists(), "nothing may be written for a refused model"


@pytest.mark.slow
def test_a_gguf_too_big_to_dequantise_here_is_refused_with_the_ram_it_needs(
    tiny: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ISHEEP_CACHE", str(tmp_path / "cache"))  # nothing dequantised yet
    monkeypatch.setattr(weights, "available_ram", lambda: 10_000_000)
    with pytest.raises(UserError, match=r"needs about 1 GB of RAM, 0 GB is available; give the model's HF weights as model.hf"):
        weights.check_dequantisable(tiny["gguf"])
    monkeypatch.setattr(weights, "available_ram", lambda: 64 * 10**9)
    weights.check_dequantisable(tiny["gguf"])
