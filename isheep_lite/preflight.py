"""Everything checked and planned before a run writes anything: the recipe's backends, seeds,
model files and converter (`check_recipe`, shared by `isheep recipe` and `isheep run`, so both
accept and refuse the same recipes with the same line), then the free disk and the memory plan
(`preflight`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from isheep_lite import planner
from isheep_lite.config import ModelConfig, Recipe
from isheep_lite.engines import server
from isheep_lite.gguf import convert, header, weights
from isheep_lite.recipe import UserError
from isheep_lite.rundir.files import check_free_disks, reclaim_before_run
from isheep_lite.rundir.manifest import Manifest
from isheep_lite.selfalign import synth
from isheep_lite.training import hardware, lora


def adapter_mode(r: Recipe, n_params: int, arch: str) -> bool:
    """export.mode auto: adapters from 3B parameters, where a merged F16 export per iteration costs
    6+ GB of disk, minutes of writing, and more VRAM to serve than the user's quantised GGUF — when
    llama.cpp serves the model (only it applies GGUF adapters) and the architecture's adapter is
    exact as a GGUF adapter (archs.Arch.adapter_gguf: not Qwen3.5's or Gemma 4's, merged at every
    size). A server with runtime LoRA (model.serve_lora) serves every M_t as M_0 + its adapter:
    always adapters."""
    from isheep_lite.gguf import archs

    row = archs.MATRIX.get(arch)  # an architecture outside the matrix is refused before this is asked
    exact = row is None or row.adapter_gguf
    auto = r.export.mode == "auto" and n_params >= 3_000_000_000 and r.model.backend == "llama_cpp" and exact
    return r.export.mode == "adapter" or auto or r.model.serve_lora


BYTES_PER_PARAM = {"f32": 4.0, "f16": 2.0, "q8_0": 1.07, "q4_k_m": 0.6, "q4_1": 0.63, "q5_k_m": 0.7}


def planned_bytes(r: Recipe, n_params: int, arch: str, done: set[int]) -> int:
    """Disk the remaining exports will take: every GGUF type (in adapter mode: an adapter, ≤ 2 % of
    the model, per iteration and the types once at the end), the F16 M_0, merged HF weights (float32)."""
    types = sum(BYTES_PER_PARAM.get(t, 2.0) for t in r.export.types)
    adapters = adapter_mode(r, n_params, arch)
    per_iter = (0.04 if adapters else types) + (4.0 if r.loop.train_from == "previous" else 0.0)
    todo = [t for t in range(1, r.loop.iterations + 1) if t not in done]
    base = 0.0 if 0 in done or r.model.serve_base == "original" else 2.0
    final = types if adapters and todo else 0.0
    return int(1.1 * n_params * (base + per_iter * len(todo) + final))


def dequantise_bytes(r: Recipe, given: Path, n_params: int, done: set[int]) -> int:
    """Disk the one-time dequantisation of a GGUF-only model writes into the model cache (float32
    HF weights, 4 bytes per parameter, +10 %; a split GGUF's shards joined into one file first, for
    transformers' reader) when M_0 is still to be prepared and not cached yet."""
    if r.model.hf or 0 in done or (weights.dequantised_dir(given) / "config.json").is_file():
        return 0
    shards = header.gguf_shards(given)
    joined = sum(p.stat().st_size for p in shards) if len(shards) > 1 else 0
    return int(1.1 * 4.0 * n_params) + joined


def generation_gguf(r: Recipe) -> Path:
    """model.gguf, or with model.converter the GGUF llama.cpp's converter makes from model.hf."""
    if not r.model.converter:
        return header.resolve_gguf(r.model.gguf)
    _check_converter_inputs(r)
    return weights.converted_gguf(weights.user_hf(r.model.hf), r.model.converter)


def _check_converter_inputs(r: Recipe) -> None:
    if not r.model.hf:
        raise UserError("model.converter makes the GGUF from model.hf: set model.hf to the HF model directory")
    if r.model.gguf != ModelConfig.gguf:
        raise UserError("set model.gguf or model.converter, not both: the converter makes the GGUF from model.hf")
    script = Path(r.model.converter).expanduser()
    if not script.is_file():
        raise UserError(f"model.converter: {script} not found (give the path of llama.cpp's convert_hf_to_gguf.py)")


def check_model(r: Recipe) -> None:
    """The model's architecture is in the matrix (archs.py), from headers and configs alone: shared
    by `isheep recipe` and `isheep run`, so both refuse an unsupported model before any work."""
    from isheep_lite.gguf import archs

    rows = []
    if r.model.hf:
        rows.append(archs.for_hf(weights.user_hf(r.model.hf)))
    if not r.model.converter:
        info = header.check_arch(header.resolve_gguf(r.model.gguf))
        rows.append(archs.for_gguf(info.arch, r.model.gguf))
    if r.export.mode == "adapter" and any(not a.adapter_gguf for a in rows):
        raise UserError(f"export.mode=adapter: a {rows[0].gguf_arch} model's LoRA adapter is exported merged only; set export.mode=merged")
    if r.model.backend == "transformers" and any(not a.from_gguf for a in rows):
        raise UserError(
            f"model.backend=transformers loads each model from its GGUF, which transformers does not read back "
            f"exactly for a {rows[0].gguf_arch} model; use model.backend=llama_cpp"
        )


def check_recipe(r: Recipe) -> list[dict[str, str]]:
    """Every check of a run's recipe and inputs that writes nothing: the backends it names, the seed
    file, the model's architecture and files, the converter, the judge. `isheep recipe` and `isheep
    run` both call it, so they accept and refuse the same recipes (with the same line). Returns the
    seeds it read."""
    if r.model.backend == "openai" and not (r.model.serve_command or r.model.serve_lora):
        raise UserError(
            "model.backend=openai: the loop serves a new model each iteration, so it starts the server itself; set "
            "model.serve_command (e.g. 'llama-server -m {gguf} --port 8080'), or model.serve_lora for a server that loads "
            "LoRA adapters at run time (vLLM), or evaluate one model with "
            "`isheep eval MODEL.gguf --server URL`"
        )
    if r.model.serve_command:
        server.check_command(r.model.serve_command)
    if r.export.mode == "adapter" and r.model.backend != "llama_cpp" and not r.model.serve_lora:
        raise UserError(
            "export.mode=adapter serves GGUF LoRA adapters, which only llama.cpp applies: "
            f"set export.mode=merged for model.backend={r.model.backend}"
        )
    hardware.resolve_backend(r.train.backend, False, importlib.util.find_spec("unsloth") is not None)
    seeds = synth.load_seeds(r.synth.seeds)
    check_model(r)
    convert.check_converter()
    if r.model.converter:
        _check_converter_inputs(r)
    else:
        given = header.resolve_gguf(r.model.gguf)
        info = header.gguf_info(given)
        if r.model.hf:
            weights.check_same_model(info, given, weights.user_hf(r.model.hf))
        else:
            weights.check_dequantisable(given)
    if r.eval.judge not in ("base", "current"):
        header.gguf_info(header.resolve_gguf(r.eval.judge))
    return seeds


def preflight(r: Recipe) -> tuple[list[dict[str, str]], Path, dict[str, float]]:
    """Every input is checked before anything is written (check_recipe), then the GGUF generation
    starts from (made once by model.converter), what killed runs left behind, and the free disk.
    Returns the seeds, that GGUF and the run's memory plan."""
    seeds = check_recipe(r)
    given = generation_gguf(r)
    info = header.check_arch(given)
    if r.model.converter:
        weights.check_same_model(info, given, weights.user_hf(r.model.hf))
    done = done_exports(Path(r.run_dir))
    reclaim_before_run(Path(r.run_dir), header.cache_root())  # what killed runs left behind is free space again
    needs = [(Path(r.run_dir), planned_bytes(r, info.n_params, info.arch, done), "the planned exports")]
    if dequantise := dequantise_bytes(r, given, info.n_params, done):
        needs.append((header.cache_root(), dequantise, "the one-time dequantisation into float32 HF weights"))
    check_free_disks(needs)
    return seeds, given, memory_plan(r, given, sum(n for _, n, _ in needs))


def done_exports(run_dir: Path) -> set[int]:
    """Iterations of an existing run whose model is already on disk (none if there is no readable manifest)."""
    try:
        return Manifest.read(run_dir).done_exports()
    except (UserError, ValueError, KeyError, TypeError, AttributeError):
        return set()


def memory_plan(r: Recipe, given: Path, disk_bytes: float) -> dict[str, float]:
    """The planner's figures for this recipe and model, from the HF weights' config.json and files
    (what training loads: a hybrid's linear-attention layers, a vision tower) or, for a GGUF-only
    model, its header and its float32 dequantisation in 1 GB shards — nothing is loaded."""
    info = header.gguf_info(given)
    shape = planner.Shape.from_gguf(info)
    if r.model.hf:
        hf_dir = weights.user_hf(r.model.hf)
        sizes = [f.stat().st_size for f in hf_dir.glob("*.safetensors")]
        hf_bytes, largest = sum(sizes), max(sizes, default=0)
        try:
            shape = planner.Shape.from_hf_dir(hf_dir)
        except (KeyError, TypeError):  # a config without the usual keys: the GGUF header's shape
            pass
    else:  # weights.gguf_to_hf writes float32 in shards of DEQUANTISED_SHARD_BYTES
        hf_bytes = 4 * info.n_params
        largest = min(hf_bytes, weights.DEQUANTISED_SHARD_BYTES)
    targets = (
        list(planner.TARGET_SHAPES)  # auto: every projection of the blocks, as the planner names them
        if lora.auto_targets(r.train.target_modules)
        else lora.planner_targets(list(r.train.target_modules))
    )
    gpu = planner.gpu_free_bytes() is not None
    backend = hardware.resolve_backend(r.train.backend, gpu, importlib.util.find_spec("unsloth") is not None)
    return planner.run_plan(
        shape,
        gguf_bytes=sum(p.stat().st_size for p in header.gguf_shards(given)),
        kv_bytes_per_cell=info.kv_bytes_per_cell,
        n_ctx=r.model.n_ctx,
        n_parallel=r.model.n_parallel,
        n_ctx_train=info.n_ctx_train,
        bits=4 if gpu and r.train.load_in_4bit else 16,
        r=r.train.lora_r,
        targets=targets,
        batch=r.train.batch_size,
        seq_len=r.train.max_seq_len,
        backend=backend,
        hf_bytes=hf_bytes,
        hf_largest_shard=largest,
        disk_bytes=disk_bytes,
    )
