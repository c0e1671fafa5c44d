"""The recipe: every knob of a run, as dataclasses.

The dataclass defaults *are* the default recipe (what `isheep run` with no arguments runs);
`recipes/smollm2/135m_lora_cpu.yaml` writes them out with comments. A field's comment is its
documentation. Recipes load from YAML and take dotted `section.key=value` overrides; every
problem is raised as a `UserError` with one line that names it, before any work starts.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class UserError(Exception):
    """Bad input from the user: the CLI prints the message as one line and exits with code 2."""


@dataclass
class ModelConfig:
    gguf: str = "embedded:smollm2-135m-instruct"  # GGUF used for generation: `embedded:…` or a path
    hf: str | None = None  # HF weights for training: local dir or HF-cache repo id; null = dequantise the GGUF
    converter: str | None = None  # path to llama.cpp's convert_hf_to_gguf.py: make the generation GGUF (F16, cached) from model.hf instead of model.gguf
    backend: str = "llama_cpp"  # llama_cpp: the batched llama.cpp engine | transformers: PyTorch (models llama.cpp cannot run) | openai: a server (`isheep eval --server` only)
    base_url: str | None = None  # openai backend: the server's OpenAI-compatible root, e.g. http://127.0.0.1:8080/v1
    serve_base: str = "export"  # export: serve M_0 re-exported like every M_t (F16) | original: the GGUF as given
    n_ctx: int = 2048  # llama.cpp context window per sequence
    n_threads: int = 0  # CPU threads for llama.cpp; 0 = all cores
    n_parallel: int = 16  # sequences decoded together (KV memory grows with n_parallel × n_ctx)
    kv_budget_gb: float = 4.0  # KV cache the batched context may take; n_parallel is lowered to fit (bytes/cell from the GGUF)


@dataclass
class LoopConfig:
    iterations: int = 2  # self-alignment iterations
    train_from: str = "base"  # base: M_{t+1}=SFT(M_0, D_t) (the paper's One_base) | previous: SFT(M_t, D_t)
    data: str = "latest"  # latest: train on D_t only | cumulative: D_1 ∪ … ∪ D_t
    seed: int = 0  # one seed for every random stream of the run
    promote: str = "best"  # best: generate with the best model so far (a worse M_t is not promoted) | latest
    stop_when_worse: bool = False  # end the run at the first iteration flagged worse than the best


@dataclass
class SynthConfig:
    num_instructions: int = 128  # usable instructions to collect per iteration (after instruction filters)
    source: str = "seeds"  # seeds: few-shot from seed tasks (the paper) | magpie: zero-seed, the model writes the user turn
    seeds: str = "builtin"  # builtin | path to a JSONL of {"instruction", "input"?, "output"?}
    few_shot: int = 5  # seed tasks shown per generation prompt (the paper: 5, drawn uniformly)
    temperature: float = 1.0  # instruction sampling temperature (paper: 1.0)
    top_p: float = 0.95  # instruction sampling nucleus (paper: 0.95)
    tasks_per_prompt: int = 2  # new tasks read from each completion (it stops after them)
    max_tokens: int = 192  # tokens per instruction-generation completion
    max_prompts: int = 400  # give up after this many generation prompts per iteration
    response_temperature: float = 0.7  # response sampling temperature
    response_top_p: float = 0.95
    response_max_tokens: int = 320  # a response that hits this is dropped as truncated


@dataclass
class AssessConfig:
    # Default: the yes/no verdict, calibrated — the only self-grade of the embedded model whose AUROC on
    # the labelled sets excludes chance (0.63 pooled; quality+following, the paper's pair: 0.50), and it
    # tied quality+following in the loop over three training seeds (docs/measurements.md: assessment, lever sweep).
    aspects: list[str] = field(default_factory=lambda: ["verdict"])  # scored separately; also: quality, following
    scale: int = 9  # scores 1..scale; ≤ 9 keeps every score one token, so log-probs read it in one step
    mode: str = "logprob"  # logprob: expected score from next-token probabilities | grammar: GBNF-constrained digit | generate: parse a free reply
    assessor: str = "current"  # current: M_t grades its own pairs | base: M_0 grades every iteration
    enabled: bool = True  # false: no self-assessment at all, the rule filters alone select (an ablation)
    ifd: bool = False  # also record IFD = PPL(response | instruction) / PPL(response | empty request) per pair
    calibrate: bool = True  # subtract what the judge says with the instruction withheld (contextual calibration)


@dataclass
class FilterConfig:
    min_score: float | None = None  # keep pairs whose every aspect score ≥ this (paper: > 8 of 10)
    keep_top: float | None = 0.5  # then keep this top fraction, ranked by rank_by; null = no rank cut
    rank_by: str = "score"  # keep_top ranks by: score (self-assessment) | ifd (−IFD, judge-free) | score+ifd (mean of both ranks); ifd needs assess.ifd
    max_ifd: float | None = None  # drop pairs whose IFD ≥ this (1.0: the instruction does not help predict the answer); needs assess.ifd
    min_words: int = 4  # instruction length bounds in words (paper: more than 3 …
    max_words: int = 150  # … and at most 150)
    dedup_rouge_l: float = 0.7  # drop an instruction whose ROUGE-L F1 to a kept one or a seed is ≥ this
    max_response_words: int = 250


@dataclass
class TrainConfig:
    backend: str = "hf"  # hf: transformers+peft+trl | unsloth: Unsloth (the gpu extra) | auto: unsloth where installed, else hf
    load_in_4bit: bool = True  # on CUDA: QLoRA on an NF4 base (ignored on CPU, which trains a 16/32-bit base)
    auto_batch: bool = True  # on CUDA: micro-batch from the memory planner and the free VRAM, same effective batch
    lora_r: int = 16  # chosen by measurement: bench/results/lever-sweep.json (r 16 beat r 8 and every other lever tried)
    lora_alpha: int = 32  # scale alpha/r = 2, as the paper's 16/8
    lora_dropout: float = 0.0  # 0: Unsloth patches its fast LoRA kernels into a layer only when dropout is 0 (any other value trains on its slow path)
    # auto (stored as [auto]): every linear layer of the decoder blocks, read from the model itself (q/k/v/o and
    # gate/up/down on Llama/Qwen/Mistral/Gemma, qkv_proj and gate_up_proj on Phi-3; never lm_head, embeddings or
    # a vision/audio tower) | an explicit list of module names, e.g. [q_proj, v_proj]
    target_modules: list[str] = field(default_factory=lambda: ["auto"])
    epochs: float = 2.0  # paper: 2
    lr: float = 1.0e-4
    batch_size: int = 4  # micro-batch
    grad_accum: int = 1  # effective batch = batch_size × grad_accum
    warmup_steps: int = 2
    max_seq_len: int = 512  # longer examples are dropped, never cut (a cut answer teaches no stop)
    checkpoint_steps: int = 5  # save a resumable checkpoint every N optimizer steps (0 = never)
    threads: int = 0  # torch CPU threads; 0 = all cores


@dataclass
class ExportConfig:
    types: list[str] = field(default_factory=lambda: ["f16"])  # f16 master; add q8_0 / q4_k_m to also quantise
    mode: str = "auto"  # merged: a whole GGUF per iteration | adapter: a GGUF LoRA adapter applied to the served base at load time, the merged model only for the final one | auto: adapter from 3B parameters


@dataclass
class EvalConfig:
    stop_prompts: int = 20  # held-out prompts for the stop-rate check (0 = skip)
    max_tokens: int = 512  # an answer still going at this length counts as "never stops"
    suite_prompts: int = 40  # instruction-following suite prompts, balanced over 20 constraint kinds (0 = skip; max 160)
    suite_max_tokens: int = 384
    pairwise: bool = True  # judge M_t's answers to the stop-rate prompts against M_0's, both orders
    judge: str = "base"  # base: M_0 judges every iteration | current: M_t judges | a GGUF path
    worse_confidence: float = 0.9  # flag M_t worse than the best when P(worse) under a paired bootstrap ≥ this


@dataclass
class Recipe:
    name: str = "smollm2-135m-cpu"  # the run directory is <runs_dir>/<name>
    runs_dir: str = "runs"
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


# ---- choices and ranges checked by validate() ---------------------------------------------------
CHOICES = {
    "model.serve_base": {"export", "original"},
    "model.backend": {"llama_cpp", "transformers", "openai"},
    "loop.train_from": {"base", "previous"},
    "loop.data": {"latest", "cumulative"},
    "loop.promote": {"best", "latest"},
    "synth.source": {"seeds", "magpie"},
    "assess.mode": {"logprob", "grammar", "generate"},
    "filter.rank_by": {"score", "ifd", "score+ifd"},
    "assess.assessor": {"current", "base"},
    "train.backend": {"hf", "unsloth", "auto"},
    "export.mode": {"auto", "adapter", "merged"},
}
POSITIVE = (
    "loop.iterations", "synth.num_instructions", "synth.few_shot", "synth.tasks_per_prompt", "synth.max_tokens",
    "synth.max_prompts", "synth.response_max_tokens", "model.n_ctx", "model.n_parallel", "model.kv_budget_gb", "train.lora_r", "train.lora_alpha",
    "train.epochs", "train.lr", "train.batch_size", "train.grad_accum", "train.max_seq_len", "eval.max_tokens",
    "eval.suite_max_tokens",
)
NON_NEGATIVE = (
    "synth.temperature", "synth.response_temperature", "model.n_threads", "train.warmup_steps", "train.threads",
    "train.checkpoint_steps",
    "eval.stop_prompts", "eval.suite_prompts",
)
ASPECTS = {"quality", "following", "verdict"}
EXPORT_TYPES = {"f16", "f32", "q8_0", "q4_k_m", "q4_0", "q5_k_m", "q6_k"}


def _closest(name: str, options: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp` (as a string, from `from __future__ import annotations`)."""
    tp = str(tp)
    optional = "None" in tp
    if value is None:
        if optional:
            return None
        raise UserError(f"recipe: {where} may not be null")
    base = tp.replace(" | None", "")
    if base == "bool":
        if isinstance(value, bool):
            return value
    elif base == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base == "float":
        if isinstance(value, str):  # YAML 1.1 reads "2e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif base == "str":
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif base == "list[str]":
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    else:  # pragma: no cover - a new annotation kind must be added above
        raise TypeError(f"unsupported annotation {tp}")
    raise UserError(f"recipe: {where} must be {base}, got {value!r}")


