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
import re
import sys
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


def _existing(path: Path) -> Path:
    """`path`, or its nearest existing parent (the folder whose disk it will be written to)."""
    p = Path(path).resolve()
    while not p.exists():
        p = p.parent
    return p


def check_free_disk(path: Path, needed: int, what: str) -> None:
    """Refuse to start when the disk holding `path` has less than `needed` bytes free."""
    import shutil

    p = _existing(path)
    free = shutil.disk_usage(p).free
    if free < needed:
        raise UserError(f"{what} need about {needed / 2**30:.1f} GiB but {p} has {free / 2**30:.1f} GiB free")


def check_free_disks(needs: list[tuple[Path, int, str]]) -> None:
    """`check_free_disk` for each (path, bytes, what) alone, then for the needs that share a disk
    together: the run directory and the model cache are usually on one disk, but not always."""
    by_disk: dict[int, list[tuple[Path, int, str]]] = {}
    for path, needed, what in needs:
        check_free_disk(path, needed, what)
        by_disk.setdefault(_existing(path).stat().st_dev, []).append((path, needed, what))
    for group in by_disk.values():
        if len(group) > 1:
            check_free_disk(group[0][0], sum(n for _, n, _ in group), " and ".join(w for _, _, w in group))


# ---- temporaries of killed processes ------------------------------------------------------------
# Whatever is written under a temporary name and renamed (the atomic writes above, GGUF exports,
# the dequantised HF weights in the model cache) stays behind when its process is killed mid-way:
# 146 MB for the default model, ~28 GB for a 7B one, and every rerun writes under a new name.
# `<name>.tmp<pid>` names its writer; `<name>.tmp` (no pid) is only ever written inside a run
# directory, by the process holding that directory's lock.
TMP_PID = re.compile(r"\.tmp(\d+)$")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (one of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def hold(path: Path) -> Iterator[None]:
    """An flock on `path` (a file or directory) while a temporary is written: `reclaim_temporaries`
    keeps a held temporary even when its pid looks dead (a writer in another pid namespace — a
    container sharing the cache — has a pid this process cannot see)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _held(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases the probe's own lock


def _size(path: Path) -> int:
    """Bytes under `path` (symbolic links not followed)."""
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def stale_temporaries(root: Path, owned: bool = False, recursive: bool = True) -> list[Path]:
    """Temporaries under `root` that no live process is writing: `<name>.tmp<pid>` whose pid is gone
    and that nobody holds (`hold`); with `owned` — the caller holds the run directory's lock, so no
    other process writes there — every `<name>.tmp` and `<name>.tmp<pid>`."""
    found: list[Path] = []

    def visit(folder: Path) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:  # not there (yet), or unreadable: nothing of ours to reclaim
            return
        for e in entries:
            m = TMP_PID.search(e.name)
            if m:
                stale = owned or (not pid_alive(int(m.group(1))) and not _held(Path(e.path)))
            else:
                stale = owned and e.name.endswith(".tmp")
            if stale:
                found.append(Path(e.path))
            elif recursive and e.is_dir(follow_symlinks=False):
                visit(Path(e.path))

    visit(Path(root))
    return found


def reclaim_temporaries(root: Path, owned: bool = False, dry_run: bool = False, recursive: bool = True) -> list[tuple[Path, int]]:
    """Remove (unless `dry_run`) the stale temporaries under `root`; (path, bytes) of each."""
    import shutil

    out = []
    for p in stale_temporaries(root, owned, recursive):
        try:
            size = _size(p)
            if not dry_run:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        except FileNotFoundError:  # its writer finished or removed it meanwhile
            continue
        except OSError as e:
            print(f"warning: cannot remove {p}: {e.strerror}", file=sys.stderr)
            continue
        out.append((p, size))
    return out


# The model cache's folders that hold temporaries (models.dequantised_dir, models.converted_gguf):
# only their direct entries are looked at, so a cache pointed at a shared folder (ISHEEP_CACHE=~/.cache)
# never loses another program's files.
CACHE_DIRS = ("hf", "gguf")


def reclaim_cache(cache: Path, dry_run: bool = False) -> list[tuple[Path, int]]:
    """The model cache's stale temporaries (a run killed while dequantising or converting)."""
    return [x for sub in CACHE_DIRS for x in reclaim_temporaries(Path(cache) / sub, dry_run=dry_run, recursive=False)]


def is_run_dir(path: Path) -> bool:
    return (path / "recipe.yaml").is_file() or (path / "manifest.json").is_file()


def reclaim_run_dir(root: Path, dry_run: bool = False) -> list[tuple[Path, int]] | None:
    """The run directory's temporaries, reclaimed under its lock; None when a run is using it."""
    if not Path(root).is_dir():
        return []
    fd = os.open(root, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        return reclaim_temporaries(Path(root), owned=True, dry_run=dry_run)
    finally:
        os.close(fd)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def reclaim_before_run(run_dir: Path, cache: Path) -> None:
    """At the start of a run: free what killed runs left in the model cache and in this run
    directory (unless another run holds it: that one is refused when the store opens), so the
    disk check counts it as free; says so in one line when anything was removed."""
    removed = reclaim_cache(cache) + (reclaim_run_dir(run_dir) or [])
    if removed:
        total = sum(n for _, n in removed)
        print(
            f"reclaimed {human_bytes(total)} of temporaries left by killed runs "
            f"({', '.join(p.name for p, _ in removed[:3])}{', …' if len(removed) > 3 else ''})",
            file=sys.stderr,
        )


# ---- what the child of a supervised `isheep run`/`isheep eval` is doing -------------------------
# cli.py runs the work in a child process; if the child dies by a signal (llama.cpp segfaulting on
# a quantised GGUF), the parent reads this file to say which stage and which model it died in.
STATUS_ENV = "ISHEEP_STATUS"
_status: dict[str, Any] = {}


def note_status(**info: Any) -> None:
    """Merge `info` into the status file named by $ISHEEP_STATUS (atomically); no-op without it."""
    path = os.environ.get(STATUS_ENV)
    if not path:
        return
    _status.update(info)
    tmp = path + ".tmp"
    with contextlib.suppress(OSError):  # a report aid only: never fail the run over it
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(_status, f)
        os.replace(tmp, path)


def read_status(path: str | Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


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
