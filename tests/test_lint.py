"""The code passes the project's linter (ruff, rules in pyproject.toml): unused imports and names,
undefined names, mutable default arguments and syntax errors fail the fast tier."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing() -> None:
    p = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "isheep_lite", "tests", "bench"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
