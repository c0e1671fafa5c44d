"""LoRA SFT on the kept pairs, in a child process: transformers + peft + trl, or Unsloth.

Backends (`train.backend`): `hf` is transformers + peft + trl — bitsandbytes NF4 QLoRA on CUDA
(`train.load_in_4bit`), plain LoRA on CPU. `unsloth` is Unsloth's FastLanguageModel (4-bit QLoRA on
CUDA; its CPU fallback trains LoRA), imported only here. `auto` takes Unsloth wherever it is
installed, else hf (see `resolve_backend`). Both train in one precision, from the GPU's compute
capability (`train_precision`: bf16 on Ampere and later, fp16 on a T4 or V100, fp32 on a CPU), and
LoRA-adapt the same layers: `train.target_modules: auto` reads them from the model (`lora_targets`).
On CUDA the micro-batch comes from the memory planner (planner.py)
and the free VRAM, and a CUDA out-of-memory error halves it for that step and the rest (the
gradient is the same: the halves are summed over the same token count), so no progress is lost.

Why a child process: when it exits, every byte it held (RAM, and VRAM on a GPU) is returned before
generation starts again — the usual complaint about running Unsloth/TRL and inference in one process.

Why we tokenize ourselves: the examples are tokenized by llama.cpp's own tokenizer (vocab-only load
of the GGUF the model is served from), prompt and completion separately, so training sees exactly
the token ids the model is prompted with at generation time. Labels are -100 over the prompt and
cover the whole assistant turn *including its end-of-turn token*: a model that never gets loss on
that token learns never to stop. Examples longer than `max_seq_len` are dropped, never cut, for the
same reason.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Literal

from . import models
from .recipe import TrainConfig, UserError
from .store import replace_dir


def build_examples(conversations: list[list[dict[str, str]]], gguf_path: Path, max_seq_len: int) -> tuple[list[dict[str, list[int]]], int]:
    """Conversations → [{"input_ids", "labels"}], plus the number dropped for length."""
    from llama_cpp import Llama

    from .tokens import prompt_ids

    info = models.gguf_info(gguf_path)
    vocab = Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    try:
        examples, dropped = [], 0
        for messages in conversations:
            prompt, completion = models.split_prompt_completion(info, messages)
            p_ids = prompt_ids(vocab, prompt)  # as the engine tokenizes it: one BOS
            c_ids = vocab.tokenize(completion.encode("utf-8"), add_bos=False, special=True)
            if len(p_ids) + len(c_ids) > max_seq_len:
                dropped += 1
                continue
            examples.append({"input_ids": p_ids + c_ids, "labels": [-100] * len(p_ids) + c_ids})
    finally:
        vocab.close()
    return examples, dropped


def build_preferences(pairs: list[dict[str, Any]], gguf_path: Path, max_seq_len: int) -> tuple[list[dict[str, list[int]]], int]:
    """Preference pairs {"prompt": [user message], "chosen": text, "rejected": text} → [{"prompt_ids",
    "chosen_ids", "rejected_ids"}] tokenized exactly as `build_examples` tokenizes SFT data (llama.cpp's
    tokenizer, one BOS, each answer with its end-of-turn token); pairs longer than `max_seq_len` dropped."""
    from llama_cpp import Llama

    from .tokens import prompt_ids

    info = models.gguf_info(gguf_path)
    vocab = Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    try:
        examples, dropped = [], 0
        for pair in pairs:
            ids = {}
            for side in ("chosen", "rejected"):
                prompt, completion = models.split_prompt_completion(info, [*pair["prompt"], {"role": "assistant", "content": pair[side]}])
                ids["prompt_ids"] = prompt_ids(vocab, prompt)
                ids[f"{side}_ids"] = vocab.tokenize(completion.encode("utf-8"), add_bos=False, special=True)
            if len(ids["prompt_ids"]) + max(len(ids["chosen_ids"]), len(ids["rejected_ids"])) > max_seq_len:
                dropped += 1
                continue
            examples.append(ids)
    finally:
        vocab.close()
    return examples, dropped


def resolve_backend(name: str, cuda: bool, has_unsloth: bool, has_triton: bool = False) -> str:
    """`auto` → unsloth wherever it is installed, else hf; `unsloth` must be installed.

    Why auto takes Unsloth on a CPU too: where the gpu extra is installed (Triton, TRL 1.15), TRL's
    fused LM head runs a Triton kernel even on a CPU and fails ("0 active drivers"), while Unsloth's
    CPU trainer gives the same losses as hf on the same data (tests/test_train_unsloth.py), 6 % faster
    (bench/bench_train.py: 2.59 vs 2.74 s/step, SmolLM2-135M, 2-core CPU)."""
    if name == "unsloth" and not has_unsloth:
        raise UserError("train.backend=unsloth needs Unsloth: pip install 'isheep-lite[gpu]'")
    backend = ("unsloth" if has_unsloth else "hf") if name == "auto" else name
    if backend == "hf" and not cuda and has_triton:
        raise UserError(
            "train.backend=hf cannot train on a CPU where Triton is installed (TRL runs a GPU-only kernel); "
            "use train.backend=unsloth or auto"
        )
    return backend


Precision = Literal["bf16", "fp16", "fp32"]


def train_precision(capability: tuple[int, int] | None) -> Precision:
    """The precision to train in on a GPU of this CUDA compute capability (None: no GPU, the CPU).

    bf16 only where it is native, compute capability ≥ 8.0 (Ampere, Ada, Hopper and later); fp16 on
    older GPUs (T4 7.5, V100 7.0); fp32 on the CPU. Not `torch.cuda.is_bf16_supported()`: it answers
    True on a T4 too (bf16 by emulation), where Unsloth loads the model in fp16 and a bf16 trainer
    then fails at its first step. Both backends take every dtype from this one answer
    (`load_dtype_kwargs`, `sft_precision_flags`)."""
    if capability is None:
        return "fp32"
    return "bf16" if tuple(capability) >= (8, 0) else "fp16"


def device_precision() -> Precision:
    """`train_precision` of this machine: GPU 0's compute capability, read only when CUDA is available."""
    import torch

    capability = tuple(torch.cuda.get_device_capability()) if torch.cuda.is_available() else None
    return train_precision(capability)  # type: ignore[arg-type]


