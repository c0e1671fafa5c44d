"""The I-SHEEP loop, top to bottom.

    M_0 ──► for t = 1..T:  instructions → responses → self-assessment → filter → LoRA SFT → GGUF → eval → promote
                            (written and graded by the best model so far; M_t = SFT(M_0 | M_best, D_t))

Each stage (stages/*.py) writes its records into `runs/<name>/iter_NN/` and marks itself done in
the manifest with its summary; a rerun of the same command skips what is done and resumes the rest.
`Session` opens a run for one stage at a time (notebooks); `run` is that session driven to the end.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from . import card, models, planner
from .preflight import adapter_mode, preflight
from .recipe import Recipe, UserError, dump_yaml
from .serving import Engines, Served
from .stages import AssessSummary, BaseSummary, EvalSummary, ExportSummary, FilterSummary, InstructionsSummary
from .stages import PromoteSummary, ResponsesSummary, TrainSummary
from .stages import assess, base, evaluation, export, final_export, instructions, promote, responses, selection, train
from .stages.context import Context
from .store import RunStore, read_jsonl


def run(r: Recipe, force: bool = False) -> RunStore:
    """Run (or resume) every iteration of the recipe; returns the store with the final manifest.

    Each iteration starts from the best model so far (stages/promote.py), so a worse M_t costs one
    iteration, never the run; `final_model` is the best model.
    """
    with Session(r, force=force) as s:
        s.evaluate(0)
        for t in range(1, r.loop.iterations + 1):
            if s.promote(t).worse and r.loop.stop_when_worse:
                break
        s.finish()
    return s.store


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


class Session:
    """A run opened for stage-by-stage calls, for notebooks that look at the data between stages:

        with Session(load(None, ["synth.num_instructions=32"])) as s:
            s.select(1)                  # iteration 1's instructions, answers, grades and selection
            kept = s.records(1, "kept")  # the pairs training will see
            s.promote(1)                 # train, export, evaluate and decide
            s.finish()                   # the final model and its card

    Every stage method runs the stages it needs first (iteration t needs iteration t − 1 promoted:
    the best model so far writes its data), and each stage runs once: what the manifest marks done
    is read back, so calls in any order, repeated calls and a later `isheep run` of the same recipe
    all agree. Each returns the stage's summary, as the manifest records it.
    """

    def __init__(self, r: Recipe, force: bool = False) -> None:
        self.recipe, self.force = r, force
        self.store = RunStore(r.run_dir)
        self._served: dict[int, Served] = {}
        self._weights: dict[int, Path] = {}
        self._verdicts: dict[int, PromoteSummary] = {}
        self._opened: Context | None = None  # set by __enter__

    def __enter__(self) -> "Session":
        r = self.recipe
        seeds, given, plan = preflight(r)
        self.store.open(dump_yaml(r), force=self.force)
        try:
            print(planner.describe_plan(plan), flush=True)  # stdout, with the progress: stderr is for errors
            self.store.set_run_info(memory_plan=plan)
            self._engines = Engines(r).__enter__()
        except BaseException:
            self.store.close()
            raise
        self._opened = Context(self.store, r, self._engines, seeds, given, adapter_mode(r, models.gguf_info(given).n_params))
        return self

    def __exit__(self, *exc: object) -> None:
        self._opened = None
        try:
            self._engines.__exit__(*exc)
        finally:
            self.store.close()

    @property
    def _root(self) -> Context:
        if self._opened is None:
            raise UserError("a Session runs stages only while open: `with Session(recipe) as s: ...`")
        return self._opened

    # ---- M_0 ----

    def base(self) -> BaseSummary:
        """M_0: the given model made servable and its HF weights (iter_00/)."""
        m0 = base.run(self._root)
        self._served[0], self._weights[0] = Served(Path(m0.gguf)), Path(m0.hf)
        return m0

    # ---- one iteration, stage by stage ----

    def instructions(self, t: int) -> InstructionsSummary:
        return instructions.run(self.context(t))

    def responses(self, t: int) -> ResponsesSummary:
        self.instructions(t)
        return responses.run(self.context(t))

    def assess(self, t: int) -> AssessSummary:
        self.responses(t)
        return assess.run(self.context(t))

    def select(self, t: int) -> FilterSummary:
        self.assess(t)
        return selection.run(self.context(t))

    def train(self, t: int) -> TrainSummary:
        self.select(t)
        return train.run(self.context(t))

    def export(self, t: int) -> ExportSummary:
        self.train(t)
        return export.run(self.context(t))

    def evaluate(self, t: int) -> EvalSummary:
        """M_t on the evaluation sets (t = 0: the base model)."""
        ctx = self.context(t)
        return evaluation.run(replace(ctx, model=self.model(t)))

    def promote(self, t: int) -> PromoteSummary:
        """Is M_t the new best model? (the whole of iteration t first)."""
        if t not in self._verdicts:
            tuned = self.model(t)
            ctx = self.context(t)
            self.evaluate(ctx.best)
            v = self._verdicts[t] = promote.run(replace(ctx, model=tuned))
            self.store.set_run_info(best={"iteration": v.best, **self.model(v.best).to_dict()})
            if v.worse and self.recipe.loop.stop_when_worse:
                self.store.set_run_info(stopped_early=f"iteration {t} scored worse than iteration {v.against}")
        return self._verdicts[t]

    def finish(self) -> Path:
        """The best model of the iterations promoted so far as the run's final model (written whole
        once in adapter mode), and the model card; returns the final GGUF."""
        best = self._verdicts[max(self._verdicts)].best if self._verdicts else 0
        final = self.model(best).gguf
        if self._root.adapters and best > 0:
            files = final_export.run(self.context(best)).files  # iteration `best`'s context: its t is the best
            final = Path(files[self.recipe.export.types[0]])
        self.store.set_run_info(final_model=str(final))
        card.write(self.store.root)
        return final

    # ---- what the stages see ----

    def model(self, t: int) -> Served:
        """M_t as it is served (iteration t run whole first)."""
        if t not in self._served:
            if t == 0:
                self.base()
            else:
                ctx = self.context(t)
                self._served[t], self._weights[t] = iteration(ctx), ctx.dir / "merged"
        return self._served[t]

    def context(self, t: int) -> Context:
        """Iteration t's context: the best model before it writes and grades its data, and LoRA
        trains on M_0's weights or the best model's (loop.train_from)."""
        r = self.recipe
        if t == 0:
            self.model(0)
            return replace(self._root, base=self._served[0], base_hf=self._weights[0])
        if not 1 <= t <= r.loop.iterations:
            raise UserError(f"iteration {t}: this recipe runs iterations 1 to {r.loop.iterations} (loop.iterations)")
        best = self.promote(t - 1).best if t > 1 else 0  # promotes every earlier iteration, in order
        stopped = [u for u, v in self._verdicts.items() if u < t and v.worse and r.loop.stop_when_worse]
        if stopped:
            raise UserError(f"iteration {t}: the run stopped after iteration {stopped[0]}, which scored worse (loop.stop_when_worse)")
        root = self.context(0)
        return replace(
            root,
            t=t,
            best=best,
            current=self.model(best),
            train_hf=self._weights[0] if r.loop.train_from == "base" else self._weights[best],
        )

    def records(self, t: int, name: str) -> list[dict[str, Any]]:
        """Iteration t's records `iter_NN/<name>.jsonl` (instructions, responses, scored, kept, rejected, …)."""
        path = self.store.root / f"iter_{t:02d}" / f"{name}.jsonl"  # looked at, not made
        if not path.is_file():
            raise UserError(f"{path}: no such records yet (run the stage that writes them first)")
        return read_jsonl(path)
