"""The I-SHEEP loop, top to bottom.

    M_0 ──► for t = 1..T:  instructions → responses → self-assessment → filter → LoRA SFT → GGUF → checks
                                                                               M_{t+1} = SFT(M_0 | M_t, D_t)

Each stage writes its records into `runs/<name>/iter_NN/` and marks itself done in the manifest
with its counts and seconds; a rerun of the same command skips what is done and resumes the rest.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator

from . import assess, evaluate, export, filters, models, synth, train
from .engine import Engine
from .recipe import Recipe, dump_yaml
from .store import JsonlWriter, RunStore, read_jsonl, write_jsonl


@contextlib.contextmanager
def progress_bar(desc: str, total: int) -> Iterator[Callable[[int], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=False) as p:
        task = p.add_task(desc, total=total)
        yield lambda n: p.advance(task, n)


def stage(store: RunStore, t: int, name: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run `work` unless the manifest says this stage is done; return its manifest entry."""
    if not store.is_done(t, name):
        with store.stage(t, name) as info:
            info.update(work())
    return store.stage_entry(t, name) or {}


def conversation(rec: dict[str, Any]) -> list[dict[str, str]]:
    return [{"role": "user", "content": synth.user_message(rec["instruction"], rec["input"])},
            {"role": "assistant", "content": rec["response"]}]


def base_model(store: RunStore, r: Recipe, given: Path) -> tuple[Path, Path]:
    """iter_00: M_0's HF weights, and the GGUF M_0 is served and evaluated from.

    By default M_0 is re-exported from its HF weights in the same format as every tuned model
    (F16), so M_0 and M_t are compared like for like — and because, for a 135M model, quantisation
    alone changes its answers (FACTS.md: the shipped Q4_1 answers "L'Étoile, …" where F16 says Paris).
    """
    d = store.iter_dir(0)

    def prepare() -> dict[str, Any]:
        hf_dir = models.resolve_hf(r.model.hf, given)  # the one-time dequantisation is timed here
        if r.model.serve_base == "original":
            return {"gguf": str(given), "hf": str(hf_dir)}
        paths = export.export(hf_dir, None, given, d, r.export.types[:1])
        return {"gguf": paths[r.export.types[0]], "hf": str(hf_dir)}

    entry = stage(store, 0, "base", prepare)
    gguf = Path(entry["gguf"])
    eval_stage(store, 0, gguf, r)
    return Path(entry["hf"]), gguf


def checks(gguf: Path, r: Recipe) -> dict[str, Any]:
    """Stop rate and instruction-following accuracy of one model, greedy, on held-out prompts."""
    out: dict[str, Any] = {}
    with Engine(gguf, r.model.n_ctx, r.model.n_threads, r.model.n_parallel) as engine:
        if r.eval.stop_prompts:
            with progress_bar("eval: stop rate", r.eval.stop_prompts) as bar:
                out.update(evaluate.stop_rate(engine, r.eval.stop_prompts, r.eval.max_tokens, bar))
        if r.eval.suite_prompts:
            with progress_bar("eval: instruction suite", r.eval.suite_prompts) as bar:
                out["ifeval"] = evaluate.instruction_following(engine, r.eval.suite_prompts, r.eval.suite_max_tokens, bar)
    return out


def eval_stage(store: RunStore, t: int, gguf: Path, r: Recipe) -> None:
    """M_t's checks as the manifest's `eval` stage, unless every check is switched off."""
    if r.eval.stop_prompts or r.eval.suite_prompts:
        stage(store, t, "eval", lambda: checks(gguf, r))


