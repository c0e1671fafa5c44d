"""Each ablation recipe under recipes/ablations/ runs one real iteration on the embedded model (small counts)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from isheep_lite import recipe
from isheep_lite.loop import run
from isheep_lite.store import read_jsonl

ABLATIONS = sorted((Path(__file__).resolve().parents[1] / "recipes" / "ablations").glob("*.yaml"))
SMALL = ["loop.iterations=1", "synth.num_instructions=10", "synth.response_max_tokens=160", "train.epochs=1",
         "eval.stop_prompts=4", "eval.suite_prompts=4", "eval.pairwise=false"]


def test_the_ablation_set_is_complete() -> None:
    names = {p.stem for p in ABLATIONS}
    assert {"no_assessment", "train_from_previous", "data_cumulative"} <= names
    assert len([n for n in names if n.startswith("threshold_")]) >= 3
    for p in ABLATIONS:  # each loads, validates and says in its header what it ablates
        recipe.load(p)
        assert p.read_text().startswith(f"# isheep run recipes/ablations/{p.name}\n#\n# Ablation")


@pytest.mark.slow
@pytest.mark.parametrize("path", ABLATIONS, ids=[p.stem for p in ABLATIONS])
def test_ablation_runs_one_iteration(path: Path, tmp_path: Path, smol_hf: Path) -> None:
    # A threshold keeps only some scored pairs, so those runs need answers long enough to end by
    # themselves (at 160 tokens most are cut and rejected as truncated, leaving one or two to score).
    longer = ["synth.response_max_tokens=256"] if path.stem.startswith("threshold_") else []
    r = recipe.load(path, [f"runs_dir={tmp_path}", *SMALL, *longer])
    store = run(r)
    run_dir = tmp_path / r.name
    it = store.manifest["iterations"]["1"]
    for stage in ("instructions", "responses", "assess", "filter", "train", "export", "eval"):
        assert it[stage]["status"] == "done", stage
    assert it["train"]["steps"] >= 1 and Path(it["export"]["files"]["f16"]).is_file()
    saved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    kept = read_jsonl(run_dir / "iter_01" / "kept.jsonl")
    rejected = read_jsonl(run_dir / "iter_01" / "rejected.jsonl")
    scored = {x["id"]: x for x in read_jsonl(run_dir / "iter_01" / "scored.jsonl")}
    if path.stem == "no_assessment":
        assert saved["assess"]["enabled"] is False and it["assess"]["scored"] == 0
        assert kept and all(x["score"] is None for x in kept)
        assert not any(x["reason"] in ("below_top_fraction", "below_min_score") for x in rejected)
    elif path.stem.startswith("threshold_"):
        c = float(path.stem.split("_")[1])
        assert saved["filter"]["min_score"] == c and saved["filter"]["keep_top"] is None
        assert all(min(scored[x["id"]]["scores"].values()) >= c for x in kept)
        assert all(min(x["scores"].values()) < c for x in rejected if x["reason"] == "below_min_score")
        assert sum(it["assess"]["score_hist"].values()) == it["assess"]["scored"]
    elif path.stem == "train_from_previous":
        assert saved["loop"]["train_from"] == "previous" and (run_dir / "iter_01" / "merged").is_dir()
    elif path.stem == "data_cumulative":
        assert saved["loop"]["data"] == "cumulative"
