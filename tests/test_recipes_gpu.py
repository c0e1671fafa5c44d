"""The GPU recipes and the Colab notebook: they load and validate, their memory comments are the
planner's own numbers, and the notebook is valid nbformat whose code compiles."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from isheep_lite import config, preflight, recipe
from isheep_lite.planner import GB, TARGET_SHAPES, Shape, estimate, lora_params, plan_llama
from isheep_lite.training import fit, lora
from test_planner import QWEN35

ROOT = Path(__file__).resolve().parents[1]
SIGLIP = 27 * (4 * 1152**2 + 2 * 1152 * 4304)  # Gemma 3's vision_config: 27 blocks, 1152 wide, MLP 4304 (planner._tower_params)
# Published config.json of each model (layers, hidden, intermediate, heads, KV heads, head dim, vocab, tied).
RECIPES = {
    "qwen2.5-7b-24gb.yaml": Shape(28, 3584, 18944, 28, 4, 128, 152064, False),
    "llama3.1-8b-24gb.yaml": Shape(32, 4096, 14336, 32, 8, 128, 128256, False),
    "qwen2.5-1.5b-colab-t4.yaml": Shape(28, 1536, 8960, 12, 2, 128, 151936, True),
    "qwen3-8b-24gb.yaml": Shape(36, 4096, 12288, 32, 8, 128, 151936, False),
    "qwen3-4b-colab-t4.yaml": Shape(36, 2560, 9728, 32, 8, 128, 151936, True),
    "gemma3-12b-24gb.yaml": Shape(48, 3840, 15360, 16, 8, 256, 262208, True, tower_params=SIGLIP),  # its text_config + tower
    "gemma3-4b-colab-t4.yaml": Shape(34, 2560, 10240, 8, 4, 256, 262208, True, tower_params=SIGLIP),  # its text_config + tower
    "qwen3.5-9b-24gb.yaml": Shape.from_config(QWEN35["Qwen3.5-9B"][0]),  # hybrid layers, vision tower
}


def _targets(r: config.Recipe) -> list[str]:
    """train.target_modules auto is every linear layer of a decoder block: the seven projections of
    Llama, Qwen and Gemma (tests/training/test_precision.py), plus a hybrid's gated-delta-net ones
    (the planner counts each in the layers that have it)."""
    if lora.auto_targets(r.train.target_modules):
        return list(TARGET_SHAPES)
    return list(r.train.target_modules)


@pytest.mark.parametrize("name", RECIPES)
def test_gpu_recipe_loads_and_its_memory_comment_is_the_planners(name: str) -> None:
    path = ROOT / "recipes" / name
    r = recipe.load(path)
    text = path.read_text(encoding="utf-8")
    assert r.train.backend == "auto" and r.train.auto_batch
    assert r.train.load_in_4bit or "advises against 4-bit QLoRA" in text, "16-bit LoRA only where the model's guide says so"
    assert "NOT YET RUN ON REAL HARDWARE" in text
    claimed = float(re.search(r"peak ≈ ([\d.]+) GB", text).group(1))
    est = estimate(
        RECIPES[name],
        bits=4 if r.train.load_in_4bit else 16,
        r=r.train.lora_r,
        targets=_targets(r),
        batch=r.train.batch_size,
        seq_len=r.train.max_seq_len,
        backend="unsloth",
    )
    assert abs(est["total"] / GB - claimed) < 0.1, (name, est["total"] / GB)
    if name in PUBLISHED_GB:  # the planner's tested tolerance (tests/test_planner.py)
        assert 0.75 <= claimed / PUBLISHED_GB[name] <= 1.25, (name, claimed)


# Unsloth's published VRAM for the recipe's own model and method: Qwen3.5-9B bf16 LoRA (its Qwen3.5 guide).
PUBLISHED_GB = {"qwen3.5-9b-24gb.yaml": 22}


# Published Q4_K_M file sizes (bartowski's / Qwen's GGUF repositories on the Hugging Face Hub), bytes.
Q4_K_M_BYTES = {
    "qwen2.5-7b-24gb.yaml": 4_683_073_760,
    "llama3.1-8b-24gb.yaml": 4_920_734_016,
    "qwen3-8b-24gb.yaml": 5_030_000_000,  # bartowski's Qwen_Qwen3-8B-Q4_K_M.gguf, listed as 5.03 GB
    "qwen3-4b-colab-t4.yaml": 2_500_000_000,  # Qwen's Qwen3-4B-Q4_K_M.gguf, listed as 2.5 GB
    "gemma3-12b-24gb.yaml": 7_300_000_000,  # bartowski's google_gemma-3-12b-it-Q4_K_M.gguf, listed as 7.30 GB
    "gemma3-4b-colab-t4.yaml": 2_490_000_000,  # bartowski's google_gemma-3-4b-it-Q4_K_M.gguf, listed as 2.49 GB
}
FREE_GB = {"qwen3-4b-colab-t4.yaml": 14.5, "gemma3-4b-colab-t4.yaml": 14.5}  # a T4's free VRAM; the others: a 24 GB card's, 23.5


@pytest.mark.parametrize("name", Q4_K_M_BYTES)
def test_adapter_recipes_serve_adapters_and_their_generation_memory_is_the_planners(name: str) -> None:
    path = ROOT / "recipes" / name
    r, shape = recipe.load(path), RECIPES[name]
    assert r.export.mode == "auto" and r.model.serve_base == "original"
    assert preflight.adapter_mode(r, shape.params(), "llama"), "models from 3B are served as base GGUF + LoRA adapter"
    adapter = lora_params(shape, r.train.lora_r, _targets(r)) * 2  # F16
    plan = plan_llama(
        weights_bytes=Q4_K_M_BYTES[name] + adapter,
        n_layers=shape.layers,
        kv_bytes_per_cell=2 * shape.layers * shape.kv_heads * shape.head_dim * 2,
        n_vocab=shape.vocab,
        free_bytes=FREE_GB.get(name, 23.5) * GB,
        n_ctx=r.model.n_ctx,
        n_parallel=r.model.n_parallel,
    )
    assert plan["n_gpu_layers"] == -1 and plan["n_parallel"] == r.model.n_parallel
    claimed = float(re.search(r"compute [\d.]+ GB ≈ ([\d.]+) GB", path.read_text(encoding="utf-8")).group(1))
    assert abs(plan["vram_gb"] - claimed) < 0.1, plan


def test_colab_notebook_is_valid_and_its_code_compiles() -> None:
    import nbformat

    nb = nbformat.read(ROOT / "recipes" / "isheep_colab.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) >= 4
    for cell in code:  # shell (!) and magic (%) lines are IPython's; the rest must be Python
        python = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("!", "%")))
        compile(python, "<notebook cell>", "exec")
    text = "\n".join(c.source for c in code)
    assert "recipes/qwen3-4b-colab-t4.yaml" in text and "Session(" in text and "write_report(" in text
    # the toolkit only through its public API: no CLI calls, no module below the package
    import isheep_lite

    assert not re.search(r"!\s*isheep\b", text) and "isheep_lite." not in text
    names = {n.strip() for line in re.findall(r"from isheep_lite import ([^\n]+)", text) for n in line.split(",")}
    assert names and names <= set(isheep_lite.__all__), names


# Published safetensors of each model (bytes of weights, largest shard), as the Hub lists them.
HF_WEIGHTS = {
    "llama3.1-8b-24gb.yaml": (16.1e9, 5.0e9),
    "qwen2.5-7b-24gb.yaml": (15.2e9, 3.9e9),
    "qwen2.5-1.5b-colab-t4.yaml": (3.1e9, 3.1e9),
    "qwen3-8b-24gb.yaml": (16.4e9, 4.0e9),
    "qwen3-4b-colab-t4.yaml": (8.05e9, 3.99e9),
    "gemma3-12b-24gb.yaml": (24.4e9, 4.98e9),
    "gemma3-4b-colab-t4.yaml": (8.6e9, 4.96e9),
    "qwen3.5-9b-24gb.yaml": (19_306_216_416, 5.0e9),  # its index's total_size, in 4 shards of at most 5 GB
}


def test_merged_recipe_serves_an_f16_export_per_iteration_and_its_generation_memory_is_the_planners() -> None:
    """Qwen3.5's LoRA is exported merged at every size (export.mode auto): each M_t is an F16 GGUF of
    the text model, whose KV cache lives in the full-attention layers only — all of it on the GPU."""
    name = "qwen3.5-9b-24gb.yaml"
    path = ROOT / "recipes" / name
    r, shape = recipe.load(path), RECIPES[name]
    assert r.export.mode == "auto" and not preflight.adapter_mode(r, shape.params(), "qwen35")
    assert r.model.serve_base == "export", "M_0 served as the same F16 export as every M_t"
    full_attention = shape.layers - shape.linear_attention_layers
    plan = plan_llama(
        weights_bytes=(shape.params() - shape.tower_params) * 2,
        n_layers=shape.layers,
        kv_bytes_per_cell=2 * full_attention * shape.kv_heads * shape.head_dim * 2,
        n_vocab=shape.vocab,
        free_bytes=23.5 * GB,
        n_ctx=r.model.n_ctx,
        n_parallel=r.model.n_parallel,
    )
    assert plan["n_gpu_layers"] == -1 and plan["n_parallel"] == r.model.n_parallel
    claimed = float(re.search(r"compute [\d.]+ GB ≈ ([\d.]+) GB", path.read_text(encoding="utf-8")).group(1))
    assert abs(plan["vram_gb"] - claimed) < 0.1, plan


@pytest.mark.parametrize("name", HF_WEIGHTS)
def test_gpu_recipe_export_ram_comment_is_the_planners(name: str) -> None:
    from isheep_lite.planner import GIB, export_ram_bytes

    text = (ROOT / "recipes" / name).read_text(encoding="utf-8")
    claimed = float(re.search(r"host RAM ≈ ([\d.]+) GiB", text).group(1))
    assert abs(export_ram_bytes(*HF_WEIGHTS[name]) / GIB - claimed) < 0.06, name


def test_served_recipes_load_and_name_the_port_they_serve_on() -> None:
    """recipes/served/: llama-server started by the loop on the port of model.base_url; vLLM with
    runtime LoRA and two DDP processes whose training memory comment is the planner's."""
    server = recipe.load(ROOT / "recipes" / "served" / "llama-server-qwen2.5-7b.yaml")
    port = server.model.base_url.split(":")[2].split("/")[0]
    assert server.model.backend == "openai" and f"--port {port}" in server.model.serve_command and "{gguf}" in server.model.serve_command
    path = ROOT / "recipes" / "served" / "vllm-qwen2.5-7b-2gpu.yaml"
    vllm, text = recipe.load(path), path.read_text(encoding="utf-8")
    assert vllm.model.serve_lora and vllm.train.processes == 2 and f"--port {vllm.model.base_url.split(':')[2][:4]}" in text
    assert f"--max-lora-rank {vllm.train.lora_r}" in text and vllm.model.served_name in text.splitlines()[1]
    share = fit.rank_share(vllm.train, vllm.train.processes)
    est = estimate(
        RECIPES["qwen2.5-7b-24gb.yaml"],
        bits=4,
        r=vllm.train.lora_r,
        targets=_targets(vllm),
        batch=share.batch_size,
        seq_len=vllm.train.max_seq_len,
        backend="hf",
    )
    assert abs(est["total"] / GB - float(re.search(r"peak ≈ ([\d.]+) GB", text).group(1))) < 0.1


