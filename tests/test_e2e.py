"""Two real iterations on the embedded SmolLM2 (small counts), and the CLI's behaviour."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from isheep_lite import recipe
from isheep_lite.engine import Engine, Sampling
from isheep_lite.loop import run
from isheep_lite.store import read_jsonl

STAGES = ["instructions", "responses", "assess", "filter", "train", "export", "eval", "promote"]


@pytest.mark.slow
def test_two_real_iterations(tmp_path: Path, smol_hf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = recipe.load(None, [
        f"runs_dir={tmp_path}", "name=e2e", "loop.iterations=2",
        "synth.num_instructions=8", "synth.response_max_tokens=160", "train.epochs=1",
        "eval.stop_prompts=20", "eval.max_tokens=512", "eval.suite_prompts=20",
    ])
    store = run(r)
    assert [x for x in capsys.readouterr().out.splitlines() if x.startswith("memory plan: training ≈")]
    assert store.manifest["memory_plan"]["export_ram_gib"] > 0
    m = store.manifest["iterations"]
    for t in ("1", "2"):
        for s in STAGES:
            assert m[t][s]["status"] == "done" and m[t][s]["seconds"] >= 0, (t, s)
        assert m[t]["instructions"]["instructions"] == 8
        assert m[t]["responses"]["responses"] == 8
        assert m[t]["filter"]["kept"] >= 1 and m[t]["train"]["steps"] >= 1
        # Acceptance: each tuned model stops at least as often as the base on the 20 held-out prompts.
        assert m[t]["eval"]["prompts"] == 20
        suite = m[t]["eval"]["ifeval"]
        assert suite["prompts"] == 20 and 0 <= suite["strict"] <= suite["loose"] <= 1
        assert suite["strict_ci95"][0] <= suite["strict"] <= suite["strict_ci95"][1]
        assert m[t]["eval"]["stop_rate"] >= m["0"]["eval"]["stop_rate"], (m[t]["eval"]["stop_rate"], m["0"]["eval"]["stop_rate"])
    run_dir = tmp_path / "e2e"
    kept = read_jsonl(run_dir / "iter_01" / "kept.jsonl")
    assert kept and all([x["role"] for x in k["messages"]] == ["user", "assistant"] for k in kept)
    assert all(r["reason"] for r in read_jsonl(run_dir / "iter_01" / "rejected.jsonl"))
    # Each tuned model was judged against M_0 in both orders and compared with the best before it;
    # the final model is the best one, and it loads and answers.
    for t in ("1", "2"):
        pw = m[t]["eval"]["pairwise"]
        assert pw["prompts"] == 20 and pw["win"] + pw["tie"] + pw["loss"] == 20
        assert m[t]["promote"]["compared"] and m[t]["promote"]["best"] in (int(t), m[t]["promote"]["against"])
        assert json.loads((tmp_path / "e2e" / f"iter_0{t}" / "eval.json").read_text())["pairwise"] == pw
    best = m["2"]["promote"]["best"]
    assert (run_dir / "iter_02" / "completions.jsonl").exists()
    final = Path(store.manifest["final_model"])
    assert store.manifest["best"]["iteration"] == best
    assert final == (run_dir / f"iter_{best:02d}" / "model-f16.gguf" if best else Path(m["0"]["base"]["gguf"]))
    with Engine(final, n_ctx=512) as e:
        assert e.chat([{"role": "user", "content": "Name a fruit."}], Sampling(max_tokens=16)).text.strip()
    # The report has every plot at its documented size.
    from test_report import assert_report

    from isheep_lite.report import write_report

    assert_report(write_report(run_dir))
    # A rerun skips every finished stage (nothing is redone; the manifest's timings are unchanged).
    before = json.loads((run_dir / "manifest.json").read_text())
    run(r)
    assert json.loads((run_dir / "manifest.json").read_text())["iterations"] == before["iterations"]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "isheep_lite", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})


@pytest.mark.parametrize(
    "args, words",
    [
        (["run", "synth.num_instrucions=5"], "did you mean 'num_instructions'"),
        (["run", "missing.yaml"], "recipe file not found"),
        (["run", "model.gguf=/nonexistent/model.gguf", "name=x"], "model file not found"),
        (["run", "synth.seeds=/nonexistent/seeds.jsonl"], "seed file not found"),
        (["run", "a.yaml", "b.yaml"], "at most one recipe file"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(args: list[str], words: str, tmp_path: Path) -> None:
    p = _cli(*args, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert words in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_not_a_gguf_is_rejected_before_any_work(tmp_path: Path) -> None:
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a model")
    p = _cli("run", f"model.gguf={fake}", f"runs_dir={tmp_path}/runs", cwd=tmp_path)
    assert p.returncode == 2 and "not a GGUF file" in p.stderr
    assert fake.read_bytes() == b"not a model"
    assert not (tmp_path / "runs").exists(), "bad input must not leave a run directory behind"


def test_cli_imports_no_heavy_library() -> None:
    code = (
        "import sys, isheep_lite, isheep_lite.cli, isheep_lite.loop;"
        "heavy = {'torch', 'transformers', 'trl', 'peft', 'unsloth', 'llama_cpp', 'bitsandbytes'};"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_recipe_command_prints_every_default(tmp_path: Path) -> None:
    p = _cli("recipe", "synth.num_instructions=64", cwd=tmp_path)
    assert p.returncode == 0
    assert recipe.from_dict(__import__("yaml").safe_load(p.stdout)).synth.num_instructions == 64


def test_ci_runs_exactly_the_readme_test_command() -> None:
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    command = readme.split("<!-- test-command -->", 1)[1].split("```bash\n", 1)[1].split("\n", 1)[0]
    ci_lines = [x for x in (root / ".ci" / "run").read_text().splitlines() if x and not x.startswith("#")]
    assert command in ci_lines, command