def precision_dtype(precision: Precision) -> Any:
    """The torch dtype of a precision."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def load_dtype_kwargs(backend: str, precision: Precision, four_bit: bool) -> dict[str, Any]:
    """The dtype arguments `load_model` passes: {"dtype"} of the backend's from_pretrained (Unsloth's
    FastLanguageModel or transformers' AutoModelForCausalLM), plus {"bnb_4bit_compute_dtype"} of the
    hf backend's BitsAndBytesConfig when the base is 4-bit. Always explicit — on a CPU too, where
    Unsloth's own choice would be bfloat16."""
    dtype = precision_dtype(precision)
    if backend == "hf" and four_bit:
        return {"dtype": dtype, "bnb_4bit_compute_dtype": dtype}
    return {"dtype": dtype}


def sft_precision_flags(precision: Precision) -> dict[str, bool]:
    """SFTConfig's mixed-precision flags: the same precision the model was loaded in."""
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


# LoRA targets: `train.target_modules: auto` takes every linear layer of the decoder blocks.
_LINEAR_CLASSES = ("Linear", "Linear4bit")  # torch.nn.Linear; bitsandbytes' Linear4bit, matched by name (no bnb import)
_TOWERS = ("vision", "audio", "multi_modal_projector")  # non-text parts of a multimodal model: never targets
_FUSED = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}  # Phi-3, for the planner


def auto_targets(targets: Any) -> bool:
    """Whether a train.target_modules value asks for the automatic choice ("auto", as YAML stores it: [auto])."""
    return targets == "auto" or (isinstance(targets, (list, tuple)) and list(targets) == ["auto"])


def _in_tower(path: str) -> bool:
    return any(t in path for t in _TOWERS)


