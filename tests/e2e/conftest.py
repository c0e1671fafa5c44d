"""Fixtures of the end-to-end runs: one real run on the embedded model that other runs start from."""

from __future__ import annotations

from pathlib import Path

import pytest
from pools import OTHERS, SMALL

from isheep_lite import recipe
from isheep_lite.loop import run


@pytest.fixture(scope="session")
def ablation_pool(tmp_path_factory: pytest.TempPathFactory, smol_hf: Path) -> Path:
    """The first non-threshold ablation's run (one iteration, SMALL counts). Each other ablation,
    and each lever run, starts from a copy of the stages it shares with it (manifest.fork) and runs
    the stages it changes itself."""
    runs = tmp_path_factory.mktemp("ablations")
    r = recipe.load(OTHERS[0], [f"runs_dir={runs}", *SMALL])
    run(r)
    return runs / r.name
