"""`isheep data`: the generation half alone on the embedded model — a dataset, no training, no export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_isheep_data_writes_a_dataset_and_trains_nothing(tmp_path: Path, smol_hf: Path) -> None:
    argv = [
        sys.executable, "-m", "isheep_lite", "data", f"runs_dir={tmp_path}", "name=synthetic",
        "model.n_parallel=4", "synth.num_instructions=4", "synth.response_max_tokens=160", "filter.keep_top=null",
    ]  # fmt: skip
    p = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    run = tmp_path / "synthetic"
    stages = json.loads((run / "manifest.json").read_text())["iterations"]["1"]
    assert list(stages) == ["instructions", "responses", "assess", "filter"]
    assert all(e["status"] == "done" for e in stages.values()) and stages["assess"]["scored"] >= 1
    kept = stages["filter"]["kept"]
    assert p.stdout.strip().splitlines()[-1].startswith(f"done: {kept} pairs in {run / 'iter_01' / 'data'}")
    rows = (run / "iter_01" / "data" / "sharegpt.jsonl").read_text().splitlines()
    assert len(rows) == kept >= 1 and json.loads(rows[0])["conversations"][0]["from"] == "human"
    assert not list(run.glob("iter_*/*.gguf")) and not (run / "iter_01" / "adapter").exists(), "nothing trained or exported"