def lora_targets(model: Any) -> list[str]:
    """The distinct leaf names of the linear layers inside the decoder blocks of `model`, in model order.

    Linear means a module whose class name ends in "Linear" or "Linear4bit" (torch's, bitsandbytes'
    4-bit); inside the blocks means a path through `.layers.`; anything under a vision or audio tower
    or a multimodal projector is left out, and so are lm_head and the embeddings, as are the inner
    layers of a LoRA-wrapped model. Llama/Qwen2/Mistral/Gemma: q/k/v/o_proj and gate/up/down_proj;
    Phi-3: qkv_proj, o_proj, gate_up_proj, down_proj; Gemma 3 ≥ 4B: those of `language_model` only."""
    names: list[str] = []
    for path, module in model.named_modules():
        if not type(module).__name__.endswith(_LINEAR_CLASSES) or ".layers." not in f".{path}" or _in_tower(path):
            continue
        leaf = path.rsplit(".", 1)[-1]
        if "lora_" in path or "base_layer" in path or "lm_head" in leaf or "embed" in leaf:
            continue
        if leaf not in names:
            names.append(leaf)
    return names


def config_lora_targets(hf_dir: Path) -> list[str]:
    """`lora_targets` of the model in `hf_dir` before it is loaded: built from its config.json on the
    meta device (no weights are read, no memory is taken)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(hf_dir))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return lora_targets(model)


def resolve_targets(cfg: TrainConfig, hf_dir: Path, model: Any = None) -> list[str]:
    """train.target_modules as names: an explicit list as given; auto read from `model` when given,
    else from hf_dir's config. A model with no linear layer in its decoder blocks is a UserError."""
    if not auto_targets(cfg.target_modules):
        return list(cfg.target_modules)
    names = lora_targets(model) if model is not None else config_lora_targets(hf_dir)
    if not names:
        raise UserError(f"{hf_dir}: no linear layer found in the model's decoder blocks; set train.target_modules")
    return names


def lora_target_kwargs(cfg: TrainConfig, hf_dir: Path, model: Any) -> dict[str, Any]:
    """The target arguments of both backends' LoRA config (peft's LoraConfig, Unsloth's get_peft_model):
    {"target_modules"} from `resolve_targets`, plus {"exclude_modules"} when a vision/audio tower has
    linear layers of the same names — peft matches target names by suffix, so they would be adapted too."""
    targets = resolve_targets(cfg, hf_dir, model)
    kwargs: dict[str, Any] = {"target_modules": targets}
    if any(_in_tower(path) and path.rsplit(".", 1)[-1] in targets for path, _ in model.named_modules()):
        kwargs["exclude_modules"] = rf".*(?:{'|'.join(_TOWERS)}).*"
    return kwargs


def planner_targets(targets: list[str]) -> list[str]:
    """Target names as the memory planner knows them: fused projections split into their parts
    (qkv_proj → q/k/v_proj, gate_up_proj → gate/up_proj). Split, a fused matrix's LoRA counts one
    extra input side per part (r × hidden each): a slight over-estimate, on the safe side."""
    out: list[str] = []
    for t in targets:
        out += _FUSED.get(t, [t])
    return out


def choose_batches(
    cfg: TrainConfig, hf_dir: Path, examples: list[dict[str, list[int]]], backend: str, free_bytes: float | None
) -> tuple[int, int, dict[str, Any] | None]:
    """(micro-batch, grad accumulation, plan): from the planner when the free memory is known (CUDA),
    keeping the effective batch batch_size × grad_accum; the recipe's values otherwise."""
    if free_bytes is None or not cfg.auto_batch:
        return cfg.batch_size, cfg.grad_accum, None
    from . import planner

    shape = planner.Shape.from_config(json.loads((hf_dir / "config.json").read_text(encoding="utf-8")))
    seq = max(len(e["input_ids"]) for e in examples)
    try:
        plan = planner.plan_batches(
            shape,
            free_bytes,
            bits=4 if cfg.load_in_4bit else 16,
            r=cfg.lora_r,
            targets=planner_targets(resolve_targets(cfg, hf_dir)),
            seq_len=seq,
            backend=backend,
            effective_batch=cfg.batch_size * cfg.grad_accum,
        )
    except MemoryError as e:
        raise UserError(str(e)) from None
    return plan["micro_batch"], plan["grad_accum"], {**plan, "free_gb": round(free_bytes / planner.GB, 2), "seq_len": seq}


