"""Split GGUFs (llama.cpp's gguf-split: `<name>-00001-of-0000N.gguf`, the model published in shards).

The user names the first shard, as llama.cpp loads it: parameters are counted over every shard,
llama.cpp serves it as it is, transformers (which reads one file) dequantises the shards joined into
one cached GGUF, and a run on it trains and exports a single-file GGUF with no split.* key. A later
shard, or a first shard whose siblings are missing, is refused in one line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from isheep_lite import loop, preflight, recipe
from isheep_lite.engines.base import Sampling
from isheep_lite.engines.llamacpp import Engine
from isheep_lite.gguf import header, weights
from isheep_lite.recipe import UserError

SHARDS = 3


def split_gguf(src: Path, dest: Path, n: int) -> list[Path]:
    """`src` written as llama.cpp's gguf-split writes it, into n shards named from `dest`
    (`<dir>/<name>.gguf` → `<name>-0000i-of-0000n.gguf`): every kv in the first shard, the tensors
    spread in order, split.no (u16), split.count (u16), split.tensors.count (i32) in each shard."""
    import gguf

    reader = gguf.GGUFReader(str(src))
    arch = str(reader.fields[gguf.Keys.General.ARCHITECTURE].contents())
    writer = gguf.GGUFWriter(str(dest), arch, split_max_tensors=-(-len(reader.tensors) // n))
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == gguf.Keys.General.ARCHITECTURE:
            continue
        vtype = field.types[0]
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None)
    for t in reader.tensors:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in reader.tensors:
        writer.write_tensor_data(t.data)
    writer.close()
    return [dest.with_name(f"{dest.stem}-{i:05d}-of-{n:05d}.gguf") for i in range(1, n + 1)]


@pytest.fixture(scope="module")
def split(tiny: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """{"shards": the 3 shards, "params": parameters in each}."""
    import gguf

    shards = split_gguf(tiny["gguf"], tmp_path_factory.mktemp("split") / "tiny-f32.gguf", SHARDS)
    kinds = {
        gguf.Keys.Split.LLM_KV_SPLIT_NO: gguf.GGUFValueType.UINT16,
        gguf.Keys.Split.LLM_KV_SPLIT_COUNT: gguf.GGUFValueType.UINT16,
        gguf.Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT: gguf.GGUFValueType.INT32,
    }
    params = []
    for i, s in enumerate(shards):  # the split is a real one, with llama.cpp's keys and types
        r = gguf.GGUFReader(str(s))
        assert {k: r.fields[k].types[0] for k in kinds} == kinds
        assert r.fields[gguf.Keys.Split.LLM_KV_SPLIT_NO].contents() == i and r.tensors
        assert (gguf.Keys.Tokenizer.CHAT_TEMPLATE in r.fields) == (i == 0), "the metadata is in the first shard only"
        params.append(sum(int(t.n_elements) for t in r.tensors))
    return {"shards": shards, "params": params}


def _keys(path: Path) -> list[str]:
    import gguf

    return [k for k in gguf.GGUFReader(str(path)).fields if not k.startswith("GGUF.")]


@pytest.mark.slow
def test_first_shard_counts_every_shard_and_matches_its_hf_model(split: dict[str, Any], tiny: dict[str, Path]) -> None:
    first = header.resolve_gguf(str(split["shards"][0]))
    info, whole = header.gguf_info(first), header.gguf_info(tiny["gguf"])
    assert split["params"][0] < whole.n_params == sum(split["params"])
    assert info == whole, "a split GGUF reads as the same model as the whole file"
    weights.check_same_model(info, first, tiny["hf"])
    assert header.gguf_shards(first) == split["shards"]
    assert header.gguf_shards(tiny["gguf"]) == [tiny["gguf"]]


@pytest.mark.slow
def test_shards_join_into_the_whole_file_once(split: dict[str, Any], tiny: dict[str, Path]) -> None:
    import filecmp

    joined = header.joined_gguf(split["shards"][0])
    assert joined.parent == header.cache_root() / "gguf" and not list(joined.parent.glob("*.tmp*"))
    # every key of the first shard but split.*, every tensor in order: the file that was split, byte for byte
    assert filecmp.cmp(joined, tiny["gguf"], shallow=False)
    mtime = joined.stat().st_mtime_ns
    assert header.joined_gguf(split["shards"][0]) == joined and joined.stat().st_mtime_ns == mtime, "reused, not rewritten"
    assert header.joined_gguf(tiny["gguf"]) == tiny["gguf"]


def test_the_disk_check_counts_the_joined_copy(split: dict[str, Any], tmp_path: Path) -> None:
    """A GGUF-only split model writes its shards joined into one file before the float32
    dequantisation: both count in the disk a run needs."""
    first = split["shards"][0]
    r = recipe.load(None, [f"runs_dir={tmp_path}", f"model.gguf={first}"])
    n = header.gguf_info(first).n_params
    joined = sum(p.stat().st_size for p in split["shards"])
    assert preflight.dequantise_bytes(r, first, n, set()) == int(1.1 * 4.0 * n) + joined


def test_llama_cpp_serves_the_first_shard_as_the_whole_file(split: dict[str, Any], tiny: dict[str, Path]) -> None:
    greedy = Sampling(temperature=0.0, max_tokens=16)
    chat = [{"role": "user", "content": "Name three colours."}]
    texts = []
    for path in (tiny["gguf"], split["shards"][0]):
        with Engine(path, n_ctx=256, n_threads=2, n_parallel=1) as e:
            texts.append(e.chat(chat, greedy).text)
    assert texts[0] and texts[0] == texts[1]


def test_missing_and_later_shards_are_refused_in_one_line(split: dict[str, Any], tmp_path: Path) -> None:
    shards = split["shards"]
    partial = [shutil.copy(s, tmp_path / s.name) for s in (shards[0], shards[2])]
    with pytest.raises(UserError, match=rf"{shards[1].name} is missing") as e:
        header.resolve_gguf(str(partial[0]))
    with pytest.raises(UserError, match=r"shard 3 of 3 of a split GGUF: give its first shard, .*-00001-of-00003\.gguf") as f:
        header.resolve_gguf(str(shards[2]))
    with pytest.raises(UserError, match="give its first shard"):
        header.gguf_info(shards[1])  # Engine reads the header through gguf_info
    assert "\n" not in str(e.value) + str(f.value)
    # Through the CLI: one line, exit code 2, before any work.
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    p = subprocess.run(
        [sys.executable, "-m", "isheep_lite", "run", f"model.gguf={shards[1]}", f"runs_dir={tmp_path / 'runs'}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and "give its first shard" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_one_real_iteration_runs_on_a_split_gguf_alone(smol_gguf: Path, tmp_path: Path) -> None:
    """The embedded SmolLM2 split into 3 shards, given alone (no model.hf): the split is dequantised
    (joined), served by llama.cpp as M_0 (`serve_base=original`: instructions, answers, assessment,
    eval), trained and exported for real; the export is one whole GGUF that llama.cpp loads."""
    (tmp_path / "shards").mkdir()
    first = split_gguf(smol_gguf, tmp_path / "shards" / "smol.gguf", SHARDS)[0]
    r = recipe.load(
        None,
        [
            f"runs_dir={tmp_path}",
            "name=split",
            f"model.gguf={first}",
            "model.serve_base=original",
            "loop.iterations=1",
            "synth.num_instructions=5",
            "synth.response_max_tokens=96",
            "train.epochs=1",
            "eval.stop_prompts=2",
            "eval.max_tokens=32",
            "eval.ifeval_prompts=0",
            "eval.suite_prompts=0",
            "eval.heldout_prompts=0",
            "eval.knowledge_questions=0",
        ],
    )
    assert r.model.hf is None
    run = loop.run(r)
    m = run.manifest["iterations"]
    assert m["0"]["base"]["hf"] == str(weights.dequantised_dir(first))
    assert m["1"]["responses"]["responses"] == 5 and m["1"]["filter"]["kept"] >= 1 and m["1"]["train"]["steps"] >= 1
    exported = run.iter_dir(1) / "model-f16.gguf"
    assert not [k for k in _keys(exported) if k.startswith("split.")], "an export from a split template is one whole file"
    assert header.gguf_info(exported).n_params == header.gguf_info(first).n_params
    with Engine(exported, n_ctx=256, n_threads=2, n_parallel=1) as e:
        assert e.chat([{"role": "user", "content": "Name a fruit."}], Sampling(temperature=0.0, max_tokens=8)).text.strip()
