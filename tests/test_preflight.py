"""Bad input costs one line and exit code 2, before any work, and leaves every existing file as it was."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import cli

from isheep_lite import loop, preflight, recipe
from isheep_lite.recipe import UserError
from isheep_lite.rundir import store


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir" for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with an earlier run's directory and assorted broken input files."""
    import gguf

    ws = tmp_path_factory.mktemp("ws")
    run = ws / "runs" / "x"
    (run / "iter_01").mkdir(parents=True)
    (run / "recipe.yaml").write_text("name: x\nsynth:\n  num_instructions: 3\n")
    (run / "manifest.json").write_text('{"iterations": {"1": {"instructions": {"status": "done"}}}}')
    (run / "iter_01" / "instructions.jsonl").write_text('{"id": "a", "instruction": "Say hi."}\n')
    (ws / "bad.yaml").write_text("synth:\n  num_instructions: [1, 2\n")
    (ws / "list.yaml").write_text("- a\n- b\n")
    (ws / "fake.gguf").write_bytes(b"not a model at all")
    w = gguf.GGUFWriter(str(ws / "weird.gguf"), "nonsense-arch")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    (ws / "badjson.jsonl").write_text('{"instruction": "Name a colour."}\n{"instruction": \n')
    (ws / "latin1.jsonl").write_bytes('{"instruction": "Name a colour."}\n{"instruction": "Café"}\n'.encode("latin-1"))
    (ws / "noinstr.jsonl").write_text('{"input": "x"}\n')
    (ws / "emptydir").mkdir()
    (ws / "badconfig").mkdir()
    (ws / "badconfig" / "config.json").write_text("{not json")
    (ws / "afile").write_text("a file where a folder should be")
    (ws / "notarun").mkdir()
    (ws / "otherhf").mkdir()  # an 8B model's config next to the default 135M GGUF
    (ws / "otherhf" / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "num_hidden_layers": 32,
                "hidden_size": 4096,
                "intermediate_size": 14336,
                "num_attention_heads": 32,
                "num_key_value_heads": 8,
                "vocab_size": 128256,
            }
        )
    )
    return ws


CASES = [
    (["run", "missing.yaml"], "recipe file not found"),
    (["run", "bad.yaml"], "line 3"),
    (["run", "list.yaml"], "must be a YAML mapping"),
    (["run", "synth.num_instrucions=5"], "did you mean 'num_instructions'"),
    (["run", "synth.num_instructions=abc"], "synth.num_instructions must be int"),
    (["run", "train.lr=0"], "train.lr must be > 0"),
    (["run", "loop.train_from=bse"], "did you mean 'base'"),
    (["run", "filter.keep_top=1.5"], "filter.keep_top must be in (0, 1]"),
    (["run", "export.types=f16,q3"], "unknown export type 'q3'"),
    (["run", "train.backend=unsloth"], "pip install 'isheep-lite[gpu]'"),
    (["run", "model.backend=transformers", "assess.mode=grammar"], "no grammar sampling"),
    (["run", "eval.worse_confidence=1.5"], "eval.worse_confidence must be in"),
    (["run", "name=../escape"], "name"),
    (["run", "a.yaml", "b.yaml"], "at most one recipe file"),
    (["run", "model.gguf=missing.gguf"], "model file not found"),
    (["run", "model.gguf=fake.gguf"], "not a GGUF file"),
    (["run", "model.gguf=weird.gguf"], "architecture 'nonsense-arch'"),
    (["run", "synth.seeds=missing.jsonl"], "seed file not found"),
    (["run", "synth.seeds=badjson.jsonl"], "badjson.jsonl:2: not valid JSON"),
    (["run", "synth.seeds=latin1.jsonl"], "latin1.jsonl:2: not UTF-8"),
    (["run", "synth.seeds=noinstr.jsonl"], "noinstr.jsonl:1: each line needs"),
    (["run", "model.hf=missing_dir"], "neither a directory nor in the local HF cache"),
    (["run", "model.hf=emptydir"], "has no config.json"),
    (["run", "model.hf=otherhf"], "are not the same model"),
    (["run", "model.hf=badconfig"], "config.json is not valid JSON"),
    (["run", "eval.judge=missing.gguf"], "model file not found"),
    (["run", "runs_dir=afile"], "cannot create run directory"),
    (["run", "name=x"], "made by a different recipe"),
    (["eval", "missing.gguf"], "model file not found"),
    (["run", "export.mode=adapter", "model.backend=transformers"], "only llama.cpp applies"),
    (["run", "model.hf=otherhf", "model.converter=missing.py"], "model.converter: missing.py not found"),
    (["eval", "embedded:smollm2-135m-instruct", "--lora", "missing.gguf"], "model file not found"),
    (["report", "notarun"], "not a run directory"),
]


# the cases that get past every recipe check and load the model's files take seconds each: the slow tier
SLOW_CASES = {
    "run model.hf=otherhf",
    "run eval.judge=missing.gguf",
    "run runs_dir=afile",
    "run name=x",
    "run model.hf=otherhf model.converter=missing.py",
}


