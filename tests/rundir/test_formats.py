"""The kept pairs as messages, ShareGPT and Alpaca JSONL, loaded back by `datasets` as a user would."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from isheep_lite.rundir import formats
from isheep_lite.selfalign import synth

KEPT = [
    {"id": "a", "instruction": "Name two rivers in Africa.", "input": "", "response": "The Nile and the Congo.", "score": 6.5},
    {"id": "b", "instruction": "Translate to French.", "input": "Good morning", "response": "Bonjour.", "score": 5.25},
    {
        "id": "c",
        "instruction": 'Write a haiku about frost, "quoted" — ünïcode.',
        "input": "",
        "response": "White lace on the pane",
        "score": 7.0,
    },
]
ABOUT = {
    "iteration": 1,
    "run": "demo",
    "model": "model.gguf",
    "answered": 5,
    "rejected_by_reason": {"low_score": 2},
    "assess": {"aspects": ["verdict"]},
    "filter": {"keep_top": 0.5},
}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    out = tmp_path / "iter_01" / "data"
    out.parent.mkdir()
    (out.parent / "data.tmp").mkdir()  # what a write killed part-way left: replaced, not mixed in
    (out.parent / "data.tmp" / "stale.jsonl").write_text("{}\n")
    formats.write_dataset(out, "demo-iter01", KEPT, [synth.conversation(x) for x in KEPT], ABOUT)
    return out


def test_each_format_loads_with_datasets_and_holds_every_pair(data_dir: Path, tmp_path: Path) -> None:
    from datasets import load_dataset

    cache = str(tmp_path / "hf-cache")
    assert sorted(p.name for p in data_dir.iterdir()) == [
        "README.md",
        "alpaca.jsonl",
        "dataset_info.json",
        "messages.jsonl",
        "sharegpt.jsonl",
    ]
    assert not (data_dir.parent / "data.tmp").exists()
    messages = load_dataset("json", data_files=str(data_dir / "messages.jsonl"), split="train", cache_dir=cache)
    assert [m[1]["content"] for m in messages["messages"]] == [x["response"] for x in KEPT]
    assert messages[1]["messages"][0] == {"role": "user", "content": synth.user_message("Translate to French.", "Good morning")}
    share = load_dataset("json", data_files=str(data_dir / "sharegpt.jsonl"), split="train", cache_dir=cache)
    assert [[t["from"] for t in c] for c in share["conversations"]] == [["human", "gpt"]] * 3
    assert share[2]["conversations"][0]["value"] == KEPT[2]["instruction"]
    alp = load_dataset("json", data_files=str(data_dir / "alpaca.jsonl"), split="train", cache_dir=cache)
    assert alp.column_names == ["instruction", "input", "output"]
    assert alp[1] == {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour."}


def test_the_card_names_each_file_as_a_config_and_says_how_the_pairs_were_chosen(data_dir: Path, tmp_path: Path) -> None:
    from datasets import load_dataset

    for config, column in (("messages", "messages"), ("sharegpt", "conversations"), ("alpaca", "output")):
        ds = load_dataset(str(data_dir), config, split="train", cache_dir=str(tmp_path / "hf-cache"))
        assert len(ds) == 3 and column in ds.column_names, config
    text = (data_dir / "README.md").read_text()
    assert "pairs kept: 3 of 5 answered" in text and "median 6.50" in text and '"keep_top": 0.5' in text
    info = json.loads((data_dir / "dataset_info.json").read_text())
    assert {v["file_name"] for v in info.values()} == {"sharegpt.jsonl", "alpaca.jsonl"}
    assert info["demo-iter01_sharegpt"]["tags"]["user_tag"] == "human"
