"""Engine, synthesis and self-assessment on the tiny random Llama (real llama.cpp, seconds)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from isheep_lite import assess, synth
from isheep_lite.engine import Completion, Engine, Sampling
from isheep_lite.recipe import AssessConfig, FilterConfig, SynthConfig, UserError


def test_builtin_seeds_are_many_and_varied() -> None:
    seeds = synth.load_seeds("builtin")
    assert len(seeds) >= 100
    from importlib import resources

    rows = [json.loads(x) for x in resources.files("isheep_lite").joinpath("data/seeds.jsonl").read_text().splitlines()]
    assert len({r["category"] for r in rows}) >= 8


def test_bad_seed_file_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "seeds.jsonl"
    p.write_text('{"instruction": "Name a colour."}\n{"instruction": \n')
    with pytest.raises(UserError, match=r"seeds.jsonl:2: not valid JSON"):
        synth.load_seeds(str(p))
    p.write_text('{"input": "x"}\n')
    with pytest.raises(UserError, match=r":1: each line needs"):
        synth.load_seeds(str(p))


def test_fewshot_prompt_and_parsing() -> None:
    prompt = synth.fewshot_prompt([{"instruction": "Name a colour.", "input": ""}, {"instruction": "Fix it.", "input": "teh"}])
    assert "Task 1\nInstruction: Name a colour.\nInput: <noinput>" in prompt
    assert prompt.endswith("Task 3\nInstruction:")
    completion = " Give two uses of salt.\nInput: <noinput>\n\nTask 4\nInstruction: Translate to French.\nInput: Good night\n\nTask 5\nInstruction: Write a"
    tasks = synth.parse_tasks(completion, truncated=True)
    assert tasks == [{"instruction": "Give two uses of salt.", "input": ""}, {"instruction": "Translate to French.", "input": "Good night"}]
    assert len(synth.parse_tasks(completion, truncated=False)) == 3


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


def test_expected_score() -> None:
    score, dist, mass = assess.expected_score([math.log(0.25), math.log(0.25), math.log(0.5)])
    assert score == pytest.approx(1 * 0.25 + 2 * 0.25 + 3 * 0.5)
    assert sum(dist) == pytest.approx(1.0) and mass == pytest.approx(1.0)


def test_assess_scores_every_record_and_resumes(tiny_engine: Engine) -> None:
    recs = [{"id": f"r{i}", "instruction": f"Name {i} fruits.", "input": "", "response": "Apple, pear."} for i in range(3)]
    written: list[dict] = []
    cfg = AssessConfig(aspects=["quality", "following"], calibrate=False)  # the paper's two graded aspects
    out = assess.assess(tiny_engine, recs, cfg, "M_0", {}, written.append)
    assert [r["id"] for r in out] == ["r0", "r1", "r2"] and written == out
    for r in out:
        assert set(r["scores"]) == {"quality", "following"}
        assert all(1.0 <= v <= cfg.scale for v in r["scores"].values())
        assert sum(r["score_dist"]["quality"]) == pytest.approx(1.0, abs=1e-3)
    again: list[dict] = []
    resumed = assess.assess(tiny_engine, recs, cfg, "M_0", {r["id"]: r for r in out[:2]}, again.append)
    assert [r["id"] for r in again] == ["r2"] and resumed[:2] == out[:2]


def test_verdict_is_the_probability_of_yes_on_the_score_scale(tiny_engine: Engine) -> None:
    recs = [{"id": "r0", "instruction": "Name two fruits.", "input": "", "response": "Apple, pear."}]
    [row] = assess.assess(tiny_engine, recs, AssessConfig(aspects=["verdict"], calibrate=False), "M_0", {}, lambda r: None)
    p_no, p_yes = row["score_dist"]["verdict"]
    assert p_no + p_yes == pytest.approx(1.0, abs=1e-3) and row["score"] == pytest.approx(1 + 8 * p_yes, abs=1e-3)
    prompt = assess.assessment_prompt(tiny_engine, "Name two fruits.", "Apple, pear.", "verdict", 9)
    assert prompt.endswith(assess.VERDICT_PREFILL) and "Answer Yes or No" in prompt
    assert assess.parse_verdict("Yes, it does.", 9) == 9 and assess.parse_verdict(" no.", 9) == 1
    assert assess.parse_verdict("Maybe", 9) is None and assess.parse_verdict("Yesterday", 9) is None


def test_calibrated_verdict_divides_out_the_judges_prior_for_the_response(tiny_engine: Engine) -> None:
    recs = [{"id": f"r{i}", "instruction": q, "input": "", "response": "Apple, pear."}
            for i, q in enumerate(["Name two fruits.", "Name two rivers."])]
    cfg = AssessConfig(aspects=["verdict", "quality"], calibrate=True)
    out = assess.assess(tiny_engine, recs, cfg, "M_0", {}, lambda r: None)
    plain = assess.assess(tiny_engine, recs, AssessConfig(aspects=["verdict", "quality"], calibrate=False), "M_0", {}, lambda r: None)
    # the withheld-instruction prompt: the same question, the placeholder where the instruction was
    withheld = assess.assessment_prompt(tiny_engine, assess.WITHHELD, "Apple, pear.", "verdict", 9)
    [[lp_no, lp_yes]] = tiny_engine.score_many([withheld], [tiny_engine.token_id(w) for w in assess.VERDICT_WORDS])
    for row, ref in zip(out, plain):
        assert row["scores_shown"] == pytest.approx(ref["scores"], abs=1e-3)
        p_no, p_yes = row["score_dist"]["verdict"]
        lo = math.log(p_yes / p_no) - (lp_yes - lp_no)
        assert row["scores"]["verdict"] == pytest.approx(1 + 8 / (1 + math.exp(-lo)), abs=2e-3)
        q, q0 = row["scores_shown"]["quality"], row["scores_withheld"]["quality"]
        assert row["scores"]["quality"] == pytest.approx(5 + (q - q0) / 2, abs=2e-3)
        assert 1 <= row["scores"]["quality"] <= 9
    # the same response with the same placeholder: one baseline for both instructions
    assert out[0]["scores_withheld"] == out[1]["scores_withheld"]
    # unchanged judgement with and without the instruction sits at the midpoint
    same = (5.0, [0.3, 0.7], 1.0)
    assert assess.calibrated("verdict", 9, same, same) == pytest.approx(5.0)
    assert assess.calibrated("quality", 9, same, same) == pytest.approx(5.0)
    assert assess.calibrated("quality", 9, (None, None, None), same) is None


@pytest.mark.parametrize("mode", ["grammar", "generate"])
def test_assess_by_grammar_or_generated_text(tiny_engine: Engine, mode: str) -> None:
    recs = [{"id": f"r{i}", "instruction": f"Name {i} fruits.", "input": "", "response": "Apple, pear."} for i in range(5)]
    cfg = AssessConfig(mode=mode, aspects=["quality", "following", "verdict"], calibrate=False)
    out = assess.assess(tiny_engine, recs, cfg, "M_0", {}, lambda r: None)
    assert [r["id"] for r in out] == [r["id"] for r in recs] and all("score_dist" not in r for r in out)
    for r in out:
        for aspect, v in r["scores"].items():
            if mode == "grammar":  # the grammar admits nothing but a valid answer: always a valid score
                assert v in ({1.0, 9.0} if aspect == "verdict" else {1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0})
            else:  # a random model's free reply rarely holds an answer: None is kept, never guessed
                assert v is None or 1 <= v <= 9
        assert (r["score"] is None) == any(v is None for v in r["scores"].values())


def test_parse_score_takes_the_first_number_in_range() -> None:
    assert assess.parse_score("Score: 7/9 because it is good", 9) == 7
    assert assess.parse_score("I would give it 8.", 9) == 8
    assert assess.parse_score("It is 12 out of 9", 9) is None
    assert assess.parse_score("3.5 stars", 9) is None
    assert assess.parse_score("no number here", 9) is None


class CountingEngine:
    """Wraps an engine and counts the prompts it is asked to complete, to prove a resume asks none again."""

    def __init__(self, engine: "Engine | ScriptedEngine"):
        self.engine, self.calls, self.n_parallel = engine, 0, 4

    def generate(self, prompts, samplings, on_result=lambda i, c: None):  # noqa: ANN001, ANN201
        self.calls += len(prompts)
        return self.engine.generate(prompts, samplings, on_result)

    def chat_many(self, conversations, samplings, on_result=lambda i, c: None):  # noqa: ANN001, ANN201
        self.calls += len(conversations)
        return self.engine.chat_many(conversations, samplings, on_result)


class ScriptedEngine:
    """Continues the task list like a well-behaved model would, varying with the request's seed."""

    n_parallel = 4

    def generate(self, prompts, samplings, on_result=lambda i, c: None):  # noqa: ANN001, ANN201
        return [self.complete(p, s) for p, s in zip(prompts, samplings)]

    WORDS = ("river", "violin", "budget", "glacier", "recipe", "satellite", "poem", "tax", "garden",
             "engine", "museum", "password", "volcano", "novel", "spreadsheet", "tennis", "vaccine", "harbour")

    def complete(self, prompt: str, s: Sampling) -> Completion:
        import random

        topic = " ".join(random.Random(s.seed).sample(self.WORDS, 6))
        text = (
            f" Discuss {topic}.\nInput: <noinput>\n\n"
            "Task 7\nInstruction: Draw a map of the town.\nInput: <noinput>\n\n"
            f"Task 8\nInstruction: Discuss {topic} briefly.\nInput: <noinput>\n\n"
            "Task 9\nInstruction: Wri"
        )
        return Completion(text, 60, "length")


