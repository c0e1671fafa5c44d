"""The I-SHEEP loop, top to bottom.

    M_0 ──► for t = 1..T:  instructions → responses → self-assessment → filter → LoRA SFT → GGUF → eval → promote
                            (written and graded by the best model so far; M_t = SFT(M_0 | M_best, D_t))

Each stage writes its records into `runs/<name>/iter_NN/` and marks itself done in the manifest
with its counts and seconds; a rerun of the same command skips what is done and resumes the rest.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from . import assess, evaluate, export, filters, models, planner, synth, train
from .engine import Engine, EngineBase
from .recipe import ModelConfig, Recipe, UserError, dump_yaml
from .store import JsonlWriter, RunStore, atomic_write_text, check_free_disks, read_jsonl, reclaim_before_run, write_jsonl


@contextlib.contextmanager
def progress_bar(desc: str, total: int) -> Iterator[Callable[[int], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=False) as p:
        task = p.add_task(desc, total=total)
        yield lambda n: p.advance(task, n)


@dataclass(frozen=True)
class Served:
    """A model as it is generated from: a GGUF, plus GGUF LoRA adapters llama.cpp applies at load
    time (export.mode=adapter: M_t = served base + Δ_t, or + every Δ of its chain with train_from=previous)."""

    gguf: Path
    adapters: tuple[Path, ...] = ()

    def __str__(self) -> str:
        return " + ".join(str(p) for p in (self.gguf, *self.adapters))


def open_engine(model: Served, r: Recipe, backend: str | None = None) -> EngineBase:
    """The recipe's backend (or `backend`) serving `model` (openai: the server at model.base_url serves it)."""
    m, backend, gguf = r.model, backend or r.model.backend, model.gguf
    if model.adapters and backend != "llama_cpp":
        raise UserError(f"GGUF LoRA adapters (export.mode=adapter) are applied by llama.cpp: use model.backend=llama_cpp, "
                        f"or export.mode=merged with model.backend={backend}")
    if backend == "transformers":
        from .hf_engine import HFEngine

        return HFEngine(gguf, m.n_parallel, m.n_threads)
    if backend == "openai":
        from .http_engine import OpenAIEngine

        return OpenAIEngine(str(m.base_url), gguf, m.n_parallel)
    return Engine(gguf, m.n_ctx, m.n_threads, m.n_parallel, m.kv_budget_gb, adapters=model.adapters)


def adapter_mode(r: Recipe, n_params: int) -> bool:
    """export.mode auto: adapters from 3B parameters, where a merged F16 export per iteration costs
    6+ GB of disk, minutes of writing, and more VRAM to serve than the user's quantised GGUF — when
    llama.cpp serves the model (only it applies GGUF adapters)."""
    auto = r.export.mode == "auto" and n_params >= 3_000_000_000 and r.model.backend == "llama_cpp"
    return r.export.mode == "adapter" or auto


