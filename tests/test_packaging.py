"""The package as a user installs it: a wheel built from this checkout holds every module and data
file, and installed without `-e` into a fresh virtualenv it runs `isheep --help`, `isheep recipe`,
`isheep doctor` and imports every module; one supported Python range, stated once."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
from helpers import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _source_files() -> set[str]:
    """Every file of the package in this checkout: modules and data (no caches, no tests)."""
    package = ROOT / "isheep_lite"
    return {
        p.relative_to(ROOT).as_posix()
        for p in package.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    try:
        import setuptools

        isolated = int(setuptools.__version__.split(".")[0]) < 69  # the build backend pyproject asks for
    except ImportError:
        isolated = True
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)]
    subprocess.run(cmd + ([] if isolated else ["--no-build-isolation"]), check=True, timeout=600, capture_output=True)
    (found,) = out.glob("isheep_lite-*.whl")
    return found


def test_the_wheel_holds_every_module_and_data_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(_source_files() - names)
    assert not missing, f"left out of the wheel: {missing}"
    assert "isheep_lite/stages/__init__.py" in names and "isheep_lite/data/ifeval.jsonl" in names


@pytest.mark.slow
def test_the_wheel_installed_without_editable_runs_every_command(wheel: Path, tmp_path: Path) -> None:
    """A fresh venv gets the wheel alone (`--no-deps`); the dependencies come from this environment's
    site-packages as a plain path entry, so its editable install of the checkout is never seen."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py, isheep = venv / "bin" / "python", venv / "bin" / "isheep"
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True, timeout=300)
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True)
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site.stdout.strip()) / "deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["ISHEEP_CACHE"] = str(tmp_path / "cache")

    def run(*cmd: str | Path) -> str:
        p = subprocess.run([str(c) for c in cmd], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, f"{cmd}: exit {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
        return p.stdout

    where = run(py, "-c", "import isheep_lite; print(isheep_lite.__file__)")
    assert where.strip().startswith(str(venv)), f"imported from {where.strip()}, not from the wheel"
    imported = run(
        py,
        "-c",
        "import importlib, pkgutil, isheep_lite\n"
        "names = [m.name for m in pkgutil.walk_packages(isheep_lite.__path__, 'isheep_lite.') if not m.name.endswith('__main__')]\n"
        "[importlib.import_module(n) for n in names]\n"
        "print(len(names))",
    )
    modules = {p for p in _source_files() if p.endswith(".py") and p not in ("isheep_lite/__init__.py", "isheep_lite/__main__.py")}
    assert int(imported) == len(modules)  # every module below the top package
    assert "Usage" in run(isheep, "--help")
    assert "synth:" in run(isheep, "recipe")
    assert "ready: `isheep run` can start" in run(isheep, "doctor")


def test_one_supported_python_range_stated_once() -> None:
    spec = PYPROJECT["project"]["requires-python"]
    low = tuple(int(x) for x in re.fullmatch(r">=(\d+)\.(\d+)", spec).groups())
    assert sys.version_info[:2] >= low, f"this interpreter is outside requires-python {spec}"
    assert "target-version" not in PYPROJECT["tool"]["ruff"], "ruff reads requires-python; a second statement can disagree"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    stated = set(re.findall(r"Python (3\.\d+)", readme))
    assert stated == {f"{low[0]}.{low[1]}"}, f"README names Python {stated}, pyproject {spec}"


def test_every_module_is_short_and_its_first_docstring_line_names_its_concern() -> None:
    import ast

    for path in sorted((ROOT / "isheep_lite").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        where = path.relative_to(ROOT)
        assert len(text.splitlines()) <= 400, f"{where}: {len(text.splitlines())} lines; split it by concern"
        if path.name != "__main__.py":
            doc = ast.get_docstring(ast.parse(text))
            assert doc and doc.splitlines()[0].strip(), f"{where}: no docstring naming what it is for"
