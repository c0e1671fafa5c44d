"""model.converter: the generation GGUF made from model.hf by llama.cpp's converter, once, cached.

llama.cpp's convert_hf_to_gguf.py is not on PyPI, so the converter here is a stand-in with its
command line (`HF_DIR --outfile OUT --outtype f16`) that writes the GGUF with this toolkit's own
export; what is tested is the toolkit's side: the call, the cache, atomicity and the errors.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from isheep_lite import config, preflight, recipe
from isheep_lite.engines.base import Sampling
from isheep_lite.engines.llamacpp import Engine
from isheep_lite.recipe import UserError

STAND_IN = """
import argparse, json, sys
from pathlib import Path
p = argparse.ArgumentParser()
p.add_argument("model"); p.add_argument("--outfile"); p.add_argument("--outtype")
a = p.parse_args()
calls = Path(__file__).with_suffix(".calls")
calls.write_text(str(int(calls.read_text()) + 1 if calls.exists() else 1))
if a.outtype != "f16":
    sys.exit("unexpected --outtype")
from isheep_lite.gguf import header
from isheep_lite.gguf import convert
convert.convert(Path(a.model), header.resolve_gguf("embedded:smollm2-135m-instruct"), Path(a.outfile), "f16")
"""


def _recipe(tmp_path: Path, *extra: str) -> config.Recipe:
    return recipe.load(None, [f"runs_dir={tmp_path}", *extra])


@pytest.mark.slow
def test_converter_makes_the_generation_gguf_once(tiny: dict, tmp_path: Path) -> None:
    script = tmp_path / "convert_hf_to_gguf.py"
    script.write_text(STAND_IN)
    r = _recipe(tmp_path, f"model.hf={tiny['hf']}", f"model.converter={script}")
    gguf = preflight.generation_gguf(r)
    assert gguf.is_file() and gguf.suffix == ".gguf" and (tmp_path / "convert_hf_to_gguf.calls").read_text() == "1"
    assert preflight.generation_gguf(r) == gguf and (tmp_path / "convert_hf_to_gguf.calls").read_text() == "1", "cached"
    assert not list(gguf.parent.glob("*.tmp*"))
    with Engine(gguf, n_ctx=256) as e, Engine(tiny["gguf"], n_ctx=256) as ref:  # the same model as the tiny GGUF
        s = [Sampling(max_tokens=8)]
        assert e.generate(["Hello"], s)[0].text == ref.generate(["Hello"], s)[0].text


def test_converter_errors_are_one_line(tiny: dict, tmp_path: Path) -> None:
    failing = tmp_path / "failing.py"
    failing.write_text("import sys\nprint('loading...')\nsys.exit('Model MysteryForCausalLM is not supported')\n")
    with pytest.raises(UserError, match="converter failed .*MysteryForCausalLM is not supported"):
        preflight.generation_gguf(_recipe(tmp_path, f"model.hf={tiny['hf']}", f"model.converter={failing}"))
    with pytest.raises(UserError, match="not found"):
        preflight.generation_gguf(_recipe(tmp_path, f"model.hf={tiny['hf']}", f"model.converter={tmp_path / 'nope.py'}"))
    with pytest.raises(UserError, match="set model.hf"):
        preflight.generation_gguf(_recipe(tmp_path, f"model.converter={failing}"))
    with pytest.raises(UserError, match="not both"):
        preflight.generation_gguf(_recipe(tmp_path, f"model.hf={tiny['hf']}", f"model.converter={failing}", f"model.gguf={tiny['gguf']}"))
    assert sys.executable  # the converter runs under this interpreter (its gguf-py and torch)


def test_hf_weights_are_counted_from_their_safetensors_headers(tiny: dict, tmp_path: Path) -> None:
    """The same-model check counts the HF weights' tensors (a hybrid such as Qwen3.5 is not the
    full-attention shape its config suggests), leaving out the parts the text GGUF has not."""
    from safetensors.numpy import load_file, save_file

    from isheep_lite.gguf import header, weights

    assert weights.hf_params(tiny["hf"]) == header.gguf_info(tiny["gguf"]).n_params
    tensors = load_file(str(tiny["hf"] / "model.safetensors"))
    save_file({**tensors, "mtp.fc.weight": tensors["model.norm.weight"][:, None] * 0}, str(tmp_path / "model.safetensors"))
    assert weights.hf_params(tmp_path) == weights.hf_params(tiny["hf"])
    assert weights.hf_params(tmp_path / "none") is None
