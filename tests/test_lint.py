"""The code passes the project's linter and formatter (ruff, configured in pyproject.toml): unused
imports and names, undefined names, mutable default arguments, syntax errors and unformatted files
fail the fast tier."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["isheep_lite", "tests", "bench"]


def _ruff(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--no-cache", *PATHS], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_ruff_finds_nothing() -> None:
    p = _ruff("check")
    assert p.returncode == 0, p.stdout + p.stderr


def test_ruff_format_changes_nothing() -> None:
    p = _ruff("format", "--check")
    assert p.returncode == 0, "run `ruff format isheep_lite tests bench`\n" + p.stdout + p.stderr
