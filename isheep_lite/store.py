"""The run directory: whole-line JSONL, an atomically replaced manifest, a lock.

Why this shape: a run on a laptop or Colab dies at arbitrary points. Every record is one JSONL line
appended with flush+fsync, so a crash leaves at most one torn *last* line, which readers drop; the
manifest is written to a temporary file and renamed, so it is always the old or the new version;
a stage counts as done only once the manifest says so, so a rerun redoes exactly the unfinished work.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from .recipe import UserError


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All whole records of a JSONL file; a torn (unparseable) last line is ignored."""
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i >= len(lines) - 2:  # the last line (or last before a trailing newline) may be torn
                break
            raise
    return out


def truncate_torn_tail(path: Path) -> None:
    """Cut a file back to its last complete line, so appends continue on a clean boundary."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


class JsonlWriter:
    """Append records one whole line at a time (flush + fsync per `flush()` call)."""

    def __init__(self, path: Path):
        truncate_torn_tail(path)
        self.path = path
        self._f = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any], sync: bool = True) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        if sync:
            self.flush()

    def flush(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self.flush()
        self._f.close()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Write a whole file atomically (temp + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def replace_dir(src: Path, dst: Path) -> None:
    """Move a finished directory into place (a reader sees the old one or the new one, never half)."""
    import shutil

    shutil.rmtree(dst, ignore_errors=True)
    os.replace(src, dst)


def check_free_disk(path: Path, needed: int, what: str) -> None:
    """Refuse to start when the disk holding `path` has less than `needed` bytes free."""
    import shutil

    p = Path(path).resolve()
    while not p.exists():
        p = p.parent
    free = shutil.disk_usage(p).free
    if free < needed:
        raise UserError(f"{what} need about {needed / 2**30:.1f} GiB but {p} has {free / 2**30:.1f} GiB free")


# The records each early stage of an iteration writes (the stages before selection).
STAGE_FILES = {"instructions": ("completions", "instructions", "instructions_rejected"),
               "responses": ("responses",), "assess": ("scored",)}


def fork_run(source: Path, dest: Path, stages: Iterable[str]) -> None:
    """A new run directory holding `source`'s M_0 (iter_00) and its iteration-1 records of `stages`,
    marked done in a fresh manifest, so a recipe that differs from the source's only after those
    stages resumes from there instead of generating the same records again (the lever sweep, the
    threshold ablation tests). Paths inside the manifest are moved to `dest`."""
    import shutil

    stages = list(stages)
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(source / "iter_00", dest / "iter_00")
    (dest / "iter_01").mkdir(parents=True)
    for stage in stages:
        for name in STAGE_FILES[stage]:
            shutil.copy(source / "iter_01" / f"{name}.jsonl", dest / "iter_01" / f"{name}.jsonl")
    m = json.loads((source / "manifest.json").read_text().replace(str(source.resolve()), str(dest.resolve())))
    it1 = {k: m["iterations"]["1"][k] for k in stages}
    atomic_write_text(dest / "manifest.json", json.dumps({"iterations": {"0": m["iterations"]["0"], "1": it1}}, indent=2))


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
            raise UserError(
                f"{self.root} was made by a different recipe; use another name, or --force to continue it with this one"
            )
        atomic_write_text(recipe_path, recipe_yaml)
        if self.manifest_path.exists():
            self.manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))

    def _lock(self) -> None:
        """flock on the run directory itself: no lock file to leave behind, released when the process dies."""
        self._lock_file = os.open(self.root, os.O_RDONLY)
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
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
        start = time.perf_counter()
        yield info
        self.record(t, stage, status="done", seconds=round(time.perf_counter() - start, 2), **info)
