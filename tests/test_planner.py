"""The memory planner against published peak-memory figures, and the micro-batch it picks.

Reference: Unsloth's "Unsloth Requirements" page, table "Fine-tuning VRAM requirements"
(https://unsloth.ai/docs/get-started/fine-tuning-for-beginners/unsloth-requirements): the minimum
VRAM to fine-tune with Unsloth, by model size, for QLoRA (4-bit) and LoRA (16-bit). The page does
not name the models or the run; we read each size as the model Unsloth's notebooks use for it and
the run as the minimum one: batch 1, 512 tokens, LoRA r 16 on all seven projections, Unsloth's
gradient checkpointing. Architectures are from each model's published config.json.
"""

from __future__ import annotations

import pytest

from isheep_lite.planner import GB, TARGET_SHAPES, Shape, estimate, plan_batches

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
#        name                      layers hidden inter heads kv head_dim vocab  tied    QLoRA GB  LoRA GB
MODELS = {
    "Llama-3.2-3B (3B)": (Shape(28, 3072, 8192, 24, 8, 128, 128256, True), 3.5, 8),
    "Mistral-7B-v0.3 (7B)": (Shape(32, 4096, 14336, 32, 8, 128, 32768, False), 5, 19),
    "Llama-3.1-8B (8B)": (Shape(32, 4096, 14336, 32, 8, 128, 128256, False), 6, 22),
    "Qwen3-8B (8B)": (Shape(36, 4096, 12288, 32, 8, 128, 151936, False), 6, 22),
    "Gemma-2-9B (9B)": (Shape(42, 3584, 14336, 16, 8, 256, 256000, True), 6.5, 24),
    "Phi-4 (14B)": (Shape(40, 5120, 17920, 40, 10, 128, 100352, False), 8.5, 33),
    "Qwen2.5-32B (32B)": (Shape(64, 5120, 27648, 40, 8, 128, 152064, False), 26, 76),
    "Llama-3.1-70B (70B)": (Shape(80, 8192, 28672, 64, 8, 128, 128256, False), 41, 164),
}
# A recorded miss, not hidden: for 14B QLoRA the page lists 8.5 GB, less than Phi-4's weights alone
# take in NF4 with 16-bit embeddings and lm_head (9.1 GB here); our estimate is 11.1 GB (+30 %).
# For 8B QLoRA the page lists 6 GB whatever the model; Qwen3-8B's 152k vocabulary (untied: 2.5 GB of
# 16-bit embeddings and lm_head) and 36 layers make ours 7.75 GB (+29 %) — its 24 GB recipe keeps 12 GB spare.
MISSES = {("Phi-4 (14B)", 4), ("Qwen3-8B (8B)", 4)}
CASES = [(name, bits) for name in MODELS for bits in (4, 16)]


def _estimate_gb(name: str, bits: int) -> float:
    shape = MODELS[name][0]
    return estimate(shape, bits=bits, r=16, targets=ALL, batch=1, seq_len=512, backend="unsloth")["total"] / GB


@pytest.mark.parametrize("name,bits", CASES)
def test_estimate_within_25_percent_of_published_peak(name: str, bits: int) -> None:
    published = MODELS[name][1] if bits == 4 else MODELS[name][2]
    ratio = _estimate_gb(name, bits) / published
    if (name, bits) in MISSES:
        assert not 0.75 <= ratio <= 1.25, "a recorded miss now fits: remove it from MISSES"
    else:
        assert 0.75 <= ratio <= 1.25, f"{name} {bits}-bit: estimate {ratio:.2f}× the published {published} GB"


def test_at_least_six_reference_configurations_fit() -> None:
    assert len(CASES) - len(MISSES) >= 6


def test_shape_from_config_counts_parameters() -> None:
    llama8b = {
        "num_hidden_layers": 32,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "tie_word_embeddings": False,
    }
    s = Shape.from_config(llama8b)
    assert s == MODELS["Llama-3.1-8B (8B)"][0]
    assert abs(s.params() / 8.03e9 - 1) < 0.01  # Meta lists 8.03 B parameters (norms excluded here: 0.3 M)
    assert Shape.from_config({"text_config": llama8b}) == s
    # Gemma 4's per-layer input embeddings: a second table of vocabulary × layers × their width
    ple = Shape.from_config({**llama8b, "hidden_size_per_layer_input": 256})
    assert ple.params() - s.params() == 128256 * 32 * 256


