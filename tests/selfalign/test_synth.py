"""synth.py: seed tasks, few-shot and zero-seed instruction generation, responses — on the tiny random Llama (real llama.cpp, seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from isheep_lite.config import FilterConfig, SynthConfig
from isheep_lite.engines.base import Completion, Sampling
from isheep_lite.engines.llamacpp import Engine
from isheep_lite.selfalign import synth


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

    WORDS = (
        "river",
        "violin",
        "budget",
        "glacier",
        "recipe",
        "satellite",
        "poem",
        "tax",
        "garden",
        "engine",
        "museum",
        "password",
        "volcano",
        "novel",
        "spreadsheet",
        "tennis",
        "vaccine",
        "harbour",
    )

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


def test_builtin_seeds_are_many_and_varied() -> None:
    seeds = synth.load_seeds("builtin")
    assert len(seeds) >= 100
    from importlib import resources

    rows = [json.loads(x) for x in resources.files("isheep_lite").joinpath("data/seeds.jsonl").read_text().splitlines()]
    assert len({r["category"] for r in rows}) >= 8


def test_fewshot_prompt_and_parsing() -> None:
    prompt = synth.fewshot_prompt([{"instruction": "Name a colour.", "input": ""}, {"instruction": "Fix it.", "input": "teh"}])
    assert "Task 1\nInstruction: Name a colour.\nInput: <noinput>" in prompt
    assert prompt.endswith("Task 3\nInstruction:")
    completion = " Give two uses of salt.\nInput: <noinput>\n\nTask 4\nInstruction: Translate to French.\nInput: Good night\n\nTask 5\nInstruction: Write a"
    tasks = synth.parse_tasks(completion, truncated=True)
    assert tasks == [{"instruction": "Give two uses of salt.", "input": ""}, {"instruction": "Translate to French.", "input": "Good night"}]
    assert len(synth.parse_tasks(completion, truncated=False)) == 3


def test_an_output_the_model_writes_after_a_task_is_not_part_of_its_input() -> None:
    completion = " Clean the tables of this room.\nInput: The big hall.\nOutput: after christening of the god\n\nTask 4\nInstruction: Sort.\nInput: b a Output: a b\n\n"
    tasks = synth.parse_tasks(completion, truncated=False)
    assert [t["input"] for t in tasks[:2]] == ["The big hall.", "b a"]


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


def test_waves_fit_what_is_missing_and_are_cut_the_same_on_resume(tmp_path: Path) -> None:
    assert [synth.wave_size(m, 16) for m in (0, 1, 2, 4, 8, 21, 22, 128)] == [1, 2, 3, 6, 12, 32, 32, 32]
    cfg = SynthConfig(num_instructions=2, max_prompts=20, tasks_per_prompt=1)
    counting = CountingEngine(ScriptedEngine())
    kept, _ = synth.generate_instructions(counting, synth.load_seeds("builtin"), cfg, FilterConfig(), 0, 1, tmp_path / "c.jsonl")  # type: ignore[arg-type]
    logged = [json.loads(x)["prompt"] for x in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert len(kept) == 2 and logged[:3] == [0, 1, 2], "a need of 2 asks 3 prompts first, not 2 × n_parallel"
    assert len(logged) < 2 * counting.n_parallel
    # killed after its first wave, a run goes on with the waves the uninterrupted run cut
    cfg = SynthConfig(num_instructions=12, max_prompts=60, tasks_per_prompt=1)
    whole, cut = tmp_path / "whole.jsonl", tmp_path / "cut.jsonl"
    seeds = synth.load_seeds("builtin")
    expected = synth.generate_instructions(CountingEngine(ScriptedEngine()), seeds, cfg, FilterConfig(), 0, 1, whole)  # type: ignore[arg-type]
    lines = whole.read_text().splitlines(keepends=True)
    assert len(lines) > 2 * counting.n_parallel, "more than one wave"
    cut.write_text("".join(lines[: 2 * counting.n_parallel]))
    resumed = CountingEngine(ScriptedEngine())
    assert synth.generate_instructions(resumed, seeds, cfg, FilterConfig(), 0, 1, cut) == expected  # type: ignore[arg-type]
    assert cut.read_text() == whole.read_text() and resumed.calls == len(lines) - 2 * counting.n_parallel


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
