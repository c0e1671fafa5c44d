"""engine.py: the batched llama.cpp engine — determinism, seeds, stops, log-probs, batching, KV planning, shared prefixes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from isheep_lite.config import AssessConfig
from isheep_lite.engines.base import Sampling
from isheep_lite.engines.llamacpp import Engine
from isheep_lite.recipe import UserError
from isheep_lite.selfalign import grading, synth

QUESTIONS = [f"Tell me about the number {i} and why it matters." for i in range(32)]


PREAMBLE = (
    "You are grading answers. Read the task carefully, think about what a careful expert would write, "
    "and compare it with the answer given below. Be strict about facts, format and length, and "
    "ignore the style of the answer unless the task asks for one. "
)


def test_bad_seed_file_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "seeds.jsonl"
    p.write_text('{"instruction": "Name a colour."}\n{"instruction": \n')
    with pytest.raises(UserError, match=r"seeds.jsonl:2: not valid JSON"):
        synth.load_seeds(str(p))
    p.write_text('{"input": "x"}\n')
    with pytest.raises(UserError, match=r":1: each line needs"):
        synth.load_seeds(str(p))


def test_engine_greedy_is_deterministic_and_max_tokens_is_honoured(tiny_engine: Engine) -> None:
    s = Sampling(temperature=0.0, max_tokens=7)
    a = tiny_engine.complete("Once upon a time", s)
    b = tiny_engine.complete("Once upon a time", s)
    assert a == b and a.n_tokens <= 7
    assert a.finish_reason == "length" or a.n_tokens < 7


def test_engine_seed_reproduces_samples(tiny_engine: Engine) -> None:
    s = Sampling(temperature=1.0, top_p=0.95, max_tokens=12, seed=123)
    first = tiny_engine.complete("The weather", s)
    tiny_engine.complete("Something else entirely", Sampling(temperature=1.0, max_tokens=12, seed=7))
    assert tiny_engine.complete("The weather", s) == first


def test_stop_strings_end_generation(tiny_engine: Engine) -> None:
    free = tiny_engine.complete("Hello", Sampling(temperature=0.0, max_tokens=24))
    assert len(free.text) >= 8
    stop = free.text[len(free.text) // 2 : len(free.text) // 2 + 3]
    c = tiny_engine.complete("Hello", Sampling(temperature=0.0, max_tokens=24, stop=(stop,)))
    assert c.text == free.text[: free.text.index(stop)] and c.finish_reason == "stop"


def test_next_token_logprobs_are_probabilities_and_cache_safe(tiny_engine: Engine) -> None:
    ids = [tiny_engine.token_id(str(d)) for d in range(1, 10)]
    a = tiny_engine.next_token_logprobs("Rate this: Score: ", ids)
    tiny_engine.next_token_logprobs("Rate something longer and different: Score: ", ids)
    b = tiny_engine.next_token_logprobs("Rate this: Score: ", ids)
    assert all(x <= 0 for x in a) and sum(math.exp(x) for x in a) <= 1.0 + 1e-6
    assert a == pytest.approx(b, abs=1e-4)


def test_batched_greedy_matches_single_sequence(tiny: dict[str, Path]) -> None:
    greedy = [Sampling(temperature=0.0, max_tokens=24)] * len(QUESTIONS)
    chats = [[{"role": "user", "content": q}] for q in QUESTIONS]
    with Engine(tiny["gguf"], n_ctx=512, n_parallel=1) as one:
        single = one.chat_many(chats, greedy)
    with Engine(tiny["gguf"], n_ctx=512, n_parallel=8) as many:
        batched = many.chat_many(chats, greedy)
    same = sum(a.text == b.text for a, b in zip(single, batched))
    assert same >= 0.9 * len(QUESTIONS), f"{same}/32 identical"


def test_batched_sampling_is_reproducible_with_per_sequence_limits(tiny: dict[str, Path]) -> None:
    """Mixed budgets, seeds and stop strings in one batch; early finishers' slots are refilled."""
    samplings = [Sampling(temperature=1.0, top_p=0.9, max_tokens=4 + (i % 5) * 6, seed=i) for i in range(20)]
    prompts = [f"Story {i}:" for i in range(20)]
    with Engine(tiny["gguf"], n_ctx=256, n_parallel=4) as e:
        first = e.generate(prompts, samplings)
        again = e.generate(prompts, samplings)
        # Greedy with mixed budgets: short ones finish early and their slots are refilled mid-batch.
        greedy = [Sampling(temperature=0.0, max_tokens=2 + (i % 4) * 8) for i in range(20)]
        refilled = e.generate(prompts, greedy)
        alone = [e.generate([p], [s])[0] for p, s in zip(prompts[8:14], greedy[8:14])]
        stop = first[0].text[2:4]
        cut = e.generate([prompts[0]], [Sampling(temperature=1.0, top_p=0.9, max_tokens=4, seed=0, stop=(stop,))])[0]
    assert first == again, "a fixed seed reproduces the same samples"
    assert all(c.n_tokens <= s.max_tokens for c, s in zip(first, samplings))
    assert all(c.finish_reason == "length" for c, s in zip(first, samplings) if c.n_tokens == s.max_tokens)
    # A sequence that ran in a refilled slot answers as it does alone: nothing leaks between sequences.
    assert sum(a.text == b.text for a, b in zip(alone, refilled[8:14])) >= 5
    assert cut.finish_reason == "stop" and cut.text == first[0].text[: first[0].text.index(stop)]


