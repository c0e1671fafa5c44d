"""The I-SHEEP loop, top to bottom.

    M_0 ──► for t = 1..T:  instructions → responses → self-assessment → filter → LoRA SFT → GGUF → eval → promote
                            (written and graded by the best model so far; M_t = SFT(M_0 | M_best, D_t))

Each stage (stages/*.py) writes its records into `runs/<name>/iter_NN/` and marks itself done in
the manifest with its summary; a rerun of the same command skips what is done and resumes the rest.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from . import card, models, planner
from .preflight import adapter_mode, preflight
from .recipe import Recipe, dump_yaml
from .serving import Engines, Served
from .stages import assess, base, evaluation, export, final_export, instructions, promote, responses, selection, train
from .stages.context import Context
from .store import RunStore


def run(r: Recipe, force: bool = False) -> RunStore:
    """Run (or resume) every iteration of the recipe; returns the store with the final manifest.

    Each iteration starts from the best model so far (stages/promote.py), so a worse M_t costs one
    iteration, never the run; `final_model` is the best model.
    """
    seeds, given, plan = preflight(r)
    store = RunStore(r.run_dir)
    store.open(dump_yaml(r), force=force)
    print(planner.describe_plan(plan), flush=True)  # stdout, with the progress: stderr is for errors
    try:
        store.set_run_info(memory_plan=plan)
        with Engines(r) as engines:
            ctx = Context(store, r, engines, seeds, given, adapter_mode(r, models.gguf_info(given).n_params))
            m0 = base.run(ctx)
            ctx = replace(ctx, base=Served(Path(m0.gguf)), base_hf=Path(m0.hf))
            evaluation.run(replace(ctx, model=ctx.base))
            served, weights, best = {0: ctx.base}, {0: ctx.base_hf}, 0
            for t in range(1, r.loop.iterations + 1):
                it = replace(
                    ctx, t=t, best=best, current=served[best], train_hf=weights[0] if r.loop.train_from == "base" else weights[best]
                )
                served[t], weights[t] = iteration(it), it.dir / "merged"
                verdict = promote.run(replace(it, model=served[t]))
                best = verdict.best
                store.set_run_info(best={"iteration": best, **served[best].to_dict()})
                if verdict.worse and r.loop.stop_when_worse:
                    store.set_run_info(stopped_early=f"iteration {t} scored worse than iteration {verdict.against}")
                    break
            final = served[best].gguf
            if ctx.adapters and best > 0:  # the best model written whole, once
                files = final_export.run(replace(ctx, t=best, best=best)).files
                final = Path(files[r.export.types[0]])
            store.set_run_info(final_model=str(final))
            card.write(store.root)
    finally:
        store.close()
    return store


def data(r: Recipe, force: bool = False) -> RunStore:
    """The generation half only (`isheep data`): the given model writes instructions, answers them,
    grades its answers, and selection writes the dataset (iter_01/data/) — no training, no export.
    For people who want synthetic data from a model they will not tune here."""
    seeds, given, _ = preflight(r)
    store = RunStore(r.run_dir)
    store.open(dump_yaml(r), force=force)
    try:
        with Engines(r) as engines:
            m0 = Served(given)
            ctx = Context(store, r, engines, seeds, given, adapters=False, t=1, base=m0, current=m0)
            for stage in (instructions, responses, assess, selection):
                stage.run(ctx)
    finally:
        store.close()
    return store


def iteration(ctx: Context) -> Served:
    """One iteration: `ctx.current` writes, answers and grades the data, LoRA is trained on
    `ctx.train_hf`, M_t is exported and evaluated; returns M_t as it is served."""
    instructions.run(ctx)
    responses.run(ctx)
    assess.run(ctx)
    selection.run(ctx)
    train.run(ctx)
    tuned = export.run(ctx).served(ctx)
    evaluation.run(replace(ctx, model=tuned))
    return tuned
