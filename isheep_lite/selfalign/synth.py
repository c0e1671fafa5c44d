"""Synthesis: new instructions from seed tasks (in-context), then zero-shot responses.

Instruction generation is a raw completion, no chat template, as in I-SHEEP: a short
meta-prompt, `few_shot` seed tasks drawn uniformly, and the model continues the numbered list. Every
raw completion is logged (`completions.jsonl`) before it is parsed, so a resumed run re-parses what
it has instead of paying the model again; parsing and filtering are deterministic.
"""

from __future__ import annotations

import json
import random
import re
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable

from isheep_lite.config import FilterConfig, SynthConfig
from isheep_lite.engines.base import Completion, EngineBase, Sampling
from isheep_lite.gguf import chat, header
from isheep_lite.recipe import UserError
from isheep_lite.selfalign.filters import RougeIndex, instruction_reject_reason

META_PROMPT = (
    "Below is a list of diverse tasks that people ask an AI assistant to do. Each task is one clear, "
    "self-contained instruction, written as a command or a question, that can be answered in text alone "
    "(no images, files, audio or web browsing). The tasks cover many kinds of work: questions, "
    "brainstorming, rewriting, classification, extraction, summaries, code, maths word problems, planning, "
    'creative writing and advice. When a task needs a text to work on, it is given after "Input:"; '
    'otherwise the input is "<noinput>".\n\n'
)
NO_INPUT = "<noinput>"


