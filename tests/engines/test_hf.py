"""hf_engine.py: the transformers backend, checked against the llama.cpp engine on the tiny random Llama."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import REQUESTS, conversations, same_texts

from isheep_lite.engines.base import Sampling
from isheep_lite.engines.llamacpp import Engine


@pytest.fixture(scope="module")
def hf_engine(tiny: dict[str, Path]):
    from isheep_lite.engines.hf import HFEngine

    with HFEngine(tiny["hf"], n_parallel=4, n_threads=2) as e:
        yield e


def test_transformers_greedy_matches_llama_cpp_and_its_own_single_sequence(tiny: dict[str, Path], tiny_engine: Engine, hf_engine) -> None:
    from isheep_lite.engines.hf import HFEngine

    greedy = [Sampling(max_tokens=24)] * len(REQUESTS)
    batched = hf_engine.chat_many(conversations(), greedy)
    with HFEngine(tiny["hf"], n_parallel=1, n_threads=2) as one:
        single = one.chat_many(conversations(), greedy)
    llama = tiny_engine.chat_many(conversations(), greedy)
    assert all(c.n_tokens > 0 for c in batched)
    assert same_texts(batched, single) >= 0.9 * len(REQUESTS), "left padding must not change a sequence's greedy output"
    assert same_texts(batched, llama) >= 0.9 * len(REQUESTS), [(a.text, b.text) for a, b in zip(batched, llama)]


@pytest.mark.slow
def test_transformers_loads_the_gguf_too(tiny: dict[str, Path], hf_engine) -> None:
    from isheep_lite.engines.hf import HFEngine

    greedy = [Sampling(max_tokens=16)] * 4
    with HFEngine(tiny["gguf"], n_parallel=4, n_threads=2) as from_gguf:
        assert from_gguf.info.chat_template == hf_engine.info.chat_template
        assert [c.text for c in from_gguf.chat_many(conversations()[:4], greedy)] == [
            c.text for c in hf_engine.chat_many(conversations()[:4], greedy)
        ]


def test_transformers_sampling_seeds_limits_and_stops_are_per_sequence(hf_engine) -> None:
    samplings = [Sampling(temperature=1.0, top_p=0.9, max_tokens=n, seed=s) for s, n in zip(range(8), [3, 9, 5, 12, 1, 7, 4, 10])]
    first = hf_engine.chat_many(conversations(), samplings)
    again = hf_engine.chat_many(conversations(), samplings)
    assert [c.text for c in first] == [c.text for c in again], "a fixed seed reproduces the same samples"
    assert len({c.text for c in first}) > 1
    for c, s in zip(first, samplings):
        assert c.n_tokens <= s.max_tokens and (c.finish_reason == "stop" or c.n_tokens == s.max_tokens)
    # A stop string taken from a sample ends that sequence there, and only that one.
    long = hf_engine.chat(conversations()[3], Sampling(temperature=1.0, max_tokens=12, seed=3))
    cut = long.text[4:6]
    stopped = hf_engine.chat_many(conversations()[3:5], [Sampling(temperature=1.0, max_tokens=12, seed=3, stop=(cut,)), samplings[4]])
    assert stopped[0].finish_reason == "stop" and cut not in stopped[0].text and long.text.startswith(stopped[0].text)
    assert stopped[1].text == first[4].text


def test_transformers_scores_agree_with_llama_cpp(tiny_engine: Engine, hf_engine) -> None:
    prompts = [f"Question {q}\nScore: " for q in REQUESTS]
    digits = [tiny_engine.token_id(str(d)) for d in range(1, 10)]
    assert [hf_engine.token_id(str(d)) for d in range(1, 10)] == digits
    a, b = tiny_engine.score_many(prompts, digits), hf_engine.score_many(prompts, digits)
    assert max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)) < 1e-3
    ca = tiny_engine.completion_logprobs(prompts[:4], ["a short answer", "yes", "no idea at all", "7"])
    cb = hf_engine.completion_logprobs(prompts[:4], ["a short answer", "yes", "no idea at all", "7"])
    assert [n for _, n in ca] == [n for _, n in cb]
    assert max(abs(x - y) for (x, _), (y, _) in zip(ca, cb)) < 1e-2
    with pytest.raises(ValueError, match="grammar"):
        hf_engine.complete("Score: ", Sampling(grammar="root ::= [1-9]"))


@pytest.mark.slow
def test_an_iteration_runs_on_the_transformers_backend(tmp_path: Path, taught: Any) -> None:
    """Every stage of the loop (instructions, responses, grades, eval, pairwise judge) on PyTorch,
    with a tiny Qwen2 taught to answer in Qwen2.5's template (tests/tiny_archs.py)."""
    from tiny_archs import SHOTS

    from isheep_lite import recipe
    from isheep_lite.loop import run

    hf, gguf = taught("qwen2", "qwen2.5")
    r = recipe.load(
        None,
        [
            f"runs_dir={tmp_path}",
            "name=hf",
            f"model.gguf={gguf}",
            f"model.hf={hf}",
            f"synth.few_shot={SHOTS}",
            "model.backend=transformers",
            "model.n_parallel=8",
            "loop.iterations=1",
            "synth.num_instructions=4",
            "synth.verifiable_fraction=0",  # a handful of answers: a broken constraint could leave none to train on
            "synth.max_tokens=128",
            "synth.response_max_tokens=96",
            "train.epochs=1",
            "eval.stop_prompts=3",
            "eval.max_tokens=64",
            "eval.ifeval_prompts=0",
            "eval.suite_prompts=3",
            "eval.heldout_prompts=0",
            "eval.knowledge_questions=0",
            "eval.suite_max_tokens=64",
        ],
    )
    m = run(r).manifest["iterations"]
    assert m["1"]["instructions"]["instructions"] == 4 and m["1"]["responses"]["responses"] == 4
    assert m["1"]["assess"]["status"] == "done" and m["1"]["filter"]["kept"] >= 1
    assert m["1"]["eval"]["pairwise"]["prompts"] == 3 and m["1"]["promote"]["status"] == "done"
    scored = [json.loads(x) for x in (tmp_path / "hf" / "iter_01" / "scored.jsonl").read_text().splitlines()]
    assert all(1 <= x["score"] <= 9 for x in scored)