def _split(inputs: dict[str, Any], parts: int) -> list[dict[str, Any]]:
    """A collated batch cut into `parts` smaller batches along the batch dimension."""
    import torch

    n = next(v.shape[0] for v in inputs.values() if isinstance(v, torch.Tensor))
    step = -(-n // parts)
    return [{k: v[i : i + step] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()} for i in range(0, n, step)]


def with_oom_backoff(trainer_cls: Any) -> Any:
    """`trainer_cls` whose training step survives a CUDA out-of-memory error: the step's gradients are
    restored, the micro-batch is cut in two (then four, …) and the step is redone; later steps keep
    the smaller pieces. Each piece's loss is normalised by the whole micro-batch's token count, so
    the summed gradient equals the uncut one. The price: a copy of the trainable (LoRA) gradients
    before each micro-step that already holds some (gradient accumulation), e.g. 0.17 GB at r 16 on
    an 8B model; with grad_accum 1 there is nothing to copy."""
    import torch

    class OomBackoff(trainer_cls):  # type: ignore[misc, valid-type]
        oom_splits = 1

        def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
            while True:
                saved = [(p, None if p.grad is None else p.grad.clone()) for p in model.parameters() if p.requires_grad]
                try:
                    if self.oom_splits == 1:
                        return super().training_step(model, inputs, num_items_in_batch)
                    n = num_items_in_batch
                    if n is None:  # the token count the whole micro-batch would have been normalised by
                        n = int((inputs["labels"][..., 1:] != -100).sum()) * self.current_gradient_accumulation_steps
                    return sum(super(OomBackoff, self).training_step(model, part, n) for part in _split(inputs, self.oom_splits))
                except torch.cuda.OutOfMemoryError:
                    for p, g in saved:
                        p.grad = g
                    torch.cuda.empty_cache()
                    if self.oom_splits >= len(inputs["input_ids"]):
                        raise
                    self.oom_splits *= 2
                    print(f"CUDA out of memory: micro-batch split in {self.oom_splits} from now on", file=sys.stderr)

    return OomBackoff


def load_model(hf_dir: Path, cfg: TrainConfig, backend: str, cuda: bool, seed: int, precision: Precision | None = None) -> tuple[Any, Any]:
    """(LoRA-wrapped model, tokenizer) for the backend: 4-bit base on CUDA when train.load_in_4bit;
    every dtype from `precision` (default: this machine's, `device_precision`)."""
    precision = precision or device_precision()
    four_bit = cuda and cfg.load_in_4bit
    dtypes = load_dtype_kwargs(backend, precision, four_bit)
    if backend == "unsloth":
        from unsloth import FastLanguageModel

        model, tokenizer = FastLanguageModel.from_pretrained(
            str(hf_dir), max_seq_length=cfg.max_seq_len, load_in_4bit=four_bit, dtype=dtypes["dtype"], local_files_only=True
        )
        model = FastLanguageModel.get_peft_model(
            model,
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            use_gradient_checkpointing="unsloth" if cuda else False,
            random_state=seed,
            **lora_target_kwargs(cfg, hf_dir, model),
        )
        return model, tokenizer
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    if four_bit:
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        q = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtypes["bnb_4bit_compute_dtype"],
        )
        device = {"": int(os.environ.get("LOCAL_RANK", 0))}  # this process's GPU (one per process under DDP)
        model = AutoModelForCausalLM.from_pretrained(str(hf_dir), quantization_config=q, dtype=dtypes["dtype"], device_map=device)
        model = prepare_model_for_kbit_training(model)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=dtypes["dtype"])
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        task_type="CAUSAL_LM",
        **lora_target_kwargs(cfg, hf_dir, model),
    )
    return get_peft_model(model, lora), tokenizer