# Published config.json shapes of the models the paper recipe's planner comment names.
PAPER_SHAPES = {
    "SmolLM2-135M": Shape(30, 576, 1536, 9, 3, 64, 49152, True),
    "Qwen2.5-1.5B": RECIPES["qwen2.5-1.5b-colab-t4.yaml"],
    "Qwen2.5-7B": RECIPES["qwen2.5-7b-24gb.yaml"],
    "Llama-3.1-8B": RECIPES["llama3.1-8b-24gb.yaml"],
}


def test_paper_recipe_is_the_papers_procedure_and_its_24gb_plan_is_the_planners() -> None:
    """recipes/isheep_paper.yaml: two aspects as whole numbers, the top two grades of both kept, no
    rank cut, the paper's LoRA and schedule; each 24 GB figure in its header is what the planner
    gives for the micro-batch it picks on a 23.5 GB card at the recipe's effective batch."""
    from isheep_lite.planner import plan_batches

    path = ROOT / "recipes" / "isheep_paper.yaml"
    r, text = recipe.load(path), path.read_text(encoding="utf-8")
    assert r.assess.aspects == ["quality", "following"] and r.assess.mode == "grammar" and not r.assess.calibrate
    assert r.filter.min_score == r.assess.scale - 1 and r.filter.keep_top is None and r.synth.verifiable_fraction == 0
    assert r.synth.num_instructions >= 1000 and r.loop.iterations == 3 and r.loop.train_from == "base"
    assert (r.train.lora_r, r.train.lora_alpha, r.train.lr, r.train.epochs) == (8, 16, 5e-5, 2.0)
    assert r.train.batch_size * r.train.grad_accum == 16 and r.train.max_seq_len == 1024 and lora.auto_targets(r.train.target_modules)
    effective = r.train.batch_size * r.train.grad_accum
    for name, shape in PAPER_SHAPES.items():
        plan = plan_batches(
            shape,
            23.5 * GB,
            bits=4,
            r=r.train.lora_r,
            targets=_targets(r),
            seq_len=r.train.max_seq_len,
            effective_batch=effective,
            backend="unsloth",
        )
        claimed = float(re.search(rf"{re.escape(name)} peak ≈ ([\d.]+) GB", text).group(1))
        assert plan["micro_batch"] == 16 and abs(plan["estimate_gb"] - claimed) < 0.01, (name, plan)
