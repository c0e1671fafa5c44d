"""Each ablation recipe under recipes/ablations/ runs one real iteration on the embedded model (small counts)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pools import ABLATIONS, OTHERS, POOL, SMALL, THRESHOLDS

from isheep_lite import config, recipe
from isheep_lite.loop import run
from isheep_lite.rundir.jsonl import read_jsonl
from isheep_lite.rundir.manifest import fork
from isheep_lite.rundir.store import RunStore


def test_the_ablation_set_is_complete() -> None:
    names = {p.stem for p in ABLATIONS}
    assert {"no_assessment", "train_from_previous", "data_cumulative"} <= names
    assert len([n for n in names if n.startswith("threshold_")]) >= 3
    for p in ABLATIONS:  # each loads, validates and says in its header what it ablates
        recipe.load(p)
        assert p.read_text().startswith(f"# isheep run recipes/ablations/{p.name}\n#\n# Ablation")


def check_iteration(store: RunStore) -> dict:
    """Iteration 1's manifest entry, once every stage of it is done and its model exported (eval is
    off in these runs: with no eval prompt the loop records no eval stage)."""
    it = store.manifest["iterations"]["1"]
    assert "eval" not in it
    for stage in ("instructions", "responses", "assess", "filter", "train", "export", "promote"):
        assert it[stage]["status"] == "done", stage
    assert it["train"]["steps"] >= 1 and Path(it["export"]["files"]["f16"]).is_file()
    return it


def _sections(r: config.Recipe) -> dict:
    d = yaml.safe_load(recipe.dump_yaml(r))
    d.pop("name"), d.pop("runs_dir")
    return d


def shared_stages(mine: config.Recipe, pool: config.Recipe) -> tuple[str, ...]:
    """The stages two recipes run identically: those before the first section in which they differ
    (model and synth shape everything, assess the grades; loop, filter, train, export and eval act
    after self-assessment)."""
    a, b = _sections(mine), _sections(pool)
    differ = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    if differ & {"model", "synth"} or a["loop"]["seed"] != b["loop"]["seed"]:
        return ()
    return ("instructions", "responses") if "assess" in differ else ("instructions", "responses", "assess")


@pytest.mark.slow
@pytest.mark.parametrize("path", OTHERS, ids=lambda p: p.stem)
def test_ablation_runs_one_iteration(path: Path, tmp_path: Path, pool: Path) -> None:
    r = recipe.load(path, [f"runs_dir={tmp_path}", *SMALL, *POOL])
    run_dir = tmp_path / r.name
    shared = shared_stages(r, recipe.load(THRESHOLDS[0], [f"runs_dir={tmp_path}", *SMALL, *POOL]))
    assert "instructions" in shared, "every ablation here changes what acts after generation"
    fork(pool, run_dir, shared)
    store = run(r, force=True)
    it = check_iteration(store)
    saved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    kept = read_jsonl(run_dir / "iter_01" / "kept.jsonl")
    rejected = read_jsonl(run_dir / "iter_01" / "rejected.jsonl")
    if path.stem == "no_assessment":
        assert saved["assess"]["enabled"] is False and it["assess"]["scored"] == 0
        assert kept and all(x["score"] is None for x in kept)
        assert not any(x["reason"] in ("below_top_fraction", "below_min_score") for x in rejected)
    elif path.stem == "train_from_previous":
        assert saved["loop"]["train_from"] == "previous" and (run_dir / "iter_01" / "merged").is_dir()
    elif path.stem == "data_cumulative":
        assert saved["loop"]["data"] == "cumulative"


@pytest.mark.slow
@pytest.mark.parametrize("path", THRESHOLDS, ids=lambda p: p.stem)
def test_threshold_ablation_runs_one_iteration(path: Path, tmp_path: Path, pool: Path) -> None:
    runs = pool.parent if path == THRESHOLDS[0] else tmp_path  # the lowest is the pool's own run
    r = recipe.load(path, [f"runs_dir={runs}", *SMALL, *POOL])
    run_dir = runs / r.name
    pool_recipe = yaml.safe_load((pool / "recipe.yaml").read_text())
    mine = yaml.safe_load(recipe.dump_yaml(r))
    for key in ("name", "runs_dir"):
        pool_recipe.pop(key), mine.pop(key)
    pool_recipe["filter"].pop("min_score"), mine["filter"].pop("min_score")
    assert pool_recipe == mine  # nothing before the filter stage differs, so the pool is this recipe's own
    if path != THRESHOLDS[0]:
        fork(pool, run_dir, ("instructions", "responses", "assess"))
    store = run(r, force=True)
    it = check_iteration(store)
    c = float(path.stem.split("_")[1])
    saved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert saved["filter"]["min_score"] == c and saved["filter"]["keep_top"] is None
    kept = read_jsonl(run_dir / "iter_01" / "kept.jsonl")
    rejected = read_jsonl(run_dir / "iter_01" / "rejected.jsonl")
    scored = {x["id"]: x for x in read_jsonl(run_dir / "iter_01" / "scored.jsonl")}
    assert kept and all(min(scored[x["id"]]["scores"].values()) >= c for x in kept)
    assert all(min(x["scores"].values()) < c for x in rejected if x["reason"] == "below_min_score")
    assert sum(it["assess"]["score_hist"].values()) == it["assess"]["scored"]
    assert it["filter"]["kept"] == len(kept)