def trainer_args(
    cfg: TrainConfig, ckpt_dir: Path, seed: int, cuda: bool, precision: Precision, micro_batch: int, lr: float
) -> dict[str, Any]:
    """The TrainingArguments SFT and the preference step share: cosine schedule, a loss logged every
    step, resumable checkpoints every train.checkpoint_steps, seeded data order, the model's precision."""
    return dict(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=micro_batch,
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        learning_rate=lr,
        lr_scheduler_type="cosine",
        warmup_steps=cfg.warmup_steps,
        logging_steps=1,
        save_strategy="steps" if cfg.checkpoint_steps else "no",
        save_steps=cfg.checkpoint_steps or 500,
        save_total_limit=1,
        report_to=[],
        seed=seed,
        data_seed=seed,
        max_length=cfg.max_seq_len,
        **sft_precision_flags(precision),
        use_cpu=not cuda,
        dataloader_num_workers=0,
        disable_tqdm=False,
        # DDP (train.processes > 1): every LoRA weight gets a gradient each step, and the search for
        # unused ones breaks on the re-entrant gradient checkpointing of 4-bit training
        ddp_find_unused_parameters=False,
    )


def make_trainer(
    hf_dir: Path, examples: list[dict[str, list[int]]], cfg: TrainConfig, out_dir: Path, seed: int, backend: str = "hf"
) -> Any:
    """A TRL SFTTrainer (with the OOM back-off) over a LoRA-wrapped model; kept separate so tests can inspect its batches."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(seed)
    cuda = torch.cuda.is_available()
    precision = device_precision()
    model, tokenizer = load_model(hf_dir, cfg, backend, cuda, seed, precision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    args = SFTConfig(**trainer_args(cfg, out_dir / "checkpoints", seed, cuda, precision, cfg.batch_size, cfg.lr))
    return with_oom_backoff(SFTTrainer)(model=model, args=args, train_dataset=Dataset.from_list(examples), processing_class=tokenizer)


def make_dpo_trainer(model: Any, tokenizer: Any, examples: list[dict[str, list[int]]], cfg: TrainConfig, out_dir: Path, seed: int) -> Any:
    """A TRL DPOTrainer over the LoRA-wrapped `model` (its reference: the same model with the adapter
    switched off), on pairs tokenized by `build_preferences` (TRL's own tokenization is skipped so
    preference data sees the same token ids as SFT data and generation)."""
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    class PreTokenizedDPO(DPOTrainer):
        def _prepare_dataset(self, dataset: Any, *args: Any, **kwargs: Any) -> Any:
            return dataset  # already prompt_ids / chosen_ids / rejected_ids

    torch.manual_seed(seed)
    cuda = torch.cuda.is_available()
    micro = max(1, cfg.batch_size // 2)  # each pair is two sequences
    args = DPOConfig(beta=cfg.dpo_beta, **trainer_args(cfg, out_dir / "checkpoints-dpo", seed, cuda, device_precision(), micro, cfg.dpo_lr))
    return PreTokenizedDPO(model=model, args=args, train_dataset=Dataset.from_list(examples), processing_class=tokenizer)


def _losses(trainer: Any) -> list[float]:
    return [round(h["loss"], 4) for h in trainer.state.log_history if "loss" in h]


def run_training(job: dict[str, Any]) -> dict[str, Any]:
    """The child's work: tokenize, train, save the adapter and the loss curve."""
    import torch

    cfg = TrainConfig(**job["cfg"])
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    cfg = rank_share(cfg, world)
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // world))
    cuda = torch.cuda.is_available()
    found = importlib.util.find_spec
    backend = resolve_backend(cfg.backend, cuda, found("unsloth") is not None and world == 1, found("triton") is not None)
    if backend == "unsloth":
        import unsloth  # noqa: F401  — before transformers, trl and peft, which it patches
    out_dir = Path(job["out_dir"])
    hf_dir, gguf, key = Path(job["hf_dir"]), Path(job["gguf"]), job_key(job)
    sft, dpo = cfg.objective in ("sft", "sft+dpo"), cfg.objective in ("dpo", "sft+dpo")
    examples, dropped = build_examples(job["conversations"], gguf, cfg.max_seq_len) if sft else ([], 0)
    pairs, dropped_pairs = build_preferences(job.get("preferences", []), gguf, cfg.max_seq_len) if dpo else ([], 0)
    if sft and not examples:
        raise UserError("no training example fits train.max_seq_len")
    if dpo and not pairs:
        raise UserError("no preference pair (best- and worst-graded answer of one instruction) fits train.max_seq_len")
    sized = examples or [{"input_ids": e["prompt_ids"] + e["chosen_ids"]} for e in pairs]
    micro, accum, plan = choose_batches(cfg, hf_dir, sized, backend, torch.cuda.mem_get_info()[0] if cuda else None)
    cfg = replace(cfg, batch_size=micro, grad_accum=accum)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    resume = last_checkpoint(out_dir / "checkpoints", key, clean=world == 1) if sft else None
    trainer, result = None, None
    if sft:
        trainer = make_trainer(hf_dir, examples, cfg, out_dir, job["seed"], backend)
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        model, tokenizer = trainer.model, trainer.processing_class
    else:
        model, tokenizer = load_model(hf_dir, cfg, backend, cuda, job["seed"])
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    preference = None
    if dpo:  # after SFT (sft+dpo) or instead of it: from the best- and worst-graded answers to one instruction
        dpo_resume = last_checkpoint(out_dir / "checkpoints-dpo", key, clean=world == 1)
        dpo_trainer = make_dpo_trainer(model, tokenizer, pairs, cfg, out_dir, job["seed"])
        dpo_result = dpo_trainer.train(resume_from_checkpoint=str(dpo_resume) if dpo_resume else None)
        model = dpo_trainer.model
        rewards = [h["rewards/accuracies"] for h in dpo_trainer.state.log_history if "rewards/accuracies" in h]
        preference = {
            "pairs": len(pairs),
            "dropped_too_long": dropped_pairs,
            "steps": int(dpo_trainer.state.global_step),
            "train_loss": round(float(dpo_result.training_loss), 4),
            "losses": _losses(dpo_trainer),
            "reward_accuracy_last": round(rewards[-1], 4) if rewards else None,
            "resumed_from_step": int(dpo_resume.name.split("-")[1]) if dpo_resume else None,
        }
        if not sft:
            trainer, result, resume = dpo_trainer, dpo_result, dpo_resume
    assert trainer is not None and result is not None
    if rank != 0:  # the first process writes the adapter and the summary (the others hold the same weights)
        return {}
    adapter = out_dir / "adapter"
    tmp = out_dir / "adapter.tmp"
    model.save_pretrained(str(tmp))
    replace_dir(tmp, adapter)
    for ckpt in ("checkpoints", "checkpoints-dpo"):  # optimizer state is dead weight once trained
        shutil.rmtree(out_dir / ckpt, ignore_errors=True)
    losses = _losses(trainer)
    return {
        "objective": cfg.objective,
        "examples": len(examples) if sft else len(pairs),
        "dropped_too_long": dropped if sft else dropped_pairs,
        "steps": int(trainer.state.global_step),
        "train_loss": round(float(result.training_loss), 4),
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "losses": losses,
        "tokens": sum(len(e["input_ids"]) for e in sized),
        "resumed_from_step": int(resume.name.split("-")[1]) if resume else None,
        "backend": backend,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "micro_batch": micro,
        "grad_accum": accum,
        "processes": world,
        "memory_plan": plan,
        "oom_splits": getattr(trainer, "oom_splits", 0),
        "peak_vram_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if cuda else None,
        "seconds_per_step": round(result.metrics.get("train_runtime", 0) / max(1, trainer.state.global_step), 3),
        "dpo": preference,
    }