# ---- seeds --------------------------------------------------------------------------------------
def load_seeds(spec: str) -> list[dict[str, str]]:
    """`builtin` → the project's seed set; otherwise a JSONL of {"instruction", "input"?, "output"?}."""
    if spec == "builtin":
        text = resources.files("isheep_lite").joinpath("data/seeds.jsonl").read_text(encoding="utf-8")
        origin = "builtin seeds"
    else:
        p = Path(spec).expanduser()
        if not p.is_file():
            raise UserError(f"seed file not found: {p}")
        lines = p.read_bytes().split(b"\n")
        for n, raw in enumerate(lines, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{p}:{n}: not UTF-8 text") from None
        text = b"\n".join(lines).decode("utf-8")
        origin = str(p)
    seeds = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{origin}:{n}: not valid JSON") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("instruction"), str) or not rec["instruction"].strip():
            raise UserError(f'{origin}:{n}: each line needs a non-empty string "instruction"')
        if not isinstance(rec.get("input", ""), str):
            raise UserError(f'{origin}:{n}: "input" must be a string')
        seeds.append({"instruction": rec["instruction"].strip(), "input": (rec.get("input") or "").strip()})
    if not seeds:
        raise UserError(f"{origin} has no seed tasks")
    return seeds


def user_message(instruction: str, input_text: str) -> str:
    return f"{instruction}\n\n{input_text}" if input_text else instruction


# ---- instruction generation ---------------------------------------------------------------------
def conversation(rec: dict[str, Any]) -> list[dict[str, str]]:
    """An answered instruction as the chat the model is trained on."""
    return [{"role": "user", "content": user_message(rec["instruction"], rec["input"])}, {"role": "assistant", "content": rec["response"]}]


def fewshot_prompt(examples: list[dict[str, str]]) -> str:
    parts = [META_PROMPT]
    for i, ex in enumerate(examples, 1):
        parts.append(f"Task {i}\nInstruction: {ex['instruction']}\nInput: {ex['input'] or NO_INPUT}\n\n")
    parts.append(f"Task {len(examples) + 1}\nInstruction:")
    return "".join(parts)


_TASK_SPLIT = re.compile(r"\n\s*Task\s+\d+\s*[:.]?\s*\n\s*Instruction\s*:", re.I)
_OUTPUT = re.compile(r"\bOutput\s*:", re.I)


def parse_tasks(completion: str, truncated: bool) -> list[dict[str, str]]:
    """The model's continuation of the list → [{"instruction", "input"}]; a cut-off last task is dropped."""
    blocks = _TASK_SPLIT.split(completion)
    if truncated:
        blocks = blocks[:-1]
    tasks = []
    for block in blocks:
        block = block.split("\n\n")[0] if "\nInput" not in block else block
        instruction, _, rest = block.partition("\nInput:")
        # the list has no outputs, but a model continuing it may write one: it is not part of the task
        input_text = _OUTPUT.split(rest.split("\n\n")[0], maxsplit=1)[0].strip()
        if input_text.lower() in {NO_INPUT, "noinput", "none", "n/a", ""}:
            input_text = ""
        tasks.append({"instruction": " ".join(instruction.split()), "input": input_text})
    return tasks


def magpie_prefix(info: header.GgufInfo) -> str:
    """Zero-seed mode (Magpie): the chat template rendered up to where the user's message begins.

    An instruction-tuned model continuing this text writes a user request of the kind it was tuned
    on, and ends it with its end-of-turn token — no seed tasks, no meta-prompt.
    """
    sentinel = "\x00USER\x00"
    text = chat.render_chat(info, [{"role": "user", "content": sentinel}], add_generation_prompt=False)
    if sentinel not in text:
        raise UserError("synth.source=magpie needs a chat template that shows the user's message")
    return text[: text.index(sentinel)]


def parse_magpie(completion: str, truncated: bool) -> list[dict[str, str]]:
    """A Magpie completion is one user message; a cut-off one is dropped."""
    text = completion.strip()
    return [] if truncated or not text else [{"instruction": text, "input": ""}]


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from the run seed, iteration and record index."""
    return random.Random(":".join(map(str, parts))).getrandbits(31)


def wave_size(missing: int, n_parallel: int) -> int:
    """Prompts for the next batched generation call, while `missing` instructions are still needed.

    Why not always the largest batch: on a CPU a wave's time grows nearly with its size (16 batched
    sequences decode only 2–3× faster than one), so 32 prompts for 8 missing instructions waste most
    of the stage (a 135 M model keeps about 0.7 instructions per prompt after the filters).
    1.5 prompts per missing instruction usually ends the stage in one wave; the cap, 2 × n_parallel,
    keeps large runs fully batched. The size depends only on what was kept so far, so a resumed run
    cuts the same waves.
    """
    return max(1, min(2 * n_parallel, (3 * missing + 1) // 2))


def generate_instructions(
    engine: EngineBase,
    seeds: list[dict[str, str]],
    cfg: SynthConfig,
    fcfg: FilterConfig,
    run_seed: int,
    iteration: int,
    completions_path: Path,
    avoid: Iterable[str] = (),
    progress: Callable[[int], None] = lambda n: None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Prompt until `cfg.num_instructions` instructions pass the rule filters and ROUGE-L dedup.

    Returns (instructions, rejected). Raw completions are appended to `completions_path` one per
    prompt; those already there are reused (resume).
    """
    from isheep_lite.rundir.jsonl import JsonlWriter, read_jsonl

    done = {c["prompt"]: c for c in read_jsonl(completions_path)}
    index = RougeIndex([s["instruction"] for s in seeds])
    for text in avoid:
        index.add(text)
    kept: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    # Past the first new tasks a small model drifts into prose: stop after `tasks_per_prompt` of them.
    magpie = cfg.source == "magpie"
    stop = () if magpie else (f"Task {cfg.few_shot + 1 + cfg.tasks_per_prompt}",)
    sampling = dict(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, stop=stop)
    prefix = magpie_prefix(engine.info) if magpie else ""
    start = 0
    with JsonlWriter(completions_path) as log:
        while start < cfg.max_prompts and len(kept) < cfg.num_instructions:
            ids = range(start, min(start + wave_size(cfg.num_instructions - len(kept), engine.n_parallel), cfg.max_prompts))
            start = ids.stop
            todo = [p for p in ids if p not in done]
            parents = {
                p: []
                if magpie
                else random.Random(derive_seed(run_seed, iteration, "fewshot", p)).sample(range(len(seeds)), min(cfg.few_shot, len(seeds)))
                for p in todo
            }
            outs = engine.generate(
                [prefix if magpie else fewshot_prompt([seeds[i] for i in parents[p]]) for p in todo],
                [Sampling(seed=derive_seed(run_seed, iteration, "instr", p), **sampling) for p in todo],
            )
            for p, out in zip(todo, outs):
                done[p] = {"prompt": p, "parents": parents[p], "text": out.text, "finish": out.finish_reason, "tokens": out.n_tokens}
                log.write(done[p], sync=False)
            log.flush()
            for p in ids:
                c = done[p]
                parse = parse_magpie if magpie else parse_tasks
                for j, task in enumerate(parse(c["text"], truncated=c["finish"] == "length")[: cfg.tasks_per_prompt]):
                    rec = {"id": f"it{iteration:02d}-p{p:04d}-{j}", **task, "source": cfg.source, "parents": c["parents"]}
                    reason = instruction_reject_reason(task["instruction"], fcfg)
                    if reason is None and index.max_f1(task["instruction"]) >= fcfg.dedup_rouge_l:
                        reason = "near_duplicate"
                    if reason:
                        rejected.append({**rec, "stage": "instruction", "reason": reason})
                        continue
                    index.add(task["instruction"])
                    kept.append(rec)
                    progress(1)
                    if len(kept) >= cfg.num_instructions:
                        return kept, rejected
    return kept, rejected