def test_instruction_generation_filters_dedups_and_resumes(tmp_path: Path) -> None:
    seeds = synth.load_seeds("builtin")
    cfg = SynthConfig(num_instructions=5, max_prompts=20, tasks_per_prompt=3)
    counting = CountingEngine(ScriptedEngine())
    kept, rejected = synth.generate_instructions(counting, seeds, cfg, FilterConfig(), 0, 1, tmp_path / "c.jsonl")  # type: ignore[arg-type]
    assert len(kept) == 5 and counting.calls >= 3
    reasons = {r["reason"] for r in rejected}
    assert {"unusable_keyword", "near_duplicate"} <= reasons  # "Draw a map"; the bridge task twice
    assert not any("Wri" == r["instruction"] for r in kept + rejected), "the cut-off last task is dropped"
    assert len({r["instruction"] for r in kept}) == 5 and len({r["id"] for r in kept}) == 5
    resumed = CountingEngine(ScriptedEngine())
    again = synth.generate_instructions(resumed, seeds, cfg, FilterConfig(), 0, 1, tmp_path / "c.jsonl")  # type: ignore[arg-type]
    assert resumed.calls == 0, "a finished prompt must be re-parsed, not re-generated"
    assert again == (kept, rejected)


def test_instruction_generation_runs_on_a_real_engine(tiny_engine: Engine, tmp_path: Path) -> None:
    """The tiny random model writes gibberish: nothing passes, but every prompt is logged and the cap holds."""
    cfg = SynthConfig(num_instructions=2, max_prompts=3, max_tokens=24)
    kept, _ = synth.generate_instructions(tiny_engine, synth.load_seeds("builtin"), cfg, FilterConfig(), 0, 1, tmp_path / "c.jsonl")
    logged = [json.loads(x) for x in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert [c["prompt"] for c in logged] == [0, 1, 2] and len(kept) <= 2
    assert all(c["tokens"] <= 24 and len(c["parents"]) == 5 for c in logged)


def test_responses_are_reproducible_and_resume(tiny_engine: Engine, tmp_path: Path) -> None:
    recs = [{"id": f"x{i}", "instruction": f"Say {i}.", "input": ""} for i in range(3)]
    cfg = SynthConfig(response_max_tokens=16)
    out = synth.generate_responses(tiny_engine, recs, cfg, 0, 1, tmp_path / "r.jsonl")
    assert [r["id"] for r in out] == ["x0", "x1", "x2"]
    assert all(r["gen"]["tokens"] <= 16 and r["gen"]["finish"] in {"stop", "length"} for r in out)
    counting = CountingEngine(tiny_engine)
    assert synth.generate_responses(counting, recs, cfg, 0, 1, tmp_path / "r.jsonl") == out  # type: ignore[arg-type]
    assert counting.calls == 0
    assert synth.generate_responses(tiny_engine, recs, cfg, 0, 1, tmp_path / "s.jsonl") == out


QUESTIONS = [f"Tell me about the number {i} and why it matters." for i in range(32)]


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
    monkeypatch.setattr(lc, "llama_memory_seq_cp", lambda mem, src, dst, p0, p1: copies.append((src, dst)) or real_cp(mem, src, dst, p0, p1))
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
    from isheep_lite import models

    assert models.gguf_info(smol_gguf).kv_bytes_per_cell == 2 * 30 * 3 * 64 * 2  # SmolLM2-135M: 22.5 KiB
    cfg = json.loads((tiny["hf"] / "config.json").read_text())
    head = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    per_cell = 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * head * 2
    assert models.gguf_info(tiny["gguf"]).kv_bytes_per_cell == per_cell
    assert models.fit_parallel(16, 2048, 23040, 4 << 30) == 16
    assert models.fit_parallel(16, 2048, 23040, 200 << 20) == 3  # 200 MiB / (2048 × 22.5 KiB) = 4.4 streams, one for the prefix
    assert models.fit_parallel(16, 2048, 23040, 1) == 1  # never zero sequences
    with Engine(tiny["gguf"], n_ctx=256, n_parallel=16, kv_budget_gb=4 * 256 * per_cell / 2**30) as e:  # 3 + the prefix
        assert e.n_parallel == 3


def test_magpie_prefix_ends_where_the_user_turn_begins(tiny_engine: Engine) -> None:
    prefix = synth.magpie_prefix(tiny_engine.info)
    assert prefix.endswith("<|im_start|>user\n") and "<|im_start|>system" in prefix
    assert synth.parse_magpie(" Write a poem about rain. ", truncated=False) == [{"instruction": "Write a poem about rain.", "input": ""}]
    assert synth.parse_magpie("Write a poem about", truncated=True) == []


@pytest.mark.slow
def test_zero_seed_mode_writes_instructions_on_the_embedded_model(smol_gguf: Path, tmp_path: Path) -> None:
    cfg = SynthConfig(source="magpie", num_instructions=4, max_tokens=96, max_prompts=32)
    with Engine(smol_gguf, n_ctx=512, n_parallel=8) as e:
        kept, rejected = synth.generate_instructions(e, [], cfg, FilterConfig(), 0, 1, tmp_path / "c.jsonl")
    assert len(kept) == 4, rejected
    assert all(k["instruction"].strip() and k["source"] == "magpie" and k["parents"] == [] for k in kept)


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
    out = assess.assess(tiny_engine, recs, AssessConfig(ifd=True), "M_0", {}, lambda r: None)
    assert out[0]["ifd"] > 0 and out[0]["ifd"] == pytest.approx(assess.ifd(tiny_engine, recs)[0], rel=1e-3)


PREAMBLE = ("You are grading answers. Read the task carefully, think about what a careful expert would write, "
            "and compare it with the answer given below. Be strict about facts, format and length, and "
            "ignore the style of the answer unless the task asks for one. ")


def test_shared_prompt_prefix_is_evaluated_once_and_changes_nothing(tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Prompts with a long common start (as the few-shot meta-prompt and the assessment preamble
    have): greedy texts, scores and completion log-probs equal those computed without sharing."""
    from isheep_lite import engine as engine_mod

    assert engine_mod.shared_prefix([[1] * 40, [1] * 40], [39, 39]) == 39, "each sequence keeps its last token"
    assert engine_mod.shared_prefix([[1] * 40, [1] * 20 + [2] * 20], [39, 39]) == 20
    assert engine_mod.shared_prefix([[1] * 40, [1] * 5 + [2] * 35], [39, 39]) == 0, "below MIN_SHARED"
    assert engine_mod.shared_prefix([[1] * 40, [2] * 40], [39, 39]) == 0, "nothing in common"
    assert engine_mod.shared_prefix([[1] * 40], [39]) == 0, "one sequence shares with nobody"
    prompts = [PREAMBLE + f"Task {i}: say something about {i * 7}." for i in range(10)]
    completions = [f" The number {i * 7} is fine." for i in range(10)]
    ids = list(range(300, 340))
    greedy = [Sampling(max_tokens=16 + i) for i in range(10)]
    with Engine(tiny["gguf"], n_ctx=512, n_parallel=4) as e:
        n = engine_mod.shared_prefix([e.tokenize(p) for p in prompts], [10**6] * 10)
        assert n >= engine_mod.MIN_SHARED
        prefilled: list[int] = []
        real_prefill = e._prefill
        monkeypatch.setattr(e, "_prefill", lambda ctx, batch, toks: prefilled.append(len(toks)) or real_prefill(ctx, batch, toks))
        shared = (e.generate(prompts, greedy), e.score_many(prompts, ids),
                  e.completion_logprobs(prompts, completions), e.completion_logprobs([PREAMBLE * 2] * 10, completions))
        assert prefilled[0] == n and prefilled[1] == n and min(prefilled) > 0, prefilled
        monkeypatch.setattr(engine_mod, "MIN_SHARED", 10**6)  # sharing off
        plain = (e.generate(prompts, greedy), e.score_many(prompts, ids),
                 e.completion_logprobs(prompts, completions), e.completion_logprobs([PREAMBLE * 2] * 10, completions))
    assert sum(a.text == b.text for a, b in zip(shared[0], plain[0])) >= 9
    assert np.abs(np.array(shared[1]) - np.array(plain[1])).max() < 1e-3
    for got, want in zip(shared[2] + shared[3], plain[2] + plain[3]):
        assert got[1] == want[1] and got[0] == pytest.approx(want[0], abs=1e-2)
