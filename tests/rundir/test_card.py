"""The model card written when a run ends: base model and its licence, recipe, per-model checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import fake_run

from isheep_lite.rundir import card


def test_a_finished_run_has_a_model_card_with_every_evaluated_model(
    tmp_path: Path, tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = fake_run(tmp_path, tiny, monkeypatch, "loop.train_from=previous")
    text = (store.root / card.CARD).read_text()
    front = yaml.safe_load(text.split("---")[1])
    general = card.gguf_general(tiny["gguf"])
    assert front["license"] == general["license"] and "gguf" in front["tags"]  # the base GGUF's own licence
    assert f"licence: {general['license']} (as recorded in the base GGUF" in text
    rows = [line for line in text.splitlines() if line.startswith("| M_")]
    assert [r.split(" |")[0] for r in rows] == ["| M_0", "| M_1", "| M_2", "| M_3 (final)"]  # M_3 is the best (QUALITY)
    assert "0.70 (" in rows[1] and "0.20 (" in rows[2]
    assert "- Recipe: 3 iterations of 128 instructions" in text
