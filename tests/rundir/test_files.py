"""What a killed run leaves half-written — `<name>.tmp<pid>` in the model cache, `*.tmp` in its run
directory — is reclaimed by the next run's preflight and by `isheep clean` once its writer is gone;
a live writer's temporary is kept. The disk check counts the one-time dequantisation."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from pathlib import Path

import pytest

from isheep_lite import preflight, recipe
from isheep_lite.gguf import header, rope, weights
from isheep_lite.recipe import UserError
from isheep_lite.rundir import files, store

REPO = Path(__file__).resolve().parents[2]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert not files.pid_alive(p.pid)
    return p.pid


def _tmp_dir(path: Path, size: int = 1000) -> Path:
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"\0" * size)
    return path


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    c = tmp_path / "cache"
    monkeypatch.setenv("ISHEEP_CACHE", str(c))
    return c


@pytest.fixture
def litter(cache: Path, tmp_path: Path) -> dict[str, Path]:
    """A killed run's leftovers, a live writer's temporaries, and files that are no temporaries."""
    dead = _dead_pid()
    run = tmp_path / "runs" / "x"
    (run / "iter_01").mkdir(parents=True)
    (run / "recipe.yaml").write_text("name: x\n")
    (run / "manifest.json").write_text('{"iterations": {}}')
    (run / "iter_01" / "keep.jsonl").write_text("{}\n")
    (run / "iter_01" / "model-f16.gguf.tmp").write_bytes(b"\0" * 300)
    (run / "manifest.json.tmp").write_text("{")
    (cache / "hf" / "done-model").mkdir(parents=True)
    (cache / "hf" / "done-model" / "config.json").write_text("{}")
    (cache / "hf" / "done-model" / "nested.tmp1").write_text("inside a finished entry: not looked at")
    (cache / "shared.tmp1").write_text("not in hf/ or gguf/: another program's, never touched")
    (cache / "gguf").mkdir()
    (cache / "gguf" / f"m-123.f16.gguf.tmp{dead}").write_bytes(b"\0" * 700)
    return {
        "stale_hf": _tmp_dir(cache / "hf" / f"SmolLM2-abc.tmp{dead}", 5000),
        "stale_gguf": cache / "gguf" / f"m-123.f16.gguf.tmp{dead}",
        "live_hf": _tmp_dir(cache / "hf" / f"Other-def.tmp{os.getpid()}"),
        "run": run,
    }


def _kept(litter: dict[str, Path], cache: Path) -> None:
    assert litter["live_hf"].is_dir(), "a live process's temporary is kept"
    assert (cache / "hf" / "done-model" / "nested.tmp1").exists() and (cache / "shared.tmp1").exists()
    assert (litter["run"] / "iter_01" / "keep.jsonl").exists() and (litter["run"] / "manifest.json").exists()


def test_next_runs_preflight_reclaims_what_a_killed_run_left(
    litter: dict[str, Path], cache: Path, tiny: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    r = recipe.load(None, [f"model.gguf={tiny['gguf']}", f"model.hf={tiny['hf']}", f"runs_dir={litter['run'].parent}", "name=x"])
    preflight.preflight(r)
    assert not litter["stale_hf"].exists() and not litter["stale_gguf"].exists()
    assert not list(litter["run"].rglob("*.tmp")), "the run directory's own half-written files are reclaimed"
    _kept(litter, cache)
    assert "reclaimed" in capsys.readouterr().err


def test_a_run_directory_in_use_keeps_its_temporaries(litter: dict[str, Path], cache: Path) -> None:
    s = store.RunStore(litter["run"])
    s._lock()
    try:
        assert files.reclaim_run_dir(litter["run"]) is None
        files.reclaim_before_run(litter["run"], cache)
        assert (litter["run"] / "iter_01" / "model-f16.gguf.tmp").exists()
    finally:
        s.close()
    assert not litter["stale_hf"].exists(), "the cache is reclaimed all the same"


def test_a_held_temporary_is_kept_even_if_its_pid_looks_dead(cache: Path) -> None:
    """A writer in another pid namespace (a container sharing the cache) holds an flock on it."""
    held = _tmp_dir(cache / "hf" / f"Held.tmp{_dead_pid()}")
    with files.hold(held):
        assert files.reclaim_cache(cache) == []
    assert [p for p, _ in files.reclaim_cache(cache)] == [held]


def _clean(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "isheep_lite", "clean", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )


def test_isheep_clean_reports_and_dry_run_removes_nothing(litter: dict[str, Path], cache: Path, tmp_path: Path) -> None:
    dry = _clean("--dry-run", cwd=tmp_path)  # default: ./runs
    assert dry.returncode == 0, dry.stderr
    assert f"would remove {litter['stale_hf']} (4.9 KiB)" in dry.stdout, dry.stdout
    assert "would reclaim 5.9 KiB (6001 bytes) in 4 temporaries; nothing removed" in dry.stdout, dry.stdout
    assert litter["stale_hf"].exists() and litter["stale_gguf"].exists()
    assert (litter["run"] / "iter_01" / "model-f16.gguf.tmp").exists()

    done = _clean(str(litter["run"]), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"removed {litter['stale_gguf']} (700 B)" in done.stdout, done.stdout
    assert f"removed {litter['run'] / 'manifest.json.tmp'} (1 B)" in done.stdout, done.stdout
    assert done.stdout.strip().splitlines()[-1] == "reclaimed 5.9 KiB (6001 bytes) in 4 temporaries"
    assert not litter["stale_hf"].exists() and not litter["stale_gguf"].exists()
    assert not list(litter["run"].rglob("*.tmp"))
    _kept(litter, cache)
    assert _clean(cwd=tmp_path).stdout.strip() == "nothing to clean"


def test_isheep_clean_refuses_a_path_that_is_no_run(tmp_path: Path, cache: Path) -> None:
    (tmp_path / "afile").write_text("x")
    p = _clean("afile", cwd=tmp_path)
    assert p.returncode == 2 and "not a run directory" in p.stderr and len(p.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_failed_dequantisation_leaves_no_temporary(tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "hf" / "tiny"
    stale = _tmp_dir(tmp_path / "hf" / f"other.tmp{_dead_pid()}")

    def fail(config: object, path: Path) -> None:
        raise UserError("cannot restore")

    monkeypatch.setattr(rope, "restore_config", fail)
    with pytest.raises(UserError):
        weights.gguf_to_hf(tiny["gguf"], out)
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == [], "its own and a killed run's temporary are gone"
    assert not stale.exists()


def test_disk_check_counts_the_one_time_dequantisation(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    r = recipe.load(None, [f"runs_dir={tmp_path}/runs"])
    given = header.resolve_gguf(r.model.gguf)
    n = header.gguf_info(given).n_params
    exports, dequantise = preflight.planned_bytes(r, n, "llama", set()), preflight.dequantise_bytes(r, given, n, set())
    assert 4 * n < dequantise < 5 * n
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**12, 0, exports + dequantise // 2))
    with pytest.raises(UserError, match=r"the planned exports and the one-time dequantisation into float32 HF weights need about"):
        preflight.preflight(r)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**12, 0, exports + dequantise + 2**20))
    preflight.preflight(r)
    assert not (tmp_path / "runs").exists(), "preflight writes nothing"
    # Once the cache holds the HF weights (or model.hf is given), nothing more is counted.
    cached = weights.dequantised_dir(given)
    cached.mkdir(parents=True)
    (cached / "config.json").write_text("{}")
    assert preflight.dequantise_bytes(r, given, n, set()) == 0
    assert preflight.dequantise_bytes(recipe.load(None, ["model.hf=x"]), given, n, set()) == 0
    assert preflight.dequantise_bytes(r, given, n, {0}) == 0
