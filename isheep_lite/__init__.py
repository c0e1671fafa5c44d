"""isheep-lite: iterative self-alignment (I-SHEEP) of small LLMs on a CPU or one consumer GPU.

The Python API, for notebooks and scripts:

    from isheep_lite import Session, load, run, write_report
    r = load(None, ["synth.num_instructions=32"])  # the default recipe, overridden; or load("my.yaml")
    run(r)                                  # the whole loop, as `isheep run`
    with Session(r) as s:                   # or one stage at a time
        s.filter(1); s.records(1, "kept"); s.promote(1); s.finish()
    write_report(r.run_dir)                 # report.md and its plots, as `isheep report`

Heavy libraries (torch, transformers, trl, peft, llama_cpp, unsloth) are imported only inside the
functions that use them, so `import isheep_lite` and the CLI start fast.
"""

from pathlib import Path
from typing import TYPE_CHECKING, Any

from isheep_lite.config import Recipe
from isheep_lite.recipe import UserError, load

if TYPE_CHECKING:
    from isheep_lite.loop import Session
    from isheep_lite.rundir.store import RunStore


def run(recipe: Recipe, force: bool = False) -> "RunStore":
    """Run (or resume) the loop for a recipe, as `isheep run` does; see `isheep_lite.loop`."""
    from isheep_lite import loop

    return loop.run(recipe, force=force)


def data(recipe: Recipe, force: bool = False) -> "RunStore":
    """The generation half only, as `isheep data` does: a dataset, no training."""
    from isheep_lite import loop

    return loop.data(recipe, force=force)


def write_report(run_dir: "str | Path", out_dir: "str | Path | None" = None) -> "Path":
    """report.md and its plots for a run (default RUN_DIR/report/), as `isheep report` writes them."""
    from isheep_lite.rundir.report import write_report as write

    return write(Path(run_dir), Path(out_dir) if out_dir else None)


def __getattr__(name: str) -> Any:
    if name == "Session":  # imported on first use: the loop's modules are not needed to load a recipe
        from isheep_lite.loop import Session

        return Session
    raise AttributeError(f"module 'isheep_lite' has no attribute {name!r}")


__all__ = ["Recipe", "Session", "UserError", "data", "load", "run", "write_report"]
__version__ = "0.1.0"
