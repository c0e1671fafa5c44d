"""Every knob of a run, as dataclasses: their defaults are the default recipe, a field's comment is its documentation."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


def knob(
    default: Any, doc: str, *, gt: float | None = None, ge: float | None = None, lt: float | None = None, le: float | None = None
) -> Any:
    """A recipe field: its default, its one-line documentation (the commented YAML is generated from
    it: `commented_yaml`), and its range, checked by `validate`."""
    meta = {"doc": doc, "gt": gt, "ge": ge, "lt": lt, "le": le}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


POS = {"gt": 0}  # > 0


NONNEG = {"ge": 0}  # ≥ 0


@dataclass
class ModelConfig:
    gguf: str = knob("embedded:smollm2-135m-instruct", "GGUF for generation: embedded:<name> or a local path")
    hf: str | None = knob(None, "HF weights for training (a local dir or an offline HF-cache id); null = dequantise the GGUF once, cached")
    converter: str | None = knob(
        None, "llama.cpp's convert_hf_to_gguf.py: make the generation GGUF from model.hf (F16, once, cached) instead of model.gguf"
    )
    backend: Literal["llama_cpp", "transformers", "openai"] = knob(
        "llama_cpp",
        "llama_cpp: the batched llama.cpp engine | transformers: PyTorch (models llama.cpp cannot run) | "
        "openai: an OpenAI-compatible server at base_url (the loop starts it with serve_command)",
    )
    base_url: str | None = knob(None, "openai backend: the server's OpenAI-compatible root, e.g. http://127.0.0.1:8080/v1")
    serve_command: str | None = knob(
        None,
        "openai backend: the command that serves a GGUF at base_url, with {gguf} where the file goes; the loop runs it "
        "for each model it serves and stops it before training",
    )
    serve_lora: bool = knob(
        False,
        "openai backend: the server (vLLM with --enable-lora, run by you) keeps serving M_0 as served_name and each M_t "
        "is its LoRA adapter, loaded at run time; needs loop.train_from=base and the server's view of this run's files",
    )
    served_name: str | None = knob(None, "openai backend: the model id the server lists, when it is not the GGUF's file name (an alias)")
    serve_timeout_s: float = knob(600.0, "openai backend: seconds a started server may take to answer", **POS)
    retry_s: float = knob(
        300.0, "openai backend: seconds a request is retried, with backoff, while the server is unreachable or fails", **POS
    )
    serve_base: Literal["export", "original"] = knob(
        "export", "export: serve M_0 as F16 like every M_t (the shipped Q4_1 answers worse) | original: the GGUF as given"
    )
    n_ctx: int = knob(2048, "llama.cpp context window per sequence", **POS)
    n_threads: int = knob(0, "CPU threads for llama.cpp; 0 = all cores", **NONNEG)
    n_parallel: int = knob(16, "sequences decoded together; KV memory grows with n_parallel × n_ctx", **POS)
    kv_budget_gb: float = knob(
        4.0, "KV cache the batched context may take; n_parallel is lowered until it fits (bytes per cell from the GGUF)", **POS
    )


@dataclass
class LoopConfig:
    iterations: int = knob(2, "self-alignment iterations (small models peak around iteration 2 in the I-SHEEP paper)", **POS)
    train_from: Literal["base", "previous"] = knob("base", "base: M_t+1 = SFT(M_0, D_t), the paper's One_base | previous: SFT(M_t, D_t)")
    data: Literal["latest", "cumulative"] = knob("latest", "latest: train on D_t only | cumulative: D_1 ∪ … ∪ D_t")
    seed: int = knob(0, "every random stream of the run derives from this")
    promote: Literal["best", "latest"] = knob(
        "best", "best: the next iteration starts from the best model so far (a worse M_t is not promoted) | latest"
    )
    stop_when_worse: bool = knob(False, "end the run at the first iteration flagged worse than the best")


@dataclass
class SynthConfig:
    num_instructions: int = knob(128, "usable instructions to collect per iteration, after the instruction filters (paper: 10 000)", **POS)
    source: Literal["seeds", "magpie"] = knob(
        "seeds", "seeds: few-shot from seed tasks (the paper) | magpie: zero-seed, the model writes the user turn"
    )
    seeds: str = knob("builtin", "builtin (115 tasks, 13 categories) | a path to a JSONL of {instruction, input?, output?}")
    few_shot: int = knob(5, "seed tasks shown per generation prompt, drawn uniformly (paper: 5)", **POS)
    temperature: float = knob(1.0, "instruction sampling temperature (paper: 1.0)", **NONNEG)
    top_p: float = knob(0.95, "instruction sampling nucleus (paper: 0.95)", gt=0, le=1)
    tasks_per_prompt: int = knob(2, "new tasks read from each completion (generation stops after them)", **POS)
    max_tokens: int = knob(192, "tokens per instruction-generation completion", **POS)
    max_prompts: int = knob(400, "give up after this many generation prompts per iteration", **POS)
    response_temperature: float = knob(0.7, "response sampling temperature", **NONNEG)
    response_top_p: float = knob(0.95, "response sampling nucleus", gt=0, le=1)
    response_max_tokens: int = knob(320, "a response that hits this is dropped as truncated", **POS)
    verifiable_fraction: float = knob(
        0.5,
        "verifiable self-feedback: this share of the instructions gets a checkable constraint appended (worded apart from the "
        "evaluation sets); answers that break it are dropped before grading (on IFEval 0, 0.5 and 1.0 all lose a little: no "
        "share gains; docs/measurements.md: which recipe moves IFEval)",
        ge=0,
        le=1,
    )
    responses_per_instruction: int = knob(
        1, "best-of-n: answers sampled per instruction; the self-assessment keeps the best-graded one (needs assess.enabled)", ge=1, le=16
    )


@dataclass
class AssessConfig:
    aspects: list[str] = knob(
        ["verdict"],
        'graded separately: verdict (yes/no "answers the instruction correctly?", calibrated: the only '
        "self-grade of the embedded model whose AUROC on the labelled sets excludes chance) | quality, "
        "following (the paper's pair, at chance here); docs/measurements.md: assessment",
    )
    scale: int = knob(9, "scores 1..scale; ≤ 9 keeps every score one token, read from log-probs in one step")
    mode: Literal["logprob", "grammar", "generate"] = knob(
        "logprob", "logprob: expected score from next-token probabilities | grammar: GBNF-constrained digit | generate: parse a free reply"
    )
    assessor: Literal["current", "base"] = knob(
        "current", "current: M_t grades its own pairs | base: M_0 grades every iteration (the paper's scripts)"
    )
    enabled: bool = knob(True, "false: no self-assessment, the rule filters alone select (recipes/ablations/no_assessment.yaml)")
    ifd: bool = knob(False, "also record IFD = PPL(answer | instruction) / PPL(answer | empty request) per pair")
    calibrate: bool = knob(True, "score = what the judge says minus what it says with the instruction withheld (contextual calibration)")


@dataclass
class FilterConfig:
    min_score: float | None = knob(None, "keep pairs whose every aspect score ≥ this (paper: > 8 of 10); null = no threshold")
    keep_top: float | None = knob(
        0.5,
        "then keep this top fraction, ranked by rank_by (a rank cut keeps that share however "
        "the judge spreads its scale); null = no rank cut",
        gt=0,
        le=1,
    )
    rank_by: Literal["score", "ifd", "score+ifd"] = knob(
        "score", "score: mean self-score | ifd: lowest IFD (judge-free) | score+ifd: mean of both ranks; ifd needs assess.ifd"
    )
    max_ifd: float | None = knob(
        None, "drop pairs with IFD ≥ this (1.0: the instruction does not help predict the answer); needs assess.ifd", gt=0
    )
    min_words: int = knob(4, "instruction length bounds in words (paper: more than 3 …", **NONNEG)
    max_words: int = knob(150, "… and at most 150)", **POS)
    dedup_rouge_l: float = knob(0.7, "drop an instruction whose ROUGE-L F1 to a kept one or a seed is ≥ this", gt=0, le=1)
    max_response_words: int = knob(250, "longer answers are dropped", **POS)


@dataclass
class TrainConfig:
    backend: Literal["hf", "unsloth", "auto"] = knob(
        "hf", "hf: transformers + peft + trl | unsloth: Unsloth (the gpu extra) | auto: unsloth where installed, else hf"
    )
    load_in_4bit: bool = knob(True, "CUDA only: QLoRA on an NF4 base (a CPU trains a 16/32-bit base)")
    auto_batch: bool = knob(True, "CUDA only: micro-batch from the memory planner and the free VRAM, same effective batch")
    lora_r: int = knob(16, "paper: 8; 16 chose the lever sweep (docs/measurements.md)", **POS)
    lora_alpha: int = knob(32, "paper: 16 (alpha/r = 2 kept)", **POS)
    lora_dropout: float = knob(0.0, "0 keeps Unsloth on its fast path (it patches its LoRA kernels in only with dropout 0)", ge=0, lt=1)
    target_modules: list[str] = knob(
        ["auto"],
        "auto: every linear layer of the decoder blocks, read from the model (q/k/v/o and gate/up/down; Phi-3: "
        "qkv_proj, gate_up_proj; never lm_head, embeddings or a vision tower) | a list, e.g. [q_proj, v_proj]",
    )
    objective: Literal["sft", "dpo", "sft+dpo"] = knob(
        "sft",
        "sft: fine-tune on the kept answers (the paper) | dpo: a preference step instead, from each instruction's best- and "
        "worst-graded answers (needs synth.responses_per_instruction ≥ 2) | sft+dpo: SFT, then that preference step",
    )
    dpo_beta: float = knob(0.1, "DPO's β: how far the preference step may move from the reference (the model without the adapter)", **POS)
    dpo_lr: float = knob(5.0e-5, "learning rate of the preference step", **POS)
    dpo_margin: float = knob(1.0, "a pair counts as a preference only if its two answers' scores differ by at least this", **NONNEG)
    epochs: float = knob(2.0, "paper: 2", **POS)
    lr: float = knob(1.0e-4, "learning rate", **POS)
    batch_size: int = knob(4, "micro-batch", **POS)
    grad_accum: int = knob(1, "effective batch = batch_size × grad_accum", **POS)
    warmup_steps: int = knob(2, "linear warm-up steps", **NONNEG)
    max_seq_len: int = knob(512, "longer examples are dropped, never cut (a cut answer teaches no stop)", **POS)
    checkpoint_steps: int = knob(5, "a killed training resumes from its last checkpoint, saved every N steps (0 = never)", **NONNEG)
    threads: int = knob(0, "torch CPU threads; 0 = all cores", **NONNEG)
    processes: int = knob(
        1,
        "training processes under torch.distributed (DDP; one per GPU, gloo on a CPU); each takes an equal share of "
        "the effective batch, so the global batch stays batch_size × grad_accum",
        **POS,
    )


@dataclass
class ExportConfig:
    types: list[str] = knob(["f16"], "first = master (f16 | f32); add q8_0, q4_k_m … to also quantise")
    mode: Literal["auto", "adapter", "merged"] = knob(
        "auto",
        "merged: a whole GGUF per iteration | adapter: a GGUF LoRA adapter applied to the served base, the merged "
        "model only for the final one | auto: adapter from 3B parameters where the architecture's GGUF adapter is exact",
    )


@dataclass
class EvalConfig:
    stop_prompts: int = knob(20, "held-out prompts for the stop-rate check (0 = skip)", **NONNEG)
    max_tokens: int = knob(512, 'an answer still going at this length counts as "never stops"', **POS)
    ifeval_prompts: int = knob(
        160, "IFEval prompts, lm-evaluation-harness's checker: 541 = all, fewer = stratified (0 = skip)", ge=0, le=541
    )
    suite_prompts: int = knob(0, "the quick suite: 20 constraint kinds; promotion does not read it (0 = skip; max 160)", ge=0, le=160)
    suite_max_tokens: int = knob(384, "tokens per answer of IFEval, the suite and the held-out set", **POS)
    heldout_prompts: int = knob(
        80,
        "the second instruction-following set: its own topics and phrasings, 2-3 constraints per prompt, a prompt passes "
        "only if all hold (0 = skip; max 80)",
        ge=0,
        le=80,
    )
    knowledge_questions: int = knob(120, "short-answer factual questions that catch forgetting (0 = skip; max 120)", ge=0, le=120)
    knowledge_tolerance: float = knob(
        0.03, "M_t is not promoted if its knowledge-probe accuracy is below M_0's or the best model's by more than this", ge=0, le=1
    )
    pairwise: bool = knob(True, "judge M_t's answers to the stop-rate prompts against M_0's, in both orders")
    judge: str = knob("base", "base: M_0 judges every iteration | current: M_t judges | a GGUF path")
    worse_confidence: float = knob(0.9, "M_t is flagged worse when P(worse than the best) ≥ this (paired bootstrap)", ge=0.5, lt=1)


@dataclass
class Recipe:
    name: str = knob("smollm2-135m-cpu", "the run directory is <runs_dir>/<name>")
    runs_dir: str = knob("runs", "where run directories are made")
    model: ModelConfig = field(default_factory=ModelConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    assess: AssessConfig = field(default_factory=AssessConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = ("model", "loop", "synth", "assess", "filter", "train", "export", "eval")


ASPECTS = {"quality", "following", "verdict"}


EXPORT_TYPES = {"f16", "f32", "q8_0", "q4_k_m", "q4_0", "q5_k_m", "q6_k"}


def choices(cls: type, name: str) -> tuple[str, ...] | None:
    """The allowed values of a Literal-typed field, else None."""
    tp = typing.get_type_hints(cls)[name]
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


def fields(r: Recipe | None = None) -> list[tuple[str, str, dataclasses.Field]]:
    """(section, key, field) of every knob, in declaration order (section "" for the top-level keys)."""
    r = r or Recipe()
    out = [("", f.name, f) for f in dataclasses.fields(Recipe) if f.name not in SECTIONS]
    for section in SECTIONS:
        out += [(section, f.name, f) for f in dataclasses.fields(getattr(r, section))]
    return out
