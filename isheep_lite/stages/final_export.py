"""Stage `final_export` (adapter mode only): the best model written whole — merged, in every
export.types — once, at the end of the run, instead of once per iteration."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from isheep_lite.gguf import export as exporter
from isheep_lite.gguf import modelfile
from isheep_lite.stages.context import Context, Summary, once
from isheep_lite.stages.train import TrainSummary


@dataclass(frozen=True, kw_only=True)
class FinalExportSummary(Summary):
    STAGE = "final_export"
    FILES = ("model-<type>.gguf",)
    files: dict[str, str]  # export type → path


def run(ctx: Context) -> FinalExportSummary:
    """Run with `ctx.t` the best iteration."""
    return once(ctx, FinalExportSummary, _export)


def _export(ctx: Context) -> FinalExportSummary:
    trained = ctx.done(TrainSummary)
    if trained is None:
        raise RuntimeError(f"iteration {ctx.t}: the final export needs its train stage done")
    ctx.engines.release()
    d = ctx.dir
    files = exporter.export(Path(trained.trained_on), d / "adapter", ctx.given, d, ctx.recipe.export.types)
    modelfile.write_beside(files, ctx.given, ctx.recipe)
    return FinalExportSummary(files=files)