def _apply(obj: Any, data: dict[str, Any], prefix: str = "") -> None:
    if not isinstance(data, dict):
        raise UserError(f"recipe: '{prefix.rstrip('.') or 'top level'}' must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in fields:
            raise UserError(f"recipe: unknown key '{where}'{_closest(str(key), fields)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _apply(current, value, where + ".")
        else:
            setattr(obj, key, _coerce(value, fields[key].type, where))


def parse_override(text: str) -> dict[str, Any]:
    """`synth.num_instructions=64` → {"synth": {"num_instructions": 64}} (value parsed as YAML)."""
    if "=" not in text:
        raise UserError(f"override '{text}' is not of the form section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"recipe file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"recipe {p}:{line} is not valid YAML ({getattr(e, 'problem', e)})") from None
    except UnicodeDecodeError:
        raise UserError(f"recipe {p} is not UTF-8 text") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"recipe {p} must be a YAML mapping at the top level")
    return data


def load(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Recipe:
    """Defaults, then the YAML file (if any), then each override, then validation."""
    layers = ([load_yaml(path)] if path is not None else []) + [parse_override(t) for t in overrides]
    return from_dict(*layers)


def from_dict(*layers: dict[str, Any]) -> Recipe:
    """Defaults with each mapping applied in turn, validated."""
    recipe = Recipe()
    for data in layers:
        _apply(recipe, data)
    validate(recipe)
    return recipe


def validate(r: Recipe) -> None:
    """Ranges and choices; raises UserError naming the first problem."""
    for dotted, options in CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(r, section), key)
        if value not in options:
            raise UserError(f"recipe: {dotted} must be one of {sorted(options)}, got '{value}'{_closest(value, options)}")

    for dotted in POSITIVE + NON_NEGATIVE:
        section, key = dotted.split(".")
        value = getattr(getattr(r, section), key)
        if value < 0 or (value == 0 and dotted in POSITIVE):
            raise UserError(f"recipe: {dotted} must be {'> 0' if dotted in POSITIVE else '≥ 0'}, got {value}")
    for name in ("top_p", "response_top_p"):
        v = getattr(r.synth, name)
        if not 0 < v <= 1:
            raise UserError(f"recipe: synth.{name} must be in (0, 1], got {v}")
    if not 0 <= r.train.lora_dropout < 1:
        raise UserError(f"recipe: train.lora_dropout must be in [0, 1), got {r.train.lora_dropout}")
    targets = r.train.target_modules
    if not (targets in ("auto", ["auto"]) or (isinstance(targets, list) and targets
                                              and all(isinstance(t, str) and t and t != "auto" for t in targets))):
        raise UserError(f"recipe: train.target_modules must be auto or a non-empty list of module names, got {targets!r}")
    if not 2 <= r.assess.scale <= 9:
        raise UserError(f"recipe: assess.scale must be 2..9 (one token per score), got {r.assess.scale}")
    if not r.assess.aspects or not set(r.assess.aspects) <= ASPECTS:
        raise UserError(f"recipe: assess.aspects must be a non-empty subset of {sorted(ASPECTS)}, got {r.assess.aspects}")
    if r.filter.keep_top is not None and not 0 < r.filter.keep_top <= 1:
        raise UserError(f"recipe: filter.keep_top must be in (0, 1] or null, got {r.filter.keep_top}")
    if r.filter.min_score is not None and not 1 <= r.filter.min_score <= r.assess.scale:
        raise UserError(f"recipe: filter.min_score must be in 1..assess.scale or null, got {r.filter.min_score}")
    if r.filter.max_ifd is not None and (not r.assess.ifd or r.filter.max_ifd <= 0):
        raise UserError("recipe: filter.max_ifd needs assess.ifd: true and a value > 0")
    if r.filter.rank_by != "score" and not r.assess.ifd:
        raise UserError(f"recipe: filter.rank_by={r.filter.rank_by} needs assess.ifd: true")
    # (assess.calibrate only changes how grades are made: with no grades it has nothing to do)
    if not r.assess.enabled and (r.filter.keep_top is not None or r.filter.min_score is not None or r.assess.ifd):
        raise UserError("recipe: assess.enabled: false selects by rule filters alone; set filter.keep_top: null, "
                        "filter.min_score: null and assess.ifd: false")
    if r.model.backend == "openai" and not r.model.base_url:
        raise UserError("recipe: model.backend=openai needs model.base_url (e.g. http://127.0.0.1:8080/v1)")
    if r.model.backend == "openai" and r.assess.ifd:
        raise UserError("recipe: assess.ifd needs per-token log-probs, which model.backend=openai does not offer")
    if r.model.backend == "transformers" and r.assess.mode == "grammar":
        raise UserError("recipe: model.backend=transformers has no grammar sampling; use assess.mode logprob or generate")
    if r.filter.min_words > r.filter.max_words:
        raise UserError("recipe: filter.min_words must be ≤ filter.max_words")
    if not 0 < r.filter.dedup_rouge_l <= 1:
        raise UserError(f"recipe: filter.dedup_rouge_l must be in (0, 1], got {r.filter.dedup_rouge_l}")
    if not 0.5 <= r.eval.worse_confidence < 1:
        raise UserError(f"recipe: eval.worse_confidence must be in [0.5, 1), got {r.eval.worse_confidence}")
    if not r.export.types or r.export.types[0] not in {"f16", "f32"}:
        raise UserError(f"recipe: export.types must start with f16 or f32 (the master export), got {r.export.types}")
    for t in r.export.types:
        if t not in EXPORT_TYPES:
            raise UserError(f"recipe: unknown export type '{t}'{_closest(t, EXPORT_TYPES)}; choose from {sorted(EXPORT_TYPES)}")
    if not r.name or "/" in r.name or r.name.startswith("."):
        raise UserError(f"recipe: name must be a plain directory name, got '{r.name}'")


def dump_yaml(r: Recipe) -> str:
    return yaml.safe_dump(r.to_dict(), sort_keys=False, allow_unicode=True)
