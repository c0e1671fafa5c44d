"""Fixtures of the end-to-end runs: one real run on the embedded model that the others start from."""

from __future__ import annotations

from pathlib import Path

import pytest
from pools import POOL, SMALL, THRESHOLDS

from isheep_lite import recipe
from isheep_lite.loop import run


@pytest.fixture(scope="session")
def pool(tmp_path_factory: pytest.TempPathFactory, smol_hf: Path) -> Path:
    """The lowest threshold recipe's run (one iteration, SMALL counts on a POOL-sized pool). Every
    other ablation, and the lever run, starts from a copy of the stages it shares with it
    (manifest.fork: M_0, and the instructions, answers and grades where its recipe makes the same)
    and runs the stages it changes itself."""
    runs = tmp_path_factory.mktemp("pool")
    r = recipe.load(THRESHOLDS[0], [f"runs_dir={runs}", *SMALL, *POOL])
    run(r)
    return runs / r.name