def job_key(job: dict[str, Any]) -> str:
    """What a checkpoint was made from: resume only a training of the same data, weights, settings and seed."""
    keyed = {k: job[k] for k in ("conversations", "hf_dir", "gguf", "cfg", "seed")}
    if job.get("preferences"):
        keyed["preferences"] = job["preferences"]
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()


def rank_share(cfg: TrainConfig, world: int) -> TrainConfig:
    """One of `world` DDP processes' share of the effective batch E = batch_size × grad_accum / world:
    micro-batch gcd(batch_size, E), the rest accumulated. Each optimizer step then sees the same
    examples as one process would (rank r takes the r-th of every `world` consecutive micro-batches)."""
    if world == 1:
        return cfg
    share = cfg.batch_size * cfg.grad_accum // world
    micro = math.gcd(cfg.batch_size, share)
    return replace(cfg, batch_size=micro, grad_accum=share // micro)


def last_checkpoint(ckpt_dir: Path, key: str, clean: bool = True) -> Path | None:
    """The newest complete checkpoint of this very job (its trainer_state.json is written last), else None.

    Checkpoints of another job (the recipe changed under --force) and half-written ones are removed
    (`clean`; under DDP the parent cleans before the processes start, and they only read).
    """
    if clean:
        stamp = ckpt_dir / "job.sha256"
        if ckpt_dir.exists() and (not stamp.exists() or stamp.read_text() != key):
            shutil.rmtree(ckpt_dir)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        stamp.write_text(key)
    complete = []
    for d in ckpt_dir.glob("checkpoint-*"):
        if (d / "trainer_state.json").is_file() and d.name.split("-")[1].isdigit():
            complete.append(d)
        elif clean:
            shutil.rmtree(d, ignore_errors=True)
    return max(complete, key=lambda d: int(d.name.split("-")[1]), default=None)


class TrainingKilled(RuntimeError):
    """The training child died by a signal (the kernel's OOM killer, a crash in a CUDA kernel):
    `isheep run` turns it into the same one line as a death of the run itself (cli.death_report)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"the training process died by signal {signum}")
        self.signum = signum


def train(
    conversations: list[list[dict[str, str]]],
    hf_dir: Path,
    gguf_path: Path,
    out_dir: Path,
    cfg: TrainConfig,
    seed: int,
    python: str = sys.executable,
    preferences: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run `run_training` in a fresh Python process (`python`: e.g. a venv with the gpu extra) and return its summary.
    `preferences` ({"prompt", "chosen", "rejected"}) are what train.objective dpo and sft+dpo learn from."""
    out_dir.mkdir(parents=True, exist_ok=True)
    job_path = out_dir / "train_job.json"
    result_path = out_dir / "train_result.json"
    result_path.unlink(missing_ok=True)
    job = {
        "conversations": conversations,
        "hf_dir": str(hf_dir),
        "gguf": str(gguf_path),
        "out_dir": str(out_dir),
        "cfg": asdict(cfg),
        "seed": seed,
    }
    if preferences:
        job["preferences"] = preferences
    job_path.write_text(json.dumps(job))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    argv = [python, "-m", "isheep_lite.train", str(job_path)]
    if cfg.processes == 1:
        code = subprocess.run(argv, env=env, preexec_fn=_die_with_parent).returncode
    else:
        for d in ("checkpoints", "checkpoints-dpo"):  # cleaned once here; the processes only read them
            last_checkpoint(out_dir / d, job_key(job))
        code = _run_ranks(argv, env, cfg.processes)
    if code == 2:
        raise UserError("training refused its input (see the line above)")
    if code < 0:
        raise TrainingKilled(-code)
    if code != 0 or not result_path.exists():
        raise RuntimeError(f"training process failed with exit code {code}")
    return json.loads(result_path.read_text())


def _run_ranks(argv: list[str], env: dict[str, str], world: int) -> int:
    """`world` training processes joined by torch.distributed's env:// rendezvous on this machine (as
    `torchrun --standalone` starts them). If one fails the others are stopped (they would wait for it
    forever); the first failure's exit code is returned."""
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world)}
    procs = [
        subprocess.Popen(argv, env={**env, **dist, "RANK": str(r), "LOCAL_RANK": str(r)}, preexec_fn=_die_with_parent) for r in range(world)
    ]
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [c for c in codes if c not in (None, 0)]
            if failed or all(c == 0 for c in codes):
                return failed[0] if failed else 0
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def _die_with_parent() -> None:
    """Linux: the training child is killed when the run process dies (a killed run must not leave an
    orphan writing into the run directory while its rerun trains the same iteration)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _main(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    rank = int(os.environ.get("RANK", 0))
    try:
        result = run_training(job)
    except UserError as e:
        if rank == 0:  # every process refuses the same input: one line
            print(f"error: {e}", file=sys.stderr)
        return 2
    if rank != 0:
        return 0
    out = Path(job["out_dir"]) / "train_result.json"
    out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
