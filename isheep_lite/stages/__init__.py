"""The stages of a run, one module each, and the table of one iteration that `loop` walks.

    base (iter_00: M_0) → eval
    per iteration t:  instructions → responses → assess → filter → train → export → eval → promote
    at the end, adapter mode only: final_export

A stage has one name: its module here, its manifest key (`<Name>Summary.STAGE`), its summary class,
its `Session` method. Each module has one entry point, `run(ctx) -> <Name>Summary`: it does the
stage unless the manifest marks it done, and returns the summary the manifest holds (context.once).
The summary class names the files it writes into `iter_NN/` (`FILES`).
"""

from __future__ import annotations

from isheep_lite.stages import assess, base, eval, export, filter, final_export, instructions, promote, responses, train
from isheep_lite.stages.assess import AssessSummary
from isheep_lite.stages.base import BaseSummary
from isheep_lite.stages.context import Context, Summary
from isheep_lite.stages.eval import EvalSummary
from isheep_lite.stages.export import ExportSummary
from isheep_lite.stages.filter import FilterSummary
from isheep_lite.stages.final_export import FinalExportSummary
from isheep_lite.stages.instructions import InstructionsSummary
from isheep_lite.stages.promote import PromoteSummary
from isheep_lite.stages.responses import ResponsesSummary
from isheep_lite.stages.train import TrainSummary

ITERATION = (instructions, responses, assess, filter, train, export, eval, promote)  # one iteration, in order
DATA = ITERATION[: ITERATION.index(filter) + 1]  # what `isheep data` runs: the data, no training

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
MODULES = {m.__name__.rsplit(".", 1)[1]: m for m in (base, *ITERATION, final_export)}  # stage name → module

__all__ = [
    "DATA",
    "ITERATION",
    "MODULES",
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
