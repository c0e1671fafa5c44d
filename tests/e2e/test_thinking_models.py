"""Models with a thinking switch (Qwen3, Qwen3.5) through two whole iterations, on their own templates.

Each is a tiny model of the family's shape taught to answer in the family's template (the `taught`
fixture: tests/tiny_archs.py), so that some of what it writes survives the filters. Then every
stage runs for real: instructions, answers and grades through the template's no-think path,
training, export through llama.cpp's converter, evaluation and promotion.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from chat_templates import FAMILIES
from tiny_archs import SHOTS

from isheep_lite import recipe
from isheep_lite.loop import run

FAMILY = {"qwen3": "qwen3", "qwen3_5": "qwen3.5"}  # architecture → its chat template family


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(FAMILY))
def test_a_thinking_model_runs_two_iterations_without_reasoning_blocks(kind: str, taught: Any, tmp_path: Path) -> None:
    from isheep_lite.engines.base import Sampling
    from isheep_lite.engines.llamacpp import Engine

    template = FAMILIES[FAMILY[kind]].template
    hf, gguf = taught(kind, FAMILY[kind])
    r = recipe.load(
        None,
        [
            f"runs_dir={tmp_path / 'runs'}",
            f"name={kind}",
            f"model.gguf={gguf}",
            f"model.hf={hf}",
            "loop.iterations=2",
            "synth.num_instructions=8",
            f"synth.few_shot={SHOTS}",  # as taught
            "synth.response_max_tokens=48",
            "eval.ifeval_prompts=4",
            "eval.heldout_prompts=4",
            "eval.knowledge_questions=4",
            "eval.stop_prompts=4",
            "eval.suite_prompts=0",
            "eval.pairwise=false",
        ],
    )
    store = run(r)
    m = json.loads((store.root / "manifest.json").read_text())
    for t in ("1", "2"):
        stages = m["iterations"][t]
        assert all(e["status"] == "done" for e in stages.values()), (t, stages)
        assert {"instructions", "responses", "assess", "filter", "train", "export", "eval", "promote"} <= set(stages)
        kept = _rows(store.root / f"iter_0{t}" / "kept.jsonl")
        assert kept, f"{kind}: iteration {t} kept no pair"
        assert not any("think>" in k["messages"][-1]["content"] for k in kept), "a kept answer carries a reasoning block"

    # the trained model answers through llama.cpp with the family's own template, no reasoning block
    files = m["iterations"]["2"]["export"]["files"]
    for path in {v for k, v in files.items() if k != "adapter"} | {m["final_model"]}:
        with Engine(Path(path), n_ctx=512, n_threads=2) as engine:
            assert engine.info.chat_template == template
            (out,) = engine.chat_many([[{"role": "user", "content": "Why do leaves change colour?"}]], [Sampling(max_tokens=48)])
            assert out.text.strip() and "think>" not in out.text, out.text
