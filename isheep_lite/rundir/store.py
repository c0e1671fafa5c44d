"""A run's directory: the manifest each stage is marked running and done in, and the lock one run holds.

Why this shape: a run on a laptop or Colab dies at arbitrary points. Records are appended one whole
JSONL line at a time (rundir.jsonl); the manifest is replaced atomically, so it is always the old or
the new version; a stage counts as done only once the manifest says so, so a rerun redoes exactly the
unfinished work.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

from isheep_lite.process import note_status
from isheep_lite.recipe import UserError
from isheep_lite.rundir.files import atomic_write_text

LOCK_GRACE_S = 2.0


class RunStore:
    """One run directory: `recipe.yaml`, `manifest.json`, `iter_NN/`."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.manifest_path = self.root / "manifest.json"
        self.manifest: dict[str, Any] = {"iterations": {}}
        self._lock_file: Any = None

    # ---- lifecycle -------------------------------------------------------------------------------
    def open(self, recipe_yaml: str, force: bool = False) -> None:
        """Create or reopen the run directory; refuse one made by a different recipe unless forced."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create run directory {self.root}: {e.strerror}") from None
        if not os.access(self.root, os.W_OK):
            raise UserError(f"run directory {self.root} is not writable")
        self._lock()
        recipe_path = self.root / "recipe.yaml"
        if recipe_path.exists() and recipe_path.read_text(encoding="utf-8") != recipe_yaml and not force:
            self.close()
            raise UserError(f"{self.root} was made by a different recipe; use another name, or --force to continue it with this one")
        atomic_write_text(recipe_path, recipe_yaml)
        if self.manifest_path.exists():
            self.manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))

    def _lock(self) -> None:
        """flock on the run directory itself: no lock file to leave behind, released when the process dies.

        Tried for LOCK_GRACE_S before refusing: `isheep run` works in a child process that is killed
        when its supervisor dies, and that child's exit (and its lock's release) can lag the
        supervisor's by a few milliseconds — a rerun right after `kill -9` must not be refused."""
        self._lock_file = os.open(self.root, os.O_RDONLY)
        deadline = time.monotonic() + LOCK_GRACE_S
        while True:
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
            os.close(self._lock_file)
            self._lock_file = None
            raise UserError(f"another isheep run is using {self.root}; wait for it or pick another name") from None

    def close(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            os.close(self._lock_file)
            self._lock_file = None

    # ---- manifest --------------------------------------------------------------------------------
    def save_manifest(self) -> None:
        atomic_write_text(self.manifest_path, json.dumps(self.manifest, indent=2, ensure_ascii=False))

    def iter_dir(self, t: int) -> Path:
        d = self.root / f"iter_{t:02d}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def stage_entry(self, t: int, stage: str) -> dict[str, Any] | None:
        return self.manifest["iterations"].get(str(t), {}).get(stage)

    def is_done(self, t: int, stage: str) -> bool:
        entry = self.stage_entry(t, stage)
        return bool(entry and entry.get("status") == "done")

    def record(self, t: int, stage: str, **info: Any) -> None:
        self.manifest["iterations"].setdefault(str(t), {})[stage] = info
        self.save_manifest()

    def set_run_info(self, **info: Any) -> None:
        self.manifest.update(info)
        self.save_manifest()

    @contextlib.contextmanager
    def stage(self, t: int, stage: str) -> Iterator[dict[str, Any]]:
        """Time a stage; the body fills `info` with counts; marked done only if the body returns."""
        info: dict[str, Any] = {}
        note_status(run_dir=str(self.root), iteration=t, stage=stage, after=None)
        start = time.perf_counter()
        yield info
        self.record(t, stage, status="done", seconds=round(time.perf_counter() - start, 2), **info)
        note_status(stage=None, after=stage)
