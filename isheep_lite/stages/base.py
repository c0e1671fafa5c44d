"""Stage `base` (iter_00): M_0's HF weights, and the GGUF M_0 is served and evaluated from.

By default M_0 is re-exported from its HF weights in the same format as every tuned model (F16),
so M_0 and M_t are compared like for like — and because, for a 135M model, quantisation alone
changes its answers (SmolLM2-135M's shipped Q4_1 answers "L'Étoile, …" where F16 says Paris).
"""

from __future__ import annotations

from dataclasses import dataclass

from isheep_lite.gguf import export, modelfile, weights
from isheep_lite.stages.context import Context, Summary, once


@dataclass(frozen=True, kw_only=True)
class BaseSummary(Summary):
    STAGE = "base"
    FILES = ("model-f16.gguf",)  # not with model.serve_base=original
    gguf: str  # M_0 as served
    hf: str  # M_0's HF weights (the user's, or the GGUF dequantised into the model cache)


def run(ctx: Context) -> BaseSummary:
    return once(ctx, BaseSummary, _prepare)


def _prepare(ctx: Context) -> BaseSummary:
    r = ctx.recipe
    ctx.engines.release()  # the export's memory
    hf_dir = weights.resolve_hf(r.model.hf, ctx.given)  # the one-time dequantisation is timed here
    if r.model.serve_base == "original":
        return BaseSummary(gguf=str(ctx.given), hf=str(hf_dir))
    paths = export.export(hf_dir, None, ctx.given, ctx.dir, r.export.types[:1])
    modelfile.write_beside(paths, ctx.given, r)
    return BaseSummary(gguf=paths[r.export.types[0]], hf=str(hf_dir))