# ---- responses ----------------------------------------------------------------------------------
def candidates(instructions: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Each instruction `n` times, to be answered independently (best-of-n): sample 0 keeps the
    instruction's id (so its answer is the one n = 1 would give), sample k its id + "~k"; every
    candidate records its `instruction_id` and `sample`. Answer seeds derive from the candidate's id."""
    return [
        {**rec, "id": rec["id"] if k == 0 else f"{rec['id']}~{k}", "instruction_id": rec["id"], "sample": k}
        for rec in instructions
        for k in range(n)
    ]


def generate_responses(
    engine: EngineBase,
    instructions: list[dict[str, Any]],
    cfg: SynthConfig,
    run_seed: int,
    iteration: int,
    out_path: Path,
    progress: Callable[[int], None] = lambda n: None,
) -> list[dict[str, Any]]:
    """Zero-shot chat-template answers, one per instruction; appended per record, resumable.

    Instructions are answered in fixed waves of 4 × n_parallel. Why: in a batch, a sequence's
    logits depend (in the last bits) on which other sequences share the decode calls, and at
    temperature > 0 one flipped token changes the rest of the answer. A resumed run therefore
    regenerates an unfinished wave whole — the same prompts in the same batch as the uninterrupted
    run — and writes only the answers that are missing, so it ends with the same records.
    """
    from isheep_lite.rundir.jsonl import JsonlWriter, read_jsonl

    have = {r["id"]: r for r in read_jsonl(out_path)}
    progress(sum(r["id"] in have for r in instructions))
    wave = 4 * engine.n_parallel
    with JsonlWriter(out_path) as out:
        for start in range(0, len(instructions), wave):
            part = instructions[start : start + wave]
            if all(r["id"] in have for r in part):
                continue
            samplings = [
                Sampling(
                    temperature=cfg.response_temperature,
                    top_p=cfg.response_top_p,
                    max_tokens=cfg.response_max_tokens,
                    seed=derive_seed(run_seed, iteration, "resp", r["id"]),
                )
                for r in part
            ]

            def save(i: int, c: Completion) -> None:  # written as each answer finishes: a crash loses only the unfinished
                rec, s = part[i], samplings[i]
                if rec["id"] in have:
                    return
                row = {
                    **rec,
                    "response": c.text.strip(),
                    "gen": {"finish": c.finish_reason, "tokens": c.n_tokens, "temperature": s.temperature, "top_p": s.top_p},
                }
                out.write(row)
                have[rec["id"]] = row
                progress(1)

            engine.chat_many([[{"role": "user", "content": user_message(r["instruction"], r["input"])}] for r in part], samplings, save)
    return [have[r["id"]] for r in instructions]