# Unsloth's Qwen3.5 fine-tuning guide (https://unsloth.ai/docs/models/qwen3.5/fine-tune) publishes
# bf16 LoRA VRAM per model: 4B 10 GB, 9B 22 GB, 27B 56 GB (it advises against QLoRA for Qwen3.5).
# Text configs as published (hybrid: three gated-delta-net layers to one full-attention layer, 16 key
# heads of 128; 32 or 48 value heads of 128; gated query); the vision tower is the 9B's published
# one (27 blocks, 1152 wide, MLP 4304), taken for the 4B and 27B too.
QWEN35_VISION = {"depth": 27, "hidden_size": 1152, "intermediate_size": 4304}


def _qwen35(layers: int, hidden: int, inter: int, heads: int, value_heads: int, tied: bool) -> dict:
    text = {
        "num_hidden_layers": layers,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_attention_heads": heads,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "vocab_size": 248320,
        "layer_types": ["linear_attention", "linear_attention", "linear_attention", "full_attention"] * (layers // 4),
        "linear_num_key_heads": 16,
        "linear_key_head_dim": 128,
        "linear_num_value_heads": value_heads,
        "linear_value_head_dim": 128,
        "attn_output_gate": True,
    }
    return {
        "architectures": ["Qwen3_5ForConditionalGeneration"],
        "tie_word_embeddings": tied,
        "text_config": text,
        "vision_config": QWEN35_VISION,
    }


QWEN35 = {  # name: (config.json, published bf16 LoRA GB)
    "Qwen3.5-4B": (_qwen35(32, 2560, 9216, 16, 32, True), 10),
    "Qwen3.5-9B": (_qwen35(32, 4096, 12288, 16, 32, False), 22),
    "Qwen3.5-27B": (_qwen35(64, 5120, 17408, 24, 48, False), 56),
}


@pytest.mark.parametrize("name", QWEN35)
def test_qwen35_bf16_lora_within_25_percent_of_unsloths_figure(name: str) -> None:
    """The hybrid's linear-attention layers and the vision tower counted (auto targets: every
    projection of the blocks, the gated-delta-net ones included)."""
    config, published = QWEN35[name]
    est = estimate(Shape.from_config(config), bits=16, r=16, targets=list(TARGET_SHAPES), batch=1, seq_len=512, backend="unsloth")
    assert 0.75 <= est["total"] / GB / published <= 1.25, (name, est["total"] / GB)


def test_qwen35_9b_parameters_are_its_checkpoints() -> None:
    """Qwen3.5-9B's checkpoint holds 9.653 B parameters (19 306 216 416 bytes of bf16), of which the
    multi-token-prediction head (about 0.24 B) is not loaded by transformers: the planner's count of
    what is loaded — text model and vision tower — must be the rest, within 2 %."""
    counted = Shape.from_config(QWEN35["Qwen3.5-9B"][0]).params()
    assert counted == pytest.approx(19_306_216_416 / 2 - 0.24e9, rel=0.02)


def test_shape_counts_a_hybrid_and_its_towers_as_transformers_builds_them() -> None:
    """Tiny Qwen3.5 (text and vision checkpoints) and Gemma 3 vision models built here: the
    planner's count from their config.json is the text model's own count of linear-layer and
    embedding parameters (norms and the delta net's convolution aside), and a tower is counted
    exactly when the checkpoint has one."""
    from tiny_archs import BUILDERS

    from isheep_lite.gguf.archs import in_tower

    for arch in ("qwen3_5", "qwen3_5_vision", "gemma3_vision", "llama3"):
        model = BUILDERS[arch](256)
        shape = Shape.from_config(model.config.to_dict())
        text = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "norm" not in n and not in_tower(n))
        assert shape.params() - shape.tower_params == text, arch
        assert (shape.tower_params > 0) == arch.endswith("vision"), arch
        assert (shape.linear_attention_layers, shape.gated_query) == ((3, True) if arch.startswith("qwen3_5") else (0, False))