def iteration(store: RunStore, r: Recipe, t: int, seeds: list[dict], given: Path, base_hf: Path,
              current: Path, base_served: Path) -> Path:
    """One iteration with model M_{t-1} (GGUF `current`); returns M_t's GGUF."""
    d, seed = store.iter_dir(t), r.loop.seed
    s, f = r.synth, r.filter

    with Engine(current, r.model.n_ctx, r.model.n_threads, r.model.n_parallel) as engine:
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

        assessor = engine if r.assess.assessor == "current" else None

        def make_scores() -> dict[str, Any]:
            done = {x["id"]: x for x in read_jsonl(d / "scored.jsonl")}
            with contextlib.ExitStack() as stack:
                judge = assessor or stack.enter_context(Engine(base_served, r.model.n_ctx, r.model.n_threads, r.model.n_parallel))
                name = f"M_{t - 1}" if assessor else "M_0"
                out = stack.enter_context(JsonlWriter(d / "scored.jsonl"))
                bar = stack.enter_context(progress_bar(f"it{t} self-assessment", len(candidates)))
                rows = assess.assess(judge, candidates, r.assess, name, done, out.write, bar)
            scores = [x["score"] for x in rows]
            return {"scored": len(rows), "assessor": name, **_stats(scores)}

        stage(store, t, "assess", make_scores)
    scored = {x["id"]: x for x in read_jsonl(d / "scored.jsonl")}

    def make_selection() -> dict[str, Any]:
        kept, dropped = filters.select([scored[x["id"]] for x in candidates], r.assess.aspects, f)
        write_jsonl(d / "kept.jsonl", [{"id": x["id"], "messages": conversation(x), "score": x["score"]} for x in kept])
        write_jsonl(d / "rejected.jsonl", rejected + dropped)
        return {"kept": len(kept), "rejected": len(rejected) + len(dropped), "kept_ratio": round(len(kept) / max(1, len(responses)), 4),
                "rejected_by_reason": _count(rejected + dropped, "reason")}

    stage(store, t, "filter", make_selection)

    def make_training() -> dict[str, Any]:
        iters = range(1, t + 1) if r.loop.data == "cumulative" else [t]
        data = [x["messages"] for i in iters for x in read_jsonl(store.iter_dir(i) / "kept.jsonl")]
        return train.train(data, hf_for(t), given, d, r.train, seed + t)

    def hf_for(i: int) -> Path:
        return base_hf if r.loop.train_from == "base" or i == 1 else store.iter_dir(i - 1) / "merged"

    stage(store, t, "train", make_training)

    def make_export() -> dict[str, Any]:
        paths = export.export(hf_for(t), d / "adapter", given, d, r.export.types)
        if r.loop.train_from == "previous":
            export.save_merged_hf(hf_for(t), d / "adapter", d / "merged")
        return {"files": paths}

    tuned = Path(stage(store, t, "export", make_export)["files"][r.export.types[0]])
    eval_stage(store, t, tuned, r)
    return tuned


def run(r: Recipe, force: bool = False) -> RunStore:
    """Run (or resume) every iteration of the recipe; returns the store with the final manifest."""
    seeds = synth.load_seeds(r.synth.seeds)  # every input is checked before anything is written
    given = models.resolve_gguf(r.model.gguf)
    models.gguf_info(given)
    store = RunStore(r.run_dir)
    store.open(dump_yaml(r), force=force)
    try:
        base_hf, base_served = base_model(store, r, given)
        current = base_served
        for t in range(1, r.loop.iterations + 1):
            current = iteration(store, r, t, seeds, given, base_hf, current, base_served)
        store.set_run_info(final_model=str(current))
    finally:
        store.close()
    return store


def _count(rows: list[dict[str, Any]], key: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in rows:
        out[x[key]] = out.get(x[key], 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _stats(xs: list[float]) -> dict[str, Any]:
    if not xs:
        return {"score_mean": None}
    mean = sum(xs) / len(xs)
    sd = (sum((x - mean) ** 2 for x in xs) / len(xs)) ** 0.5
    return {"score_mean": round(mean, 4), "score_sd": round(sd, 4), "score_min": round(min(xs), 4), "score_max": round(max(xs), 4)}
