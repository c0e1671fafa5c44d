"""cli.py: one-line errors with exit 2, light imports, `isheep recipe`, and the README's test command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cli

from isheep_lite import recipe


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
    p = cli(*args, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert words in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_not_a_gguf_is_rejected_before_any_work(tmp_path: Path) -> None:
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a model")
    p = cli("run", f"model.gguf={fake}", f"runs_dir={tmp_path}/runs", cwd=tmp_path)
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


def test_eval_command_measures_the_sets_a_run_decides_with() -> None:
    """`isheep eval` without counts evaluates on the recipe's evaluation sets, so its numbers compare
    with a run's eval.json; the counts live once, in config.EvalConfig."""
    import inspect

    from isheep_lite import cli as cli_module

    defaults = {k: v.default.default for k, v in inspect.signature(cli_module.eval_cmd).parameters.items()}
    e = recipe.load().eval
    assert (
        defaults["stop_prompts"],
        defaults["ifeval_prompts"],
        defaults["suite_prompts"],
        defaults["heldout_prompts"],
        defaults["knowledge"],
    ) == (
        e.stop_prompts,
        e.ifeval_prompts,
        e.suite_prompts,
        e.heldout_prompts,
        e.knowledge_questions,
    )
    assert e.ifeval_prompts > 0 and e.heldout_prompts > 0 and e.knowledge_questions > 0


@pytest.mark.slow
def test_recipe_command_prints_every_default(tmp_path: Path) -> None:
    p = cli("recipe", "synth.num_instructions=64", cwd=tmp_path)
    assert p.returncode == 0
    assert recipe.from_dict(__import__("yaml").safe_load(p.stdout)).synth.num_instructions == 64


def test_ci_runs_exactly_the_readme_test_command() -> None:
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    command = readme.split("<!-- test-command -->", 1)[1].split("```bash\n", 1)[1].split("\n", 1)[0]
    ci_lines = [x for x in (root / ".ci" / "run").read_text().splitlines() if x and not x.startswith("#")]
    assert command in ci_lines, command
