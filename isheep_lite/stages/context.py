"""What every stage is given (`Context`), what every stage returns (a `Summary`), and the rule that
makes a run resumable (`once`).

A stage's summary is what the manifest stores for it: its counts, the paths it made, and (added
by the store) its status and seconds. A stage that the manifest marks done is not run again; its
summary is read back instead, so a rerun of the same command redoes exactly the unfinished work.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, TypeVar

from isheep_lite import progress
from isheep_lite.config import Recipe
from isheep_lite.engines.serving import Engines, Served
from isheep_lite.rundir.store import RunStore


@dataclass(frozen=True, kw_only=True)
class Summary:
    """A done stage as the manifest records it. Subclasses name their stage and the files it writes
    into `iter_NN/` (`FILES`, relative names; the manifest's keys are the fields)."""

    STAGE: ClassVar[str] = ""
    FILES: ClassVar[tuple[str, ...]] = ()
    seconds: float = 0.0  # wall time of the stage, measured by the store

    @classmethod
    def from_entry(cls: type[S], entry: dict[str, Any]) -> S:
        """The summary of a manifest entry (keys the class does not declare, like `status`, are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in entry.items() if k in names})

    def to_entry(self) -> dict[str, Any]:
        """The fields the stage reports (`seconds` is the store's)."""
        out = dataclasses.asdict(self)
        out.pop("seconds")
        return out


S = TypeVar("S", bound=Summary)


@dataclass(frozen=True)
class Context:
    """One stage's view of the run: the recipe and the store, the inputs preflight checked, and the
    models of iteration `t`. The loop makes one per iteration; every field is known when it is made."""

    store: RunStore
    recipe: Recipe
    engines: Engines
    seeds: list[dict[str, str]]
    given: Path  # the GGUF the user gave (or model.converter made): tokenizer, chat template, arch keys
    adapters: bool  # M_t is served as base + GGUF LoRA adapters (export.mode adapter/auto)
    t: int  # the iteration (0: M_0)
    base: Served  # M_0 as served (before the base stage: as given)
    current: Served  # the best model so far: it writes (and by default grades) iteration t's data
    best: int  # the best iteration before t

    @property
    def train_hf(self) -> Path:
        """The weights LoRA trains on: M_0's (the base stage's), or with loop.train_from=previous the
        best model's merged ones."""
        if self.best and self.recipe.loop.train_from == "previous":
            return self.store.iter_dir(self.best) / "merged"
        entry = self.store.stage_entry(0, "base")
        if not entry or entry.get("status") != "done":
            raise RuntimeError("training needs M_0's weights: the base stage runs first")
        return Path(entry["hf"])

    @property
    def dir(self) -> Path:
        """`iter_NN/` of this iteration (made if missing)."""
        return self.store.iter_dir(self.t)

    def done(self, summary: type[S], t: int | None = None) -> S | None:
        """The summary of a done stage of iteration `t` (default: this one), else None."""
        entry = self.store.stage_entry(self.t if t is None else t, summary.STAGE)
        return summary.from_entry(entry) if entry and entry.get("status") == "done" else None


def once(ctx: Context, summary: type[S], work: Callable[[Context], S]) -> S:
    """`work(ctx)` unless the manifest says the stage is done; its summary either way."""
    if not ctx.store.is_done(ctx.t, summary.STAGE):
        progress.stage_started(ctx.t, summary.STAGE)
        with ctx.store.stage(ctx.t, summary.STAGE) as info:
            info.update(work(ctx).to_entry())
        progress.stage_done(ctx.t, summary.STAGE, ctx.store.manifest["iterations"][str(ctx.t)][summary.STAGE])
    out = ctx.done(summary)
    assert out is not None
    return out
