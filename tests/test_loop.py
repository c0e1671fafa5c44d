"""loop.py and stages/: the loop stays a short script, and every stage keeps one entry point with a typed summary."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import typing
from pathlib import Path

from isheep_lite import loop, stages
from isheep_lite.stages.context import Summary

PACKAGE = Path(loop.__file__).parent
STAGE_MODULES = sorted(p.stem for p in (PACKAGE / "stages").glob("*.py") if p.stem not in ("__init__", "context"))


def test_loop_run_is_short_and_defines_no_nested_functions() -> None:
    tree = ast.parse((PACKAGE / "loop.py").read_text(encoding="utf-8"))
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert functions["run"].end_lineno - functions["run"].lineno + 1 <= 60
    nested = [
        x.name for f in functions.values() for x in ast.walk(f) if isinstance(x, (ast.FunctionDef, ast.AsyncFunctionDef)) and x is not f
    ]
    assert not nested and not [x for x in ast.walk(tree) if isinstance(x, ast.Lambda)]


def test_every_stage_has_one_entry_point_returning_its_summary() -> None:
    assert len(STAGE_MODULES) == len(stages.SUMMARIES) == 10
    seen = set()
    for name in STAGE_MODULES:
        module = importlib.import_module(f"isheep_lite.stages.{name}")
        public = [n for n, f in inspect.getmembers(module, inspect.isfunction) if f.__module__ == module.__name__ and not n.startswith("_")]
        assert public == ["run"], (name, public)
        returns = typing.get_type_hints(module.run)["return"]
        summary = next(a for a in typing.get_args(returns) or (returns,) if a is not type(None))
        assert issubclass(summary, Summary) and dataclasses.is_dataclass(summary) and summary.STAGE, name
        assert stages.SUMMARIES[summary.STAGE] is summary
        seen.add(summary.STAGE)
    assert seen == set(stages.SUMMARIES)


def test_a_summary_round_trips_through_its_manifest_entry() -> None:
    s = stages.FilterSummary(kept=3, rejected=5, kept_ratio=0.375, rejected_by_reason={"truncated": 5}, seconds=1.5)
    entry = {"status": "done", "seconds": 1.5, **s.to_entry()}
    assert "seconds" not in s.to_entry() and stages.FilterSummary.from_entry(entry) == s
