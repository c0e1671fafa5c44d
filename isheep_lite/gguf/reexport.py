"""`isheep export RUN_DIR --quant Q4_K_M …`: more quantisations of a finished run's model, afterwards.

Why a command of its own: a run exports what its recipe asked for (`export.types`, F16 by
default); which quantisation suits a machine is often decided later. Each one is made from the
iteration's F16/F32/BF16 master by llama.cpp's quantiser, atomically, with its Modelfile beside it.
"""

from __future__ import annotations

from pathlib import Path

from isheep_lite import recipe as rc
from isheep_lite.gguf import export, header, modelfile
from isheep_lite.recipe import UserError
from isheep_lite.rundir.manifest import Manifest
from isheep_lite.stages import BaseSummary, ExportSummary
from isheep_lite.stages.final_export import FinalExportSummary


def master_of(m: Manifest, t: int) -> Path:
    """The F16/F32/BF16 GGUF of iteration `t`'s model, or a one-line refusal saying why there is none."""
    if t == 0:
        base = m.get(0, BaseSummary)
        if base is None or Path(base.gguf).resolve().parent != (m.root / "iter_00").resolve():
            raise UserError("M_0 is the GGUF you gave (model.serve_base: original): quantise it with llama.cpp's llama-quantize")
        files = {export.MASTER_TYPES[0]: base.gguf}
    else:
        ex = m.get(t, ExportSummary)
        if ex is None:
            raise UserError(f"iteration {t} of {m.root} has no finished export")
        files = ex.files
        if "adapter" in files:
            final = m.get(t, FinalExportSummary)
            if final is None:
                raise UserError(
                    f"iteration {t} was served as base + LoRA adapters; only the best iteration is merged (at the end of the run)"
                )
            files = final.files
    master = next((Path(p) for k, p in files.items() if k in export.MASTER_TYPES), None)
    if master is None or not master.is_file():
        raise UserError(f"iteration {t} has no F16/F32/BF16 GGUF to quantise from (found: {', '.join(files) or 'none'})")
    return master


def reexport(run_dir: Path, iteration: int | None, quants: list[str]) -> dict[str, str]:
    """Quantise iteration `iteration`'s model (default: the run's best) into each of `quants`."""
    wanted = [q.lower() for q in quants]
    unknown = [q for q in wanted if q not in export.QUANT_TYPES]
    if not wanted or unknown:
        raise UserError(f"--quant must be one of {', '.join(export.QUANT_TYPES)} (got {', '.join(unknown) or 'none'})")
    m = Manifest.read(run_dir)
    if iteration is None:
        if m.best is None:
            raise UserError(f"{run_dir} has no best model yet (no iteration finished): give --iteration")
        iteration = m.best.iteration
    master = master_of(m, iteration)
    recipe_path = Path(run_dir) / "recipe.yaml"
    r = rc.load(str(recipe_path) if recipe_path.is_file() else None)
    info = header.gguf_info(master)
    out = {}
    for q in wanted:
        dst = master.with_name(f"model-{q}.gguf")
        export.quantize(master, dst, q)
        modelfile.write(dst, info, r.synth.response_temperature, r.synth.response_top_p, r.model.n_ctx)
        out[q] = str(dst)
    return out
