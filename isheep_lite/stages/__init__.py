"""The stages of a run, one module each, in the order `loop.run` calls them:

    base (iter_00: M_0) → evaluation
    per iteration t:  instructions → responses → assess → selection → train → export → evaluation → promote
    at the end, adapter mode only: final_export

(the manifest names selection `filter` and evaluation `eval`.)

Each module has one entry point, `run(ctx) -> <Stage>Summary`: it does the stage unless the
manifest marks it done, and returns the summary the manifest holds (context.once). The summary
class names its stage (`STAGE`) and the files it writes into `iter_NN/` (`FILES`).
"""

from __future__ import annotations

from .assess import AssessSummary
from .base import BaseSummary
from .context import Context, Summary
from .evaluation import EvalSummary
from .export import ExportSummary
from .selection import FilterSummary
from .final_export import FinalExportSummary
from .instructions import InstructionsSummary
from .promote import PromoteSummary
from .responses import ResponsesSummary
from .train import TrainSummary

SUMMARIES: dict[str, type[Summary]] = {
    s.STAGE: s
    for s in (
        BaseSummary,
        InstructionsSummary,
        ResponsesSummary,
        AssessSummary,
        FilterSummary,
        TrainSummary,
        ExportSummary,
        EvalSummary,
        PromoteSummary,
        FinalExportSummary,
    )
}

__all__ = [
    "SUMMARIES",
    "Context",
    "Summary",
    "AssessSummary",
    "BaseSummary",
    "EvalSummary",
    "ExportSummary",
    "FilterSummary",
    "FinalExportSummary",
    "InstructionsSummary",
    "PromoteSummary",
    "ResponsesSummary",
    "TrainSummary",
]
