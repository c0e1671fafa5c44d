"""Stage `export`: M_t as GGUF — merged into the trained-on weights and converted by llama.cpp's
converter (export.py), or, in adapter mode, a GGUF LoRA adapter applied to the served base."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from isheep_lite.engines.serving import Served
from isheep_lite.gguf import export as exporter
from isheep_lite.gguf import modelfile
from isheep_lite.stages.context import Context, Summary, once

ADAPTER_GGUF = "adapter-f16.gguf"


@dataclass(frozen=True, kw_only=True)
class ExportSummary(Summary):
    STAGE = "export"
    FILES = ("model-<type>.gguf", ADAPTER_GGUF, "merged/")
    files: dict[str, str]  # export type (or, in adapter mode, "adapter") → path


def run(ctx: Context) -> ExportSummary:
    return once(ctx, ExportSummary, _export)


def _export(ctx: Context) -> ExportSummary:
    r, d = ctx.recipe, ctx.dir
    ctx.engines.release()  # the merge's memory
    if ctx.adapters:
        config = json.loads((ctx.train_hf / "config.json").read_text(encoding="utf-8"))
        exporter.write_lora_gguf(d / "adapter", config, ctx.given, d / ADAPTER_GGUF)
        paths = {"adapter": str(d / ADAPTER_GGUF)}
    else:
        paths = exporter.export(ctx.train_hf, d / "adapter", ctx.given, d, r.export.types)
        modelfile.write_beside(paths, ctx.given, r)
    if r.loop.train_from == "previous":  # the next iteration may train on M_t's weights
        exporter.save_merged_hf(ctx.train_hf, d / "adapter", d / "merged")
    return ExportSummary(files=paths)


def model(ctx: Context) -> Served:
    """M_t as it is served (iteration t's export done): its merged GGUF, or the served base plus its
    chain of adapters — trained on M_0's weights: base + Δ_t; on the best model's merged weights:
    the best model's chain + Δ_t."""
    done = ctx.done(ExportSummary)
    if done is None:
        raise RuntimeError(f"iteration {ctx.t}: M_{ctx.t} is served once its export stage is done")
    if "adapter" in done.files:
        chain = ctx.current.adapters if ctx.recipe.loop.train_from == "previous" else ()
        return Served(ctx.base.gguf, (*chain, Path(done.files["adapter"])))
    return Served(Path(done.files[ctx.recipe.export.types[0]]))