@pytest.mark.parametrize(
    "args, words",
    [pytest.param(a, w, marks=[pytest.mark.slow] if " ".join(a) in SLOW_CASES else []) for a, w in CASES],
    ids=[" ".join(a) for a, _ in CASES],
)
def test_bad_input_is_one_line_exit_2_and_touches_nothing(args: list[str], words: str, workspace: Path) -> None:
    before = _snapshot(workspace)
    p = cli(*args, cwd=workspace)
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert words in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert _snapshot(workspace) == before, "a refused command must leave every file byte-identical"


# What `isheep run` refuses about the recipe and its inputs (not about the run directory: it exists
# only for run), `isheep recipe` refuses too, in the same line — one validation for both.
RECIPE_CASES = [(a, w) for a, w in CASES if a[0] == "run" and not any(x.startswith("runs_dir=") or x == "name=x" for x in a)]


@pytest.mark.parametrize("args, words", RECIPE_CASES, ids=[" ".join(a[1:]) for a, _ in RECIPE_CASES])
def test_isheep_recipe_refuses_what_isheep_run_refuses(
    args: list[str], words: str, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process (the CLI's wiring is checked once below): `isheep recipe`'s own two calls."""
    from isheep_lite import cli

    monkeypatch.chdir(workspace)
    with pytest.raises(UserError) as refused:
        path, overrides = cli._split_args(args[1:])
        preflight.check_recipe(recipe.load(path, overrides))
    assert words in str(refused.value)


def test_isheep_recipe_refuses_in_one_line_like_run(workspace: Path) -> None:
    args = ["model.backend=openai", "model.base_url=http://127.0.0.1:1/v1"]
    run, checked = cli("run", *args, cwd=workspace), cli("recipe", *args, cwd=workspace)
    assert checked.returncode == run.returncode == 2 and checked.stdout == "", checked.stderr
    assert checked.stderr == run.stderr and "isheep eval MODEL.gguf --server URL" in checked.stderr


def test_too_little_disk_is_refused_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import collections
    import shutil

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9, 10 * 2**20))
    r = recipe.load(None, [f"runs_dir={tmp_path}/runs"])
    with pytest.raises(UserError, match=r"the planned exports need about 0\.\d GiB but .* has 0\.0 GiB free"):
        loop.run(r)
    assert not (tmp_path / "runs").exists()
    # 135 M parameters: F16 M_0 + two F16 exports ≈ 6 bytes per parameter (+10 %).
    assert 0.8e9 < preflight.planned_bytes(r, 135_000_000, "llama", set()) < 1.0e9
    assert preflight.planned_bytes(r, 135_000_000, "llama", {0, 1, 2}) == 0


def test_auto_export_takes_adapters_from_3b_only_where_the_architecture_exports_them_exactly() -> None:
    """export.mode auto: a 9 B Llama is served as base + GGUF adapter; a 9 B Qwen3.5 or Gemma 4,
    whose adapters the matrix exports merged only, gets a merged export per iteration (no adapter
    export that would stop the run at iteration 1), and so does any model under 3 B."""
    r = recipe.load(None, [])
    assert preflight.adapter_mode(r, 9_000_000_000, "llama")
    for arch in ("qwen35", "gemma4"):
        assert not preflight.adapter_mode(r, 9_000_000_000, arch)
        assert preflight.planned_bytes(r, 9_000_000_000, arch, set()) > preflight.planned_bytes(r, 9_000_000_000, "llama", set())
    assert not preflight.adapter_mode(r, 1_000_000_000, "llama")
    assert preflight.adapter_mode(recipe.load(None, ["export.mode=adapter"]), 1_000_000_000, "llama")


@pytest.mark.slow
def test_second_concurrent_run_is_refused_while_the_first_continues(tiny: dict[str, Path], tmp_path: Path) -> None:
    args = [
        "run",
        f"model.gguf={tiny['gguf']}",
        f"model.hf={tiny['hf']}",
        "model.serve_base=original",
        "name=busy",
        f"runs_dir={tmp_path}",
        "model.n_parallel=2",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    first = subprocess.Popen(
        [sys.executable, "-m", "isheep_lite", *args], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 120
        while not (tmp_path / "busy" / "recipe.yaml").exists():  # written once the lock is held
            assert first.poll() is None and time.time() < deadline, "the first run did not start"
            time.sleep(0.2)
        second = cli(*args, cwd=tmp_path)
        assert second.returncode == 2 and "another isheep run is using" in second.stderr, second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        assert first.poll() is None, "the first run must keep going"
    finally:
        first.kill()
        first.wait()
    # Once the first is gone, its lock is released: the directory can be opened again.
    s = store.RunStore(tmp_path / "busy")
    s.open((tmp_path / "busy" / "recipe.yaml").read_text())
    s.close()