def stage(store: RunStore, t: int, name: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run `work` unless the manifest says this stage is done; return its manifest entry."""
    if not store.is_done(t, name):
        with store.stage(t, name) as info:
            info.update(work())
    return store.stage_entry(t, name) or {}


def conversation(rec: dict[str, Any]) -> list[dict[str, str]]:
    return [{"role": "user", "content": synth.user_message(rec["instruction"], rec["input"])},
            {"role": "assistant", "content": rec["response"]}]


def base_model(store: RunStore, r: Recipe, given: Path) -> tuple[Path, Served]:
    """iter_00: M_0's HF weights, and the GGUF M_0 is served and evaluated from.

    By default M_0 is re-exported from its HF weights in the same format as every tuned model
    (F16), so M_0 and M_t are compared like for like — and because, for a 135M model, quantisation
    alone changes its answers (SmolLM2-135M's shipped Q4_1 answers "L'Étoile, …" where F16 says Paris).
    """
    d = store.iter_dir(0)

    def prepare() -> dict[str, Any]:
        hf_dir = models.resolve_hf(r.model.hf, given)  # the one-time dequantisation is timed here
        if r.model.serve_base == "original":
            return {"gguf": str(given), "hf": str(hf_dir)}
        paths = export.export(hf_dir, None, given, d, r.export.types[:1])
        return {"gguf": paths[r.export.types[0]], "hf": str(hf_dir)}

    entry = stage(store, 0, "base", prepare)
    served = Served(Path(entry["gguf"]))
    eval_stage(store, 0, served, r)
    return Path(entry["hf"]), served


def checks(model: Served, r: Recipe, reference: dict[str, Any] | None = None, judge: Served | None = None) -> dict[str, Any]:
    """Stop rate, instruction-following accuracy and (given M_0's eval entry) the pairwise verdict
    of one model: greedy answers to held-out prompts.

    The judge is opened only after the model under evaluation is closed, so one model is resident
    at a time (two 8B models at the planned context would not fit a 24 GB card together).
    """
    out: dict[str, Any] = {}
    with open_engine(model, r) as engine:
        if r.eval.stop_prompts:
            with progress_bar("eval: stop rate", r.eval.stop_prompts) as bar:
                out.update(evaluate.stop_rate(engine, r.eval.stop_prompts, r.eval.max_tokens, bar))
        if r.eval.suite_prompts:
            with progress_bar("eval: instruction suite", r.eval.suite_prompts) as bar:
                out["ifeval"] = evaluate.instruction_following(engine, r.eval.suite_prompts, r.eval.suite_max_tokens, bar)
    if reference and r.eval.pairwise and out.get("samples"):
        old = {x["id"]: x["text"] for x in reference.get("samples", [])}
        rows = [x for x in out["samples"] if x["id"] in old]
        # a judge GGUF of its own runs here: the server serves the model under evaluation only
        local = "llama_cpp" if r.model.backend == "openai" and judge is not None else None
        with open_engine(judge or model, r, local) as j, progress_bar("eval: pairwise judge", len(rows)) as bar:
            out["pairwise"] = evaluate.pairwise(j, [x["prompt"] for x in rows], [x["text"] for x in rows],
                                                [old[x["id"]] for x in rows], bar)
        out["pairwise"]["judge"] = str(judge or model)
    return out


def eval_stage(store: RunStore, t: int, model: Served, r: Recipe, base_served: Served | None = None) -> None:
    """M_t's checks as the manifest's `eval` stage, unless every check is switched off."""
    if not (r.eval.stop_prompts or r.eval.suite_prompts):
        return
    reference = store.stage_entry(0, "eval") if t > 0 else None
    judge = {"base": base_served, "current": None}[r.eval.judge] if r.eval.judge in ("base", "current") \
        else Served(models.resolve_gguf(r.eval.judge))

    def work() -> dict[str, Any]:
        result = checks(model, r, reference, judge)
        atomic_write_text(store.iter_dir(t) / "eval.json", json.dumps({"model": str(model), **result}, indent=2, ensure_ascii=False))
        return result

    stage(store, t, "eval", work)


def promote(store: RunStore, r: Recipe, t: int, best: int) -> dict[str, Any]:
    """The `promote` stage: compare M_t with the best model so far on the same held-out prompts.

    M_t is flagged `worse` when a paired bootstrap says it is below the best with probability ≥
    eval.worse_confidence, and becomes the new best only if its mean is at least the best's (ties go
    to the newer model). With loop.promote=latest every M_t is promoted; the flag is still recorded.
    """
    def decide() -> dict[str, Any]:
        old, new = store.stage_entry(best, "eval"), store.stage_entry(t, "eval")
        a, b = (evaluate.passes(old), evaluate.passes(new)) if old and new else ([], [])
        if not a or len(a) != len(b):
            return {"against": best, "compared": False, "worse": False, "best": t}
        cmp = evaluate.paired_bootstrap(a, b)
        worse = cmp["p_worse"] >= r.eval.worse_confidence
        better = cmp["delta"] >= 0 or r.loop.promote == "latest"
        return {"against": best, "compared": True, **cmp, "worse": worse, "best": t if better else best}

    return stage(store, t, "promote", decide)


def iteration(store: RunStore, r: Recipe, t: int, seeds: list[dict], given: Path, current: Served,
              train_hf: Path, base_served: Served, adapters: bool = False) -> Served:
    """One iteration: the best model so far (`current`) writes and grades the data, LoRA is trained
    on `train_hf` (M_0's weights, or the best model's merged weights); returns M_t as it is served:
    a merged GGUF, or (`adapters`) the served base plus M_t's chain of GGUF LoRA adapters."""
    d, seed = store.iter_dir(t), r.loop.seed
    s, f = r.synth, r.filter

    with open_engine(current, r) as engine:
        def make_instructions() -> dict[str, Any]:
            with progress_bar(f"it{t} instructions", s.num_instructions) as bar:
                kept, rejected = synth.generate_instructions(engine, seeds, s, f, seed, t, d / "completions.jsonl", progress=bar)
            write_jsonl(d / "instructions.jsonl", kept)
            write_jsonl(d / "instructions_rejected.jsonl", rejected)
            prompts = len(read_jsonl(d / "completions.jsonl"))
            return {"prompts": prompts, "instructions": len(kept), "rejected": len(rejected),
                    "rejected_by_reason": _count(rejected, "reason")}

        stage(store, t, "instructions", make_instructions)
        instructions = read_jsonl(d / "instructions.jsonl")

        def make_responses() -> dict[str, Any]:
            with progress_bar(f"it{t} responses", len(instructions)) as bar:
                rows = synth.generate_responses(engine, instructions, s, seed, t, d / "responses.jsonl", progress=bar)
            return {"responses": len(rows), "tokens": sum(x["gen"]["tokens"] for x in rows),
                    "finished": sum(x["gen"]["finish"] == "stop" for x in rows)}

        stage(store, t, "responses", make_responses)
    responses = read_jsonl(d / "responses.jsonl")

    # Pair rules first: the judge only sees pairs that could be trained on.
    candidates, rejected = [], []
    for x in responses:
        reason = filters.response_reject_reason(x["instruction"], x["response"], x["gen"]["finish"], f)
        if reason:
            rejected.append({**x, "stage": "pair", "reason": reason})
        else:
            candidates.append(x)

    # The engine that generated is closed by now: the judge (M_0 by default) is opened alone, so
    # one model is resident at a time.
    assessor = current if r.assess.assessor == "current" else base_served

    def make_scores() -> dict[str, Any]:
        if not r.assess.enabled:  # the no-assessment ablation: every candidate goes on unscored
            write_jsonl(d / "scored.jsonl", [{**x, "scores": {}, "score": None} for x in candidates])
            return {"scored": 0, "assessor": None, "score_mean": None}
        done = {x["id"]: x for x in read_jsonl(d / "scored.jsonl")}
        with contextlib.ExitStack() as stack:
            judge = stack.enter_context(open_engine(assessor, r))
            name = (current.adapters or (current.gguf,))[-1].parent.name if r.assess.assessor == "current" else "M_0"
            out = stack.enter_context(JsonlWriter(d / "scored.jsonl"))
            bar = stack.enter_context(progress_bar(f"it{t} self-assessment", len(candidates)))
            rows = assess.assess(judge, candidates, r.assess, name, done, out.write, bar)
        scores = [x["score"] for x in rows if x["score"] is not None]
        return {"scored": len(rows), "assessor": name, **_stats(scores), "score_hist": histogram(scores, r.assess.scale)}

    stage(store, t, "assess", make_scores)
    scored = {x["id"]: x for x in read_jsonl(d / "scored.jsonl")}

    def make_selection() -> dict[str, Any]:
        aspects = r.assess.aspects if r.assess.enabled else []
        kept, dropped = filters.select([scored[x["id"]] for x in candidates], aspects, f)
        write_jsonl(d / "kept.jsonl", [{"id": x["id"], "messages": conversation(x), "score": x["score"]} for x in kept])
        write_jsonl(d / "rejected.jsonl", rejected + dropped)
        return {"kept": len(kept), "rejected": len(rejected) + len(dropped), "kept_ratio": round(len(kept) / max(1, len(responses)), 4),
                "rejected_by_reason": _count(rejected + dropped, "reason")}

    stage(store, t, "filter", make_selection)

    def make_training() -> dict[str, Any]:
        iters = range(1, t + 1) if r.loop.data == "cumulative" else [t]
        data = [x["messages"] for i in iters for x in read_jsonl(store.iter_dir(i) / "kept.jsonl")]
        if not data:
            raise UserError(f"iteration {t}: no pair passed selection, nothing to train on (reasons in {d / 'rejected.jsonl'}); "
                            "rerun under a new name with a lower filter.min_score or more synth.num_instructions")
        return {"trained_on": str(train_hf), **train.train(data, train_hf, given, d, r.train, seed + t)}

    stage(store, t, "train", make_training)

    def make_export() -> dict[str, Any]:
        if adapters:
            config = json.loads((train_hf / "config.json").read_text(encoding="utf-8"))
            export.write_lora_gguf(d / "adapter", config, given, d / "adapter-f16.gguf")
            paths = {"adapter": str(d / "adapter-f16.gguf")}
        else:
            paths = export.export(train_hf, d / "adapter", given, d, r.export.types)
        if r.loop.train_from == "previous":
            export.save_merged_hf(train_hf, d / "adapter", d / "merged")
        return {"files": paths}

    files = stage(store, t, "export", make_export)["files"]
    if adapters:  # trained on M_0's weights: base + Δ_t; on the best model's merged weights: its chain + Δ_t
        chain = current.adapters if r.loop.train_from == "previous" else ()
        tuned = Served(base_served.gguf, (*chain, Path(files["adapter"])))
    else:
        tuned = Served(Path(files[r.export.types[0]]))
    eval_stage(store, t, tuned, r, base_served)
    return tuned


def final_export(store: RunStore, r: Recipe, best: int, given: Path) -> Path:
    """Adapter mode: the best model written whole (merged, every export.types), once, at the end."""
    d = store.iter_dir(best)
    trained_on = Path(store.stage_entry(best, "train")["trained_on"])
    entry = stage(store, best, "final_export", lambda: {"files": export.export(trained_on, d / "adapter", given, d, r.export.types)})
    return Path(entry["files"][r.export.types[0]])


BYTES_PER_PARAM = {"f32": 4.0, "f16": 2.0, "q8_0": 1.07, "q4_k_m": 0.6, "q4_1": 0.63, "q5_k_m": 0.7}


def planned_bytes(r: Recipe, n_params: int, done: set[int]) -> int:
    """Disk the remaining exports will take: every GGUF type (in adapter mode: an adapter, ≤ 2 % of
    the model, per iteration and the types once at the end), the F16 M_0, merged HF weights (float32)."""
    types = sum(BYTES_PER_PARAM.get(t, 2.0) for t in r.export.types)
    per_iter = (0.04 if adapter_mode(r, n_params) else types) + (4.0 if r.loop.train_from == "previous" else 0.0)
    todo = [t for t in range(1, r.loop.iterations + 1) if t not in done]
    base = 0.0 if 0 in done or r.model.serve_base == "original" else 2.0
    final = types if adapter_mode(r, n_params) and todo else 0.0
    return int(1.1 * n_params * (base + per_iter * len(todo) + final))


def dequantise_bytes(r: Recipe, given: Path, n_params: int, done: set[int]) -> int:
    """Disk the one-time dequantisation of a GGUF-only model writes into the model cache (float32
    HF weights, 4 bytes per parameter, +10 %; a split GGUF's shards joined into one file first, for
    transformers' reader) when M_0 is still to be prepared and not cached yet."""
    if r.model.hf or 0 in done or (models.dequantised_dir(given) / "config.json").is_file():
        return 0
    shards = models.gguf_shards(given)
    joined = sum(p.stat().st_size for p in shards) if len(shards) > 1 else 0
    return int(1.1 * 4.0 * n_params) + joined


def generation_gguf(r: Recipe) -> Path:
    """model.gguf, or with model.converter the GGUF llama.cpp's converter makes from model.hf."""
    if not r.model.converter:
        return models.resolve_gguf(r.model.gguf)
    _check_converter_inputs(r)
    return models.converted_gguf(models.user_hf(r.model.hf), r.model.converter)


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
    from . import archs

    if r.model.hf:
        archs.for_hf(models.user_hf(r.model.hf))
    if not r.model.converter:
        models.check_arch(models.resolve_gguf(r.model.gguf))


def check_recipe(r: Recipe) -> list[dict[str, str]]:
    """Every check of a run's recipe and inputs that writes nothing: the backends it names, the seed
    file, the model's architecture and files, the converter, the judge. `isheep recipe` and `isheep
    run` both call it, so they accept and refuse the same recipes (with the same line). Returns the
    seeds it read."""
    if r.model.backend == "openai":
        raise UserError("model.backend=openai sends work to a server that serves one fixed model, but the loop serves "
                        "a new model each iteration; use it with `isheep eval MODEL.gguf --server URL`")
    if r.export.mode == "adapter" and r.model.backend != "llama_cpp":
        raise UserError("export.mode=adapter serves GGUF LoRA adapters, which only llama.cpp applies: "
                        f"set export.mode=merged for model.backend={r.model.backend}")
    train.resolve_backend(r.train.backend, False, importlib.util.find_spec("unsloth") is not None)
    seeds = synth.load_seeds(r.synth.seeds)
    check_model(r)
    export.check_converter()
    if r.model.converter:
        _check_converter_inputs(r)
    else:
        given = models.resolve_gguf(r.model.gguf)
        info = models.gguf_info(given)
        if r.model.hf:
            models.check_same_model(info, given, models.user_hf(r.model.hf))
        else:
            models.check_dequantisable(given)
    if r.eval.judge not in ("base", "current"):
        models.gguf_info(models.resolve_gguf(r.eval.judge))
    return seeds


def preflight(r: Recipe) -> tuple[list[dict[str, str]], Path, dict[str, float]]:
    """Every input is checked before anything is written (check_recipe), then the GGUF generation
    starts from (made once by model.converter), what killed runs left behind, and the free disk.
    Returns the seeds, that GGUF and the run's memory plan."""
    seeds = check_recipe(r)
    given = generation_gguf(r)
    info = models.check_arch(given)
    if r.model.converter:
        models.check_same_model(info, given, models.user_hf(r.model.hf))
    manifest = Path(r.run_dir) / "manifest.json"
    done: set[int] = set()
    if manifest.is_file():
        with contextlib.suppress(ValueError, KeyError, AttributeError):
            its = json.loads(manifest.read_text(encoding="utf-8"))["iterations"]
            done = {int(t) for t, e in its.items() if (e.get("export") or e.get("base") or {}).get("status") == "done"}
    reclaim_before_run(Path(r.run_dir), models.cache_root())  # what killed runs left behind is free space again
    needs = [(Path(r.run_dir), planned_bytes(r, info.n_params, done), "the planned exports")]
    if dequantise := dequantise_bytes(r, given, info.n_params, done):
        needs.append((models.cache_root(), dequantise, "the one-time dequantisation into float32 HF weights"))
    check_free_disks(needs)
    return seeds, given, memory_plan(r, given, sum(n for _, n, _ in needs))


def memory_plan(r: Recipe, given: Path, disk_bytes: float) -> dict[str, float]:
    """The planner's figures for this recipe and model, from the GGUF header and the HF weights' files
    (a GGUF-only model: its float32 dequantisation in 1 GB shards) — nothing is loaded."""
    info = models.gguf_info(given)
    if r.model.hf:
        sizes = [f.stat().st_size for f in models.user_hf(r.model.hf).glob("*.safetensors")]
        hf_bytes, largest = sum(sizes), max(sizes, default=0)
    else:  # models.gguf_to_hf writes float32 in shards of DEQUANTISED_SHARD_BYTES
        hf_bytes = 4 * info.n_params
        largest = min(hf_bytes, models.DEQUANTISED_SHARD_BYTES)
    targets = (list(planner.TARGET_SHAPES)  # auto: every projection of the blocks, as the planner names them
               if train.auto_targets(r.train.target_modules) else train.planner_targets(list(r.train.target_modules)))
    gpu = planner.gpu_free_bytes() is not None
    backend = train.resolve_backend(r.train.backend, gpu, importlib.util.find_spec("unsloth") is not None)
    return planner.run_plan(
        planner.Shape.from_gguf(info), gguf_bytes=sum(p.stat().st_size for p in models.gguf_shards(given)),
        kv_bytes_per_cell=info.kv_bytes_per_cell, n_ctx=r.model.n_ctx, n_parallel=r.model.n_parallel,
        n_ctx_train=info.n_ctx_train, bits=4 if gpu and r.train.load_in_4bit else 16, r=r.train.lora_r, targets=targets,
        batch=r.train.batch_size, seq_len=r.train.max_seq_len, backend=backend,
        hf_bytes=hf_bytes, hf_largest_shard=largest, disk_bytes=disk_bytes)


def run(r: Recipe, force: bool = False) -> RunStore:
    """Run (or resume) every iteration of the recipe; returns the store with the final manifest.

    Each iteration starts from the best model so far (see `promote`), so a worse M_t costs one
    iteration, never the run; `final_model` is the best model.
    """
    seeds, given, plan = preflight(r)
    adapters = adapter_mode(r, models.gguf_info(given).n_params)
    store = RunStore(r.run_dir)
    store.open(dump_yaml(r), force=force)
    print(planner.describe_plan(plan), flush=True)  # stdout, with the progress: stderr is for errors
    try:
        store.set_run_info(memory_plan=plan)
        base_hf, base_served = base_model(store, r, given)
        models_by_t = {0: (base_served, base_hf)}
        best = 0
        for t in range(1, r.loop.iterations + 1):
            current, current_hf = models_by_t[best]
            train_hf = base_hf if r.loop.train_from == "base" else current_hf
            tuned = iteration(store, r, t, seeds, given, current, train_hf, base_served, adapters)
            models_by_t[t] = (tuned, store.iter_dir(t) / "merged")
            verdict = promote(store, r, t, best)
            best = verdict["best"]
            served = models_by_t[best][0]
            store.set_run_info(best={"iteration": best, "gguf": str(served.gguf), "adapters": [str(a) for a in served.adapters]})
            if verdict["worse"] and r.loop.stop_when_worse:
                store.set_run_info(stopped_early=f"iteration {t} scored worse than iteration {verdict['against']}")
                break
        final = final_export(store, r, best, given) if adapters and best > 0 else models_by_t[best][0].gguf
        store.set_run_info(final_model=str(final))
    finally:
        store.close()
    return store


def _count(rows: list[dict[str, Any]], key: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in rows:
        out[x[key]] = out.get(x[key], 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def histogram(xs: list[float], scale: int) -> dict[str, int]:
    """Counts of scores in unit bins "1-2", …, "(scale-1)-scale" (the last bin holds the top score too)."""
    counts = {f"{lo}-{lo + 1}": 0 for lo in range(1, scale)}
    for x in xs:
        lo = min(max(int(x), 1), scale - 1)
        counts[f"{lo}-{lo + 1}"] += 1
    return counts


def _stats(xs: list[float]) -> dict[str, Any]:
    if not xs:
        return {"score_mean": None}
    mean = sum(xs) / len(xs)
    sd = (sum((x - mean) ** 2 for x in xs) / len(xs)) ** 0.5
    return {"score_mean": round(mean, 4), "score_sd": round(sd, 4), "score_min": round(min(xs), 4), "score_max": round(max(xs), 4)}
