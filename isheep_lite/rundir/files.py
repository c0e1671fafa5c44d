"""Files never half-written: one atomic-write helper, free-disk checks before writing, and the
reclaim of the temporaries killed processes left."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterator

from isheep_lite.recipe import UserError


@contextlib.contextmanager
def atomic_path(path: Path, shared: bool = False, directory: bool = False) -> Iterator[Path]:
    """A temporary name beside `path` to write a file or a directory to: when the block ends without
    an error it replaces `path` in one step (a reader sees the old one or the new one, never half);
    otherwise it is removed. `shared`: a folder other processes write to too (the model cache): the
    name carries this process's id (`<name>.tmp<pid>`) and is held while written, so `clean` and the
    next run reclaim it only once its writer is gone. `directory`: the temporary is made as an empty
    directory to write into."""
    tmp = path.with_name(path.name + (f".tmp{os.getpid()}" if shared else ".tmp"))
    _remove(tmp)  # a leftover of a killed write
    if directory:
        tmp.mkdir(parents=True)
    elif shared:
        tmp.touch()  # something to hold
    try:
        with hold(tmp) if shared else contextlib.nullcontext():
            yield tmp
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            os.replace(tmp, path)
    finally:
        _remove(tmp)  # gone already unless the block failed


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def cached(out: Path, write: Callable[[Path], None]) -> Path:
    """`out` in a cache folder other processes share: made once by `write(tmp)` through `atomic_path`
    (a killed maker's leftover reclaimed first), then returned as it is."""
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    reclaim_temporaries(out.parent, recursive=False)  # a killed maker's `.tmp<pid>` (its pid gone)
    with atomic_path(out, shared=True) as tmp:
        write(tmp)
    return out


def atomic_write_text(path: Path, text: str) -> None:
    """`text` as the whole of `path`, written through `atomic_path` and synced to disk."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def replace_dir(src: Path, dst: Path) -> None:
    """Move a finished directory into place (a reader sees the old one or the new one, never half)."""
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
# a whole model's weights each time, and every rerun writes under a new name.
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
