"""One training job in this process: the model loaded, SFT and/or DPO fitted with an out-of-memory
back-off, the adapter saved (`python -m isheep_lite.training.fit JOB.json` is the child training.train starts).

Backends (`train.backend`, training.hardware): `hf` is transformers + peft + trl — bitsandbytes NF4
QLoRA on CUDA (`train.load_in_4bit`), plain LoRA on CPU. `unsloth` is Unsloth's FastLanguageModel
(4-bit QLoRA on CUDA; its CPU fallback trains LoRA), imported only here. Both train in one precision,
from the GPU's compute capability, and LoRA-adapt the same layers (training.lora). On CUDA the
micro-batch comes from the memory planner and the free VRAM, and a CUDA out-of-memory error halves it
for that step and the rest (the gradient is the same: the halves are summed over the same token
count), so no progress is lost.

The examples are token ids from training.encode: labels -100 over the prompt and over the whole
assistant turn *including its end-of-turn token*, so the model learns to stop.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from isheep_lite.config import TrainConfig
from isheep_lite.recipe import UserError
from isheep_lite.rundir.files import atomic_path
from isheep_lite.training.encode import build_examples, build_preferences
from isheep_lite.training.hardware import Precision, device_precision, load_dtype_kwargs, resolve_backend, sft_precision_flags
from isheep_lite.training.lora import lora_target_kwargs, planner_targets, resolve_targets


def choose_batches(
    cfg: TrainConfig, hf_dir: Path, examples: list[dict[str, list[int]]], backend: str, free_bytes: float | None
) -> tuple[int, int, dict[str, Any] | None]:
    """(micro-batch, grad accumulation, plan): from the planner when the free memory is known (CUDA),
    keeping the effective batch batch_size × grad_accum; the recipe's values otherwise."""
    if free_bytes is None or not cfg.auto_batch:
        return cfg.batch_size, cfg.grad_accum, None
    from isheep_lite import planner

    shape = planner.Shape.from_hf_dir(hf_dir)
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
    from transformers import AutoConfig, AutoTokenizer

    from isheep_lite.training.lora import auto_class

    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    auto = auto_class(AutoConfig.from_pretrained(str(hf_dir)))
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
        model = auto.from_pretrained(str(hf_dir), quantization_config=q, dtype=dtypes["dtype"], device_map=device)
        model = prepare_model_for_kbit_training(model)
    else:
        model = auto.from_pretrained(str(hf_dir), dtype=dtypes["dtype"])
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
    with atomic_path(adapter) as tmp:
        model.save_pretrained(str(tmp))
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