def test_plan_picks_the_largest_micro_batch_that_fits_and_keeps_the_effective_batch() -> None:
    s = MODELS["Qwen2.5-32B (32B)"][0]
    small = MODELS["Llama-3.2-3B (3B)"][0]
    roomy = plan_batches(small, 24 * GB, bits=4, r=16, targets=ALL, seq_len=1024, effective_batch=16, backend="unsloth")
    tight = plan_batches(small, 6 * GB, bits=4, r=16, targets=ALL, seq_len=1024, effective_batch=16, backend="unsloth")
    assert roomy["micro_batch"] > tight["micro_batch"] >= 1
    for p in (roomy, tight):
        assert p["micro_batch"] * p["grad_accum"] >= 16 and p["estimate_gb"] <= 0.9 * (24 if p is roomy else 6)
    with pytest.raises(MemoryError, match="GB free"):
        plan_batches(s, 16 * GB, bits=16, r=16, targets=ALL, seq_len=1024, effective_batch=8)


# ---- llama.cpp on a GPU -------------------------------------------------------------------------
QWEN7B_Q4KM = dict(weights_bytes=4_683_073_760, n_layers=28, kv_bytes_per_cell=57_344, n_vocab=152_064, n_ctx_train=32_768)


def test_llama_plan_keeps_every_layer_and_sequence_when_they_fit() -> None:
    from isheep_lite.planner import plan_llama

    p = plan_llama(**QWEN7B_Q4KM, free_bytes=23.5 * GB, n_ctx=2048, n_parallel=16)
    assert p == {**p, "n_gpu_layers": -1, "n_parallel": 16, "n_ctx": 2048}
    # weights 4.68 + KV 18 × 2048 × 56 KiB 2.11 + logits 0.31 + 0.5 GB
    assert p["vram_gb"] == pytest.approx(7.61, abs=0.02)


@pytest.mark.parametrize("free_gb", [4.0, 5.5, 6.5, 7.0, 9.0, 12.0])
def test_llama_plan_gives_up_sequences_before_layers_and_always_fits(free_gb: float) -> None:
    from isheep_lite.planner import plan_llama

    p = plan_llama(**QWEN7B_Q4KM, free_bytes=free_gb * GB, n_ctx=8192, n_parallel=16)
    assert p["vram_gb"] <= 0.9 * free_gb + 1e-9
    if p["n_gpu_layers"] != -1:  # layers leave the GPU only once sequences are down to the minimum
        assert p["n_parallel"] == 4 and 0 <= p["n_gpu_layers"] < 28
    more = plan_llama(**QWEN7B_Q4KM, free_bytes=(free_gb + 1) * GB, n_ctx=8192, n_parallel=16)
    rank = lambda q: (q["n_gpu_layers"] == -1, q["n_parallel"], q["n_gpu_layers"])  # noqa: E731
    assert rank(more) >= rank(p), "more free memory never gives a smaller plan"


def test_llama_plan_caps_context_and_runs_on_cpu_when_nothing_fits() -> None:
    from isheep_lite.planner import plan_llama

    p = plan_llama(**{**QWEN7B_Q4KM, "n_ctx_train": 4096}, free_bytes=0.6 * GB, n_ctx=8192, n_parallel=16)
    assert p["n_ctx"] == 4096 and p["n_gpu_layers"] == 0 and p["vram_gb"] == 0.0


