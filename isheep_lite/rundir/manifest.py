"""A run's manifest, read back typed: what report, benches, tests and preflight read of a run.

`manifest.json` maps iteration → stage → that stage's summary (stages/*.py) plus `status` and
`seconds`, and holds the run's `memory_plan`, `best` model, `final_model` and `stopped_early`.
Only stages marked done are returned: a stage that was running when the process died is absent.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, TypeVar

from isheep_lite.recipe import UserError
from isheep_lite.rundir.files import atomic_write_text
from isheep_lite.rundir.store import RunStore
from isheep_lite.stages import SUMMARIES, Summary

S = TypeVar("S", bound=Summary)


@dataclass(frozen=True)
class Best:
    iteration: int
    gguf: str
    adapters: tuple[str, ...] = ()


@dataclass(frozen=True)
class Manifest:
    root: Path
    data: dict[str, Any]

    @classmethod
    def read(cls, run_dir: str | Path) -> "Manifest":
        """The manifest of `run_dir`; a UserError in one line if there is none or it is not JSON."""
        path = Path(run_dir) / "manifest.json"
        if not path.is_file():
            raise UserError(f"{run_dir} is not a run directory (no manifest.json)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
        if not isinstance(data, dict) or not isinstance(data.get("iterations"), dict):
            raise UserError(f"{path}: not an isheep manifest (no 'iterations')")
        return cls(Path(run_dir), data)

    @classmethod
    def of(cls, store: RunStore) -> "Manifest":
        return cls(store.root, store.manifest)

    def iterations(self, with_base: bool = False) -> list[int]:
        """The iterations with any entry, in order (0, M_0's, only `with_base`)."""
        return sorted(t for t in map(int, self.data["iterations"]) if with_base or t > 0)

    def get(self, t: int, summary: type[S]) -> S | None:
        """The summary of stage `summary.STAGE` of iteration `t` if it is done, else None."""
        entry = self.data["iterations"].get(str(t), {}).get(summary.STAGE)
        return summary.from_entry(entry) if entry and entry.get("status") == "done" else None

    def seconds(self, t: int) -> dict[str, float]:
        """Seconds per done stage of iteration `t`, in the order they ran."""
        return {s: e.get("seconds", 0.0) for s, e in self.data["iterations"].get(str(t), {}).items() if e.get("status") == "done"}

    def done_exports(self) -> set[int]:
        """Iterations whose model is on disk (M_0 prepared, M_t exported)."""
        return {t for t in self.iterations(with_base=True) if self.get(t, SUMMARIES["base" if t == 0 else "export"])}

    @property
    def best(self) -> Best | None:
        b = self.data.get("best")
        return Best(int(b["iteration"]), b["gguf"], tuple(b.get("adapters", []))) if b else None

    @property
    def final_model(self) -> str | None:
        return self.data.get("final_model")

    @property
    def stopped_early(self) -> str | None:
        return self.data.get("stopped_early")

    @property
    def memory_plan(self) -> dict[str, float] | None:
        return self.data.get("memory_plan")


def fork(source: Path, dest: Path, stages: Iterable[str]) -> None:
    """A new run directory holding `source`'s M_0 (iter_00) and its iteration-1 records of `stages`
    (each stage's FILES), marked done in a fresh manifest, so a recipe that differs from the
    source's only after those stages resumes from there instead of generating the same records
    again (the lever sweep, the ablation tests). Paths inside the manifest are moved to `dest`."""
    stages = list(stages)
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(source / "iter_00", dest / "iter_00")
    (dest / "iter_01").mkdir(parents=True)
    for stage in stages:
        for name in SUMMARIES[stage].FILES:
            shutil.copy(source / "iter_01" / name, dest / "iter_01" / name)
    m = json.loads((source / "manifest.json").read_text().replace(str(source.resolve()), str(dest.resolve())))
    it1 = {k: m["iterations"]["1"][k] for k in stages}
    atomic_write_text(dest / "manifest.json", json.dumps({"iterations": {"0": m["iterations"]["0"], "1": it1}}, indent=2))
