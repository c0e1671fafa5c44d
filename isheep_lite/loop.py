"""The I-SHEEP loop: M_0, then each iteration's stages in the order of one table.

    M_0 ──► base → eval
            for t = 1..T:  instructions → responses → assess → filter → train → export → eval → promote
            (written and graded by the best model so far; M_t = SFT(M_0 | M_best, D_t))
            at the end, in adapter mode: final_export

The table is `stages.ITERATION`. Each stage writes its records into `runs/<name>/iter_NN/` and marks
itself done in the manifest with its summary; a stage the manifest marks done returns that summary
without running, so walking the table again from the start is how a run resumes. `Session` opens a
run for stage-by-stage calls (notebooks); `run` is a session walked to the end.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

from isheep_lite import planner, stages
from isheep_lite.config import Recipe
from isheep_lite.engines.serving import Engines, Served
from isheep_lite.gguf import header, weights
from isheep_lite.preflight import adapter_mode, preflight
from isheep_lite.recipe import UserError, dump_yaml
from isheep_lite.rundir import card
from isheep_lite.rundir.jsonl import read_jsonl
from isheep_lite.rundir.store import RunStore
from isheep_lite.stages import PromoteSummary
from isheep_lite.stages.context import Context
from isheep_lite.training import lora


def run(r: Recipe, force: bool = False) -> RunStore:
    """Run (or resume) every iteration of the recipe; returns the store with the final manifest.

    Each iteration starts from the best model so far (stages/promote.py), so a worse M_t costs one
    iteration, never the run; `final_model` is the best model.
    """
    with Session(r, force=force) as s:
        s.eval(0)
        for t in range(1, r.loop.iterations + 1):
            if s.promote(t).worse and r.loop.stop_when_worse:
                break
        s.finish()
    return s.store


def data(r: Recipe, force: bool = False) -> RunStore:
    """The generation half only (`isheep data`): the given model writes instructions, answers them,
    grades its answers, and the filter stage writes the dataset (iter_01/data/) — no training, no
    export. For people who want synthetic data from a model they will not tune here."""
    seeds, given, _ = preflight(r)
    store = RunStore(r.run_dir)
    store.open(dump_yaml(r), force=force)
    try:
        with Engines(r) as engines:
            m0 = Served(given)
            ctx = Context(store, r, engines, seeds, given, adapters=False, t=1, base=m0, current=m0, best=0)
            for stage in stages.DATA:
                stage.run(ctx)
    finally:
        store.close()
    return store


class Session:
    """A run opened for stage-by-stage calls, for notebooks that look at the data between stages:

        with Session(load(None, ["synth.num_instructions=32"])) as s:
            s.filter(1)                  # iteration 1's instructions, answers, grades and filter
            kept = s.records(1, "kept")  # the pairs training will see
            s.promote(1)                 # train, export, evaluate and decide
            s.finish()                   # the final model and its card

    A method per stage, named as the stage; each walks the table up to that stage of iteration t —
    M_0 and every earlier iteration whole first, since the best model so far writes iteration t's
    data — and returns the stage's summary as the manifest records it. Stages run once: calls in any
    order, repeated calls and a later `isheep run` of the same recipe all agree.
    """

    def __init__(self, r: Recipe, force: bool = False) -> None:
        self.recipe, self.force = r, force
        self.store = RunStore(r.run_dir)
        self.best = 0  # the best iteration promoted so far
        self.models: dict[int, Served] = {}  # M_0 … M_t as served, as the last walk found them
        self._m0: Context | None = None  # set by __enter__: iteration 0's context

    def __enter__(self) -> "Session":
        r = self.recipe
        seeds, given, plan = preflight(r)
        self.store.open(dump_yaml(r), force=self.force)
        try:
            print(planner.describe_plan(plan), flush=True)  # stdout, with the progress: stderr is for errors
            if r.model.hf and (towers := lora.frozen_towers(weights.user_hf(r.model.hf))):
                print(f"{' and '.join(towers)} left as they are: LoRA trains the text model, the GGUFs are the text model", flush=True)
            self.store.set_run_info(memory_plan=plan)
            self._engines = Engines(r).__enter__()
        except BaseException:
            self.store.close()
            raise
        info = header.gguf_info(given)
        adapters = adapter_mode(r, info.n_params, info.arch)
        m0 = Served(given)
        self._m0 = Context(self.store, r, self._engines, seeds, given, adapters, t=0, base=m0, current=m0, best=0)
        return self

    def __exit__(self, *exc: object) -> None:
        self._m0 = None
        try:
            self._engines.__exit__(*exc)
        finally:
            self.store.close()

    # ---- the walk ----

    def walk(self, t: int, until: ModuleType) -> Any:
        """Iteration t's stages in table order, up to and including `until` (a module of
        `stages.ITERATION`), after M_0 and every earlier iteration; returns `until`'s summary."""
        r = self.recipe
        if not 1 <= t <= r.loop.iterations:
            raise UserError(f"iteration {t}: this recipe runs iterations 1 to {r.loop.iterations} (loop.iterations)")
        ctx = self._base_context()
        stages.eval.run(ctx)  # M_0's evaluation: what iteration 1 is compared with
        self.best = 0
        for u in range(1, t + 1):
            ctx = replace(ctx, t=u, current=self.models[self.best], best=self.best)
            for stage in stages.ITERATION:
                out = stage.run(ctx)
                if stage is stages.export:
                    self.models[u] = stages.export.model(ctx)
                if stage is stages.promote:
                    self._promoted(u, out)
                    if u < t and out.worse and r.loop.stop_when_worse:
                        raise UserError(f"iteration {t}: the run stopped after iteration {u}, which scored worse (loop.stop_when_worse)")
                if u == t and stage is until:
                    return out
        raise ValueError(f"{until.__name__} is not a stage of an iteration")

    def _base_context(self) -> Context:
        """Iteration 0's context, M_0 made servable first (the base stage)."""
        if self._m0 is None:
            raise UserError("a Session runs stages only while open: `with Session(recipe) as s: ...`")
        m0 = Served(Path(stages.base.run(self._m0).gguf))
        self.models[0] = m0
        return replace(self._m0, base=m0, current=m0)

    def _promoted(self, t: int, v: PromoteSummary) -> None:
        self.best = v.best
        self.store.set_run_info(best={"iteration": v.best, **self.models[v.best].to_dict()})
        if v.worse and self.recipe.loop.stop_when_worse:
            self.store.set_run_info(stopped_early=f"iteration {t} scored worse than iteration {v.against}")

    # ---- a method per stage: instructions … export are made from the table below the class ----

    def base(self) -> stages.BaseSummary:
        """M_0 made servable, with its HF weights (iter_00/)."""
        return stages.base.run(self._base_context())

    def eval(self, t: int) -> stages.EvalSummary | None:
        """M_t on the evaluation sets (t = 0: the base model)."""
        return stages.eval.run(self._base_context()) if t == 0 else self.walk(t, stages.eval)

    def promote(self, t: int) -> stages.PromoteSummary:
        """Is M_t the new best model? (the whole of iteration t first)."""
        return self.walk(t, stages.promote)

    def finish(self) -> Path:
        """The best model of the iterations promoted so far as the run's final model (written whole
        once in adapter mode), and the model card; returns the final GGUF."""
        ctx = self._base_context()
        best = self.best
        final = self.models[best].gguf
        if ctx.adapters and best > 0:
            files = stages.final_export.run(replace(ctx, t=best)).files
            final = Path(files[self.recipe.export.types[0]])
        self.store.set_run_info(final_model=str(final))
        card.write(self.store.root)
        return final

    def records(self, t: int, name: str) -> list[dict[str, Any]]:
        """Iteration t's records `iter_NN/<name>.jsonl` (instructions, responses, scored, kept, rejected, …)."""
        path = self.store.root / f"iter_{t:02d}" / f"{name}.jsonl"  # looked at, not made
        if not path.is_file():
            raise UserError(f"{path}: no such records yet (run the stage that writes them first)")
        return read_jsonl(path)


def _up_to(stage: ModuleType) -> Any:
    """The Session method named as `stage`: iteration t walked up to it; its summary."""
    name = stage.__name__.rsplit(".", 1)[1]

    def method(self: Session, t: int) -> Any:
        return self.walk(t, stage)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"Iteration t up to its `{name}` stage (M_0 and every earlier stage and iteration first); the stage's summary."
    return method


for _stage in stages.ITERATION[: stages.ITERATION.index(stages.eval)]:  # eval and promote have methods of their own
    setattr(Session, _stage.__name__.rsplit(".", 1)[1], _up_to(_stage))

__all__ = ["Session", "data", "run"]
