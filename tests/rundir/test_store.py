"""store.py: whole-line JSONL, the lock and recipe guard, stages marked done; manifest.fork."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from isheep_lite.recipe import UserError
from isheep_lite.rundir.jsonl import JsonlWriter, read_jsonl
from isheep_lite.rundir.manifest import fork
from isheep_lite.rundir.store import RunStore
from isheep_lite.stages import SUMMARIES


def test_torn_last_line_is_dropped_and_appends_continue_cleanly(tmp_path: Path) -> None:
    p = tmp_path / "x.jsonl"
    with JsonlWriter(p) as w:
        w.write({"id": 1})
        w.write({"id": 2})
    with open(p, "ab") as f:
        f.write(b'{"id": 3, "tex')  # a crash mid-write
    assert [r["id"] for r in read_jsonl(p)] == [1, 2]
    with JsonlWriter(p) as w:
        w.write({"id": 3})
    assert [r["id"] for r in read_jsonl(p)] == [1, 2, 3]
    assert all(json.loads(line) for line in p.read_text().splitlines())


def test_store_lock_and_recipe_guard(tmp_path: Path) -> None:
    a = RunStore(tmp_path / "run")
    a.open("name: a\n")
    with pytest.raises(UserError, match="another isheep run"):
        RunStore(tmp_path / "run").open("name: a\n")
    with a.stage(1, "synth") as info:
        info["count"] = 3
    a.close()
    b = RunStore(tmp_path / "run")
    with pytest.raises(UserError, match="different recipe"):
        b.open("name: b\n")
    b.open("name: a\n")
    assert b.is_done(1, "synth") and b.stage_entry(1, "synth")["count"] == 3
    b.close()


def test_failed_stage_is_not_marked_done(tmp_path: Path) -> None:
    s = RunStore(tmp_path / "run")
    s.open("x: 1\n")
    with pytest.raises(RuntimeError):
        with s.stage(1, "train"):
            raise RuntimeError("killed")
    assert not s.is_done(1, "train")
    s.close()


def test_fork_copies_m0_and_the_chosen_stages_only(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    (src / "iter_00").mkdir(parents=True)
    (src / "iter_00" / "model-f16.gguf").write_bytes(b"gguf")
    (src / "iter_01").mkdir()
    for stage in ("instructions", "responses", "assess"):
        for name in SUMMARIES[stage].FILES:
            (src / "iter_01" / name).write_text(f'{{"file": "{name}"}}\n')
    done = {"status": "done", "seconds": 1.0}
    m = {
        "iterations": {
            "0": {"base": {**done, "gguf": str(src.resolve() / "iter_00" / "model-f16.gguf")}, "eval": done},
            "1": {"instructions": done, "responses": done, "assess": done, "filter": done},
        },
        "best": {"iteration": 1},
    }
    (src / "manifest.json").write_text(json.dumps(m))
    dest.mkdir()
    (dest / "stale.txt").write_text("from an earlier fork")
    fork(src, dest, ("instructions", "responses"))
    forked = json.loads((dest / "manifest.json").read_text())
    assert set(forked["iterations"]["1"]) == {"instructions", "responses"} and "best" not in forked
    assert forked["iterations"]["0"]["base"]["gguf"] == str(dest.resolve() / "iter_00" / "model-f16.gguf")
    assert (dest / "iter_00" / "model-f16.gguf").read_bytes() == b"gguf" and not (dest / "stale.txt").exists()
    assert sorted(p.name for p in (dest / "iter_01").iterdir()) == [
        "completions.jsonl",
        "instructions.jsonl",
        "instructions_rejected.jsonl",
        "responses.jsonl",
    ]
