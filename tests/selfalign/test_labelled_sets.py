"""The labelled assessment sets behind bench/bench_assess_quality.py are well-formed (≥ 80 pairs, bad ones of several kinds)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

DATA = Path(__file__).parents[1] / "data"
FILES = ["assess_labelled.jsonl", "assess_labelled_heldout.jsonl", "assess_labelled_fresh.jsonl"]
KINDS = {"wrong", "off_topic", "ignores_constraint", "repetitive", "truncated"}


@pytest.mark.parametrize("name", FILES)
def test_each_instruction_has_one_good_and_one_bad_answer(name: str) -> None:
    rows = [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]
    assert len(rows) >= 80
    assert Counter(r["label"] for r in rows) == {"good": len(rows) // 2, "bad": len(rows) // 2}
    assert all((r["kind"] == "good") == (r["label"] == "good") for r in rows)
    assert {r["kind"] for r in rows if r["label"] == "bad"} == KINDS
    by_instruction = Counter((r["instruction"], r["input"], r["label"]) for r in rows)
    assert set(by_instruction.values()) == {1}
    assert all(r["response"].strip() and r["instruction"].strip() for r in rows)


def test_ids_are_unique_across_the_sets() -> None:
    ids = [json.loads(line)["id"] for name in FILES for line in (DATA / name).read_text().splitlines() if line.strip()]
    assert len(ids) == len(set(ids))