def test_a_draining_sequence_moved_to_a_free_stream_goes_on_unchanged(tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the queue is empty the engine moves the last running sequence into the first free
    slot (a copy of its KV stream), so that a step stays one micro-batch: a moved sequence must
    answer as it does alone."""
    import llama_cpp as lc

    copies: list[tuple[int, int]] = []
    real_cp = lc.llama_memory_seq_cp
    monkeypatch.setattr(
        lc, "llama_memory_seq_cp", lambda mem, src, dst, p0, p1: copies.append((src, dst)) or real_cp(mem, src, dst, p0, p1)
    )
    prompts = [f"Question {i}: what is {i} plus {i}?" for i in range(8)]
    greedy = [Sampling(max_tokens=2 if i % 2 == 0 else 30) for i in range(8)]
    with Engine(tiny["gguf"], n_ctx=256, n_parallel=4) as e:
        batched = e.generate(prompts, greedy)
        alone = [e.generate([p], [s])[0] for p, s in zip(prompts, greedy)]
    moves = [(src, dst) for src, dst in copies if src != 4]  # 4 = n_parallel, the shared prefix's sequence
    assert moves and all(dst < src for src, dst in moves), copies
    assert sum(a.text == b.text for a, b in zip(alone, batched)) >= 7


def test_score_many_does_not_depend_on_batch_composition(tiny_engine: Engine) -> None:
    ids = [tiny_engine.token_id(str(d)) for d in range(1, 10)]
    prompts = [f"Rate answer {i}: Score: " for i in range(6)]
    batched = tiny_engine.score_many(prompts, ids)
    for p, row in zip(prompts, batched):
        assert row == pytest.approx(tiny_engine.score_many([p], ids)[0], abs=1e-3)


def test_kv_memory_plan_from_gguf_metadata(smol_gguf: Path, tiny: dict[str, Path]) -> None:
    from isheep_lite import planner
    from isheep_lite.gguf import header

    assert header.gguf_info(smol_gguf).kv_bytes_per_cell == 2 * 30 * 3 * 64 * 2  # SmolLM2-135M: 22.5 KiB
    cfg = json.loads((tiny["hf"] / "config.json").read_text())
    head = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    per_cell = 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * head * 2
    assert header.gguf_info(tiny["gguf"]).kv_bytes_per_cell == per_cell
    assert planner.fit_parallel(16, 2048, 23040, 4 << 30) == 16
    assert planner.fit_parallel(16, 2048, 23040, 200 << 20) == 3  # 200 MiB / (2048 × 22.5 KiB) = 4.4 streams, one for the prefix
    assert planner.fit_parallel(16, 2048, 23040, 1) == 1  # never zero sequences
    with Engine(tiny["gguf"], n_ctx=256, n_parallel=16, kv_budget_gb=4 * 256 * per_cell / 2**30) as e:  # 3 + the prefix
        assert e.n_parallel == 3


def test_completion_logprobs_agree_with_next_token_scoring_and_ifd(tiny_engine: Engine) -> None:
    prompt, word = "The weather today is", " sunny"
    [tok] = tiny_engine.llm.tokenize(word.encode(), add_bos=False, special=False)
    [(lp, n)] = tiny_engine.completion_logprobs([prompt], [word])
    assert n == 1 and lp == pytest.approx(tiny_engine.next_token_logprobs(prompt, [tok])[0], abs=1e-3)
    # Two-token completions: the sum over positions, packed with other pairs, equals the pair alone.
    alone = tiny_engine.completion_logprobs(["Once upon"], [" a time"])
    packed = tiny_engine.completion_logprobs(["Hello there", "Once upon", "Yes"], [" friend", " a time", " no"])
    assert packed[1][1] == alone[0][1] == 2 and packed[1][0] == pytest.approx(alone[0][0], abs=1e-3)
    recs = [{"id": "a", "instruction": "Name a fruit.", "input": "", "response": "Apple."}]
    out = grading.assess(tiny_engine, recs, AssessConfig(ifd=True), "M_0", {}, lambda r: None)
    assert out[0]["ifd"] > 0 and out[0]["ifd"] == pytest.approx(grading.ifd(tiny_engine, recs)[0], rel=1e-3)


def test_shared_prompt_prefix_is_evaluated_once_and_changes_nothing(tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Prompts with a long common start (as the few-shot meta-prompt and the assessment preamble
    have): greedy texts, scores and completion log-probs equal those computed without sharing."""
    from isheep_lite.engines import batch

    assert batch.shared_prefix([[1] * 40, [1] * 40], [39, 39]) == 39, "each sequence keeps its last token"
    assert batch.shared_prefix([[1] * 40, [1] * 20 + [2] * 20], [39, 39]) == 20
    assert batch.shared_prefix([[1] * 40, [1] * 5 + [2] * 35], [39, 39]) == 0, "below MIN_SHARED"
    assert batch.shared_prefix([[1] * 40, [2] * 40], [39, 39]) == 0, "nothing in common"
    assert batch.shared_prefix([[1] * 40], [39]) == 0, "one sequence shares with nobody"
    prompts = [PREAMBLE + f"Task {i}: say something about {i * 7}." for i in range(10)]
    completions = [f" The number {i * 7} is fine." for i in range(10)]
    ids = list(range(300, 340))
    greedy = [Sampling(max_tokens=16 + i) for i in range(10)]
    with Engine(tiny["gguf"], n_ctx=512, n_parallel=4) as e:
        n = batch.shared_prefix([e.tokenize(p) for p in prompts], [10**6] * 10)
        assert n >= batch.MIN_SHARED
        prefilled: list[int] = []
        real_prefill = e._prefill
        monkeypatch.setattr(e, "_prefill", lambda ctx, batch, toks: prefilled.append(len(toks)) or real_prefill(ctx, batch, toks))
        shared = (
            e.generate(prompts, greedy),
            e.score_many(prompts, ids),
            e.completion_logprobs(prompts, completions),
            e.completion_logprobs([PREAMBLE * 2] * 10, completions),
        )
        assert prefilled[0] == n and prefilled[1] == n and min(prefilled) > 0, prefilled
        monkeypatch.setattr(batch, "MIN_SHARED", 10**6)  # sharing off
        plain = (
            e.generate(prompts, greedy),
            e.score_many(prompts, ids),
            e.completion_logprobs(prompts, completions),
            e.completion_logprobs([PREAMBLE * 2] * 10, completions),
        )
    assert sum(a.text == b.text for a, b in zip(shared[0], plain[0])) >= 9
    assert np.abs(np.array(shared[1]) - np.array(plain[1])).max() < 1e-3
    for got, want in zip(shared[2] + shared[3], plain[2] + plain[3]):
        assert got[1] == want[1] and got[0] == pytest.approx(want[0], abs=1e-2)
