"""loop.py and stages/: one name per stage, one table the loop walks, one entry point per stage with a
typed summary."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import sys
import typing
from pathlib import Path

import pytest
from helpers import fake_run

from isheep_lite import loop, recipe, stages
from isheep_lite.stages.context import Summary

PACKAGE = Path(loop.__file__).parent
STAGE_FILES = sorted(p.stem for p in (PACKAGE / "stages").glob("*.py") if p.stem not in ("__init__", "context"))


def _summary_of(module: object) -> type[Summary]:
    returns = typing.get_type_hints(module.run)["return"]
    return next(a for a in typing.get_args(returns) or (returns,) if a is not type(None))


def test_a_stage_has_one_name_for_its_module_manifest_key_summary_and_session_method() -> None:
    assert sorted(stages.MODULES) == STAGE_FILES and len(stages.SUMMARIES) == len(STAGE_FILES) == 10
    for name, module in stages.MODULES.items():
        summary = _summary_of(module)
        assert summary.STAGE == name, (module.__name__, summary.STAGE)
        assert summary.__name__ == "".join(w.title() for w in name.split("_")) + "Summary", summary.__name__
        assert stages.SUMMARIES[name] is summary and dataclasses.is_dataclass(summary)
        if name != "final_export":  # written by Session.finish
            assert callable(getattr(loop.Session, name)), f"Session has no method {name}"


def test_every_stage_has_one_entry_point_returning_its_summary() -> None:
    for name, module in stages.MODULES.items():
        public = [n for n, f in inspect.getmembers(module, inspect.isfunction) if f.__module__ == module.__name__ and not n.startswith("_")]
        # the export stage also says how the model it made is served (what eval and the next iteration use)
        assert public == (["model", "run"] if name == "export" else ["run"]), (name, public)
        assert issubclass(_summary_of(module), Summary)


def test_the_iteration_is_one_table_and_isheep_data_is_its_head() -> None:
    names = [m.__name__.rsplit(".", 1)[1] for m in stages.ITERATION]
    assert names == ["instructions", "responses", "assess", "filter", "train", "export", "eval", "promote"]
    assert stages.DATA == stages.ITERATION[:4]
    # the loop names no stage order of its own: it walks the table
    tree = ast.parse((PACKAGE / "loop.py").read_text(encoding="utf-8"))
    runs = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "run" and isinstance(n.value, ast.Attribute)]
    assert {n.value.attr for n in runs} <= {"base", "eval", "final_export"}, "a stage run outside the table walk"


def test_one_iteration_enters_the_loop_once(tmp_path: Path, tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Following iteration 2 from Session.promote: the table is walked once, never recursively."""
    store, _ = fake_run(tmp_path, tiny, monkeypatch)
    r = recipe.load(store.root / "recipe.yaml")
    depth, deepest, walks = [0], [0], [0]

    def profile(frame: typing.Any, event: str, arg: typing.Any) -> None:
        if frame.f_code.co_filename != loop.__file__:
            return
        if event == "call":
            depth[0] += 1
            deepest[0] = max(deepest[0], depth[0])
            walks[0] += frame.f_code.co_name == "walk"
        elif event == "return":
            depth[0] -= 1

    with loop.Session(r) as s:
        sys.setprofile(profile)
        try:
            verdict = s.promote(2)
        finally:
            sys.setprofile(None)
    assert verdict.worse and verdict.best == 1
    assert walks[0] == 1 and deepest[0] <= 3, (walks, deepest)  # promote → walk → a helper of the walk


def test_a_summary_round_trips_through_its_manifest_entry() -> None:
    s = stages.FilterSummary(kept=3, rejected=5, kept_ratio=0.375, rejected_by_reason={"truncated": 5}, seconds=1.5)
    entry = {"status": "done", "seconds": 1.5, **s.to_entry()}
    assert "seconds" not in s.to_entry() and stages.FilterSummary.from_entry(entry) == s