def test_engine_sizes_itself_from_the_plan_on_a_gpu_build(tiny: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA calls faked (a GPU build, 0.7 GB free): the engine takes the planner's sequences and
    context, and hands llama.cpp its n_gpu_layers."""
    import llama_cpp

    from isheep_lite import planner
    from isheep_lite.engines.base import Sampling
    from isheep_lite.engines.llamacpp import Engine

    seen: dict = {}
    real = llama_cpp.Llama

    def spy(*a, **kw):
        seen.update(kw)
        return real(*a, **{**kw, "n_gpu_layers": 0})

    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: True)
    monkeypatch.setattr(llama_cpp, "Llama", spy)
    monkeypatch.setattr(planner, "gpu_free_bytes", lambda: 0.7 * GB)
    with Engine(tiny["gguf"], n_ctx=4096, n_parallel=16) as e:
        assert e.gpu_plan is not None and e.n_ctx == 1024  # the tiny model's trained context
        assert (e.n_parallel, seen["n_gpu_layers"], seen["n_ctx"]) == (e.gpu_plan["n_parallel"], e.gpu_plan["n_gpu_layers"], 1024)
        assert e.generate(["Hello"], [Sampling(max_tokens=4)])[0].n_tokens == 4


def test_export_ram_fit_reproduces_the_benchmarks_peaks() -> None:
    """planner.export_ram_bytes is the fit over bench/bench_export.py's measured peaks: it must give
    each of them back (within 10 %), and for an 8 B model in 5 GB shards stay far below the 45 GiB
    the old whole-model float32 merge needed."""
    import json
    from pathlib import Path

    from isheep_lite.planner import GIB, export_ram_bytes

    results = json.loads((Path(__file__).resolve().parents[1] / "bench" / "results" / "export-ram.json").read_text())
    peaks = results["llama_3_1_8b_extrapolation"]["export_peaks"]
    assert len(peaks) >= 3
    for name, p in peaks.items():
        est = export_ram_bytes(p["weights_on_disk_gib"] * GIB, p["largest_shard_gib"] * GIB) / GIB
        assert abs(est - p["peak_rss_gib"]) <= 0.1 * p["peak_rss_gib"], (name, est, p["peak_rss_gib"])
    eight_b = export_ram_bytes(16.1e9, 5.0e9) / GIB
    assert 8 < eight_b < 14, eight_b


def test_preflight_plans_the_runs_memory_from_the_planner(tmp_path) -> None:
    """The memory plan a run prints when it starts (and keeps in its manifest; the end-to-end test
    sees the line): training, generation, export RAM and disk, the planner's figures for the model."""
    from isheep_lite import preflight, recipe
    from isheep_lite.gguf import header
    from isheep_lite.planner import Shape, describe_plan

    r = recipe.load(None, [f"runs_dir={tmp_path}"])
    _, given, plan = preflight.preflight(r)
    info = header.gguf_info(given)
    assert Shape.from_gguf(info) == Shape(30, 576, 1536, 9, 3, 64, 49152, True)  # SmolLM2-135M's config.json
    assert plan == preflight.memory_plan(r, given, plan["disk_gb"] * 1e9)
    assert 0 < plan["training_gb"] < 4 and 0 < plan["generation_gb"] < 4 and 0.5 < plan["export_ram_gib"] < 3
    line = describe_plan(plan)
    assert line.startswith("memory plan: training ≈") and "generation ≈" in line and "GiB of RAM" in line
    assert not (tmp_path / r.name).exists(), "preflight writes nothing"


def test_preflight_plans_a_hybrid_from_its_hf_config(tmp_path) -> None:
    """With model.hf set, the run's memory plan is made from the HF config.json (what training
    loads): Qwen3.5-9B's hybrid layers and vision tower, not the GGUF header's shape (here the
    embedded model's, whose file only sizes generation)."""
    import json

    from isheep_lite import preflight, recipe

    hf = tmp_path / "qwen3.5-9b"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({**QWEN35["Qwen3.5-9B"][0], "model_type": "qwen3_5"}))
    _, given, _ = preflight.preflight(recipe.load(None, [f"runs_dir={tmp_path}"]))  # the embedded GGUF: its size only
    r = recipe.load(None, [f"runs_dir={tmp_path}", f"model.hf={hf}", "train.batch_size=1", "train.max_seq_len=512"])
    plan = preflight.memory_plan(r, given, 0)
    shape = Shape.from_config(QWEN35["Qwen3.5-9B"][0])
    expected = estimate(shape, bits=16, r=r.train.lora_r, targets=list(TARGET_SHAPES), batch=1, seq_len=512, backend="hf")
    assert plan["training_gb"] == round(expected["total"] / GB, 1) and plan["training_gb"] > 18


def test_a_hybrids_kv_cache_is_its_full_attention_layers_only() -> None:
    """Qwen3.5-9B's GGUF keys: 32 blocks, every fourth full attention (llama.cpp keeps KV there and a
    recurrent state elsewhere): 8 × 4 KV heads × (256 + 256) × 2 bytes a cell, not 32 layers' worth."""
    from isheep_lite.planner import kv_bytes_per_cell

    meta = {
        "qwen35.block_count": 32,
        "qwen35.attention.head_count": 16,
        "qwen35.attention.head_count_kv": 4,
        "qwen35.attention.key_length": 256,
        "qwen35.attention.value_length": 256,
        "qwen35.full_attention_interval": 4,
    }
    assert kv_bytes_per_cell(meta, "qwen35") == 8 * 4 * 512 * 2
    del meta["qwen35.full_attention_interval"]
    assert kv_bytes_per_cell(meta, "qwen35") == 32 * 4 * 512 * 2
