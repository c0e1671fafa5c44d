"""`isheep export RUN_DIR --quant …`: a finished run's model in more quantisations, with Modelfiles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from isheep_lite import recipe
from isheep_lite.engines.base import Sampling
from isheep_lite.engines.llamacpp import Engine
from isheep_lite.gguf.reexport import reexport
from isheep_lite.recipe import UserError


def _run_dir(tmp_path: Path, tiny: dict[str, Path], adapter_mode: bool = False) -> Path:
    """A run directory as a finished run leaves it: iteration 1 exported (F32 master), and best."""
    run = tmp_path / "run"
    (run / "iter_01").mkdir(parents=True)
    master = run / "iter_01" / "model-f32.gguf"
    shutil.copy(tiny["gguf"], master)
    files = {"adapter": str(run / "iter_01" / "adapter-f16.gguf")} if adapter_mode else {"f32": str(master)}
    manifest = {
        "iterations": {
            "0": {"base": {"status": "done", "gguf": str(tiny["gguf"]), "hf": str(tiny["hf"])}},
            "1": {"export": {"status": "done", "files": files}},
        },
        "best": {"iteration": 1, "gguf": str(master)},
    }
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "recipe.yaml").write_text(recipe.dump_yaml(recipe.load(None, [f"model.gguf={tiny['gguf']}", "model.n_ctx=1024"])))
    return run


def test_the_best_model_is_quantised_and_loads_with_its_modelfile(tmp_path: Path, tiny: dict[str, Path]) -> None:
    run = _run_dir(tmp_path, tiny)
    paths = reexport(run, None, ["Q8_0"])
    q8 = Path(paths["q8_0"])
    assert q8 == run / "iter_01" / "model-q8_0.gguf" and q8.stat().st_size < (run / "iter_01" / "model-f32.gguf").stat().st_size / 2
    assert not list(q8.parent.glob("*.tmp*"))
    with Engine(q8, n_ctx=256, n_threads=2) as e:
        assert e.chat([{"role": "user", "content": "Hi"}], Sampling(temperature=0.0, max_tokens=4)).n_tokens > 0
    text = (run / "iter_01" / "model-q8_0.Modelfile").read_text()
    assert text.startswith("FROM ./model-q8_0.gguf") and "PARAMETER num_ctx 1024" in text


def test_what_cannot_be_quantised_is_refused_in_one_line(tmp_path: Path, tiny: dict[str, Path]) -> None:
    run = _run_dir(tmp_path, tiny)
    with pytest.raises(UserError, match="--quant must be one of"):
        reexport(run, None, ["q3_xs"])
    with pytest.raises(UserError, match="M_0 is the GGUF you gave"):
        reexport(run, 0, ["q8_0"])
    with pytest.raises(UserError, match="iteration 2 of .* has no finished export"):
        reexport(run, 2, ["q8_0"])
    adapters = _run_dir(tmp_path / "a", tiny, adapter_mode=True)
    with pytest.raises(UserError, match="served as base \\+ LoRA adapters"):
        reexport(adapters, None, ["q8_0"])
