"""LoRA SFT on the kept pairs (transformers + peft + trl), in a child process.

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
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import models
from .recipe import TrainConfig, UserError
from .store import replace_dir


def build_examples(
    conversations: list[list[dict[str, str]]], gguf_path: Path, max_seq_len: int
) -> tuple[list[dict[str, list[int]]], int]:
    """Conversations → [{"input_ids", "labels"}], plus the number dropped for length."""
    from llama_cpp import Llama

    info = models.gguf_info(gguf_path)
    vocab = Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    try:
        examples, dropped = [], 0
        for messages in conversations:
            prompt, completion = models.split_prompt_completion(info, messages)
            p_ids = vocab.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
            c_ids = vocab.tokenize(completion.encode("utf-8"), add_bos=False, special=True)
            if len(p_ids) + len(c_ids) > max_seq_len:
                dropped += 1
                continue
            examples.append({"input_ids": p_ids + c_ids, "labels": [-100] * len(p_ids) + c_ids})
    finally:
        vocab.close()
    return examples, dropped


def make_trainer(hf_dir: Path, examples: list[dict[str, list[int]]], cfg: TrainConfig, out_dir: Path, seed: int) -> Any:
    """A TRL SFTTrainer over a LoRA-wrapped model; kept separate so tests can inspect its batches."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(seed)
    cuda = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    model = get_peft_model(
        model,
        LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.target_modules),
            task_type="CAUSAL_LM",
        ),
    )
    args = SFTConfig(
        output_dir=str(out_dir / "checkpoints"),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.lr,
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
        bf16=False,
        fp16=False,
        use_cpu=not cuda,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples), processing_class=tokenizer)


def run_training(job: dict[str, Any]) -> dict[str, Any]:
    """The child's work: tokenize, train, save the adapter and the loss curve."""
    import torch

    cfg = TrainConfig(**job["cfg"])
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    out_dir = Path(job["out_dir"])
    examples, dropped = build_examples(job["conversations"], Path(job["gguf"]), cfg.max_seq_len)
    if not examples:
        raise UserError("no training example fits train.max_seq_len")
    resume = last_checkpoint(out_dir / "checkpoints", job_key(job))
    trainer = make_trainer(Path(job["hf_dir"]), examples, cfg, out_dir, job["seed"])
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    adapter = out_dir / "adapter"
    tmp = out_dir / "adapter.tmp"
    trainer.model.save_pretrained(str(tmp))
    replace_dir(tmp, adapter)
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)  # optimizer state is dead weight once trained
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "examples": len(examples),
        "dropped_too_long": dropped,
        "steps": int(trainer.state.global_step),
        "train_loss": round(float(result.training_loss), 4),
        "loss_first": round(losses[0], 4) if losses else None,
        "loss_last": round(losses[-1], 4) if losses else None,
        "losses": [round(x, 4) for x in losses],
        "tokens": sum(len(e["input_ids"]) for e in examples),
        "resumed_from_step": int(resume.name.split("-")[1]) if resume else None,
    }


def job_key(job: dict[str, Any]) -> str:
    """What a checkpoint was made from: resume only a training of the same data, weights, settings and seed."""
    keyed = {k: job[k] for k in ("conversations", "hf_dir", "gguf", "cfg", "seed")}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()


def last_checkpoint(ckpt_dir: Path, key: str) -> Path | None:
    """The newest complete checkpoint of this very job (its trainer_state.json is written last), else None.

    Checkpoints of another job (the recipe changed under --force) and half-written ones are removed.
    """
    stamp = ckpt_dir / "job.sha256"
    if ckpt_dir.exists() and (not stamp.exists() or stamp.read_text() != key):
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key)
    complete = []
    for d in ckpt_dir.glob("checkpoint-*"):
        if (d / "trainer_state.json").is_file() and d.name.split("-")[1].isdigit():
            complete.append(d)
        else:
            shutil.rmtree(d, ignore_errors=True)
    return max(complete, key=lambda d: int(d.name.split("-")[1]), default=None)


def train(
    conversations: list[list[dict[str, str]]], hf_dir: Path, gguf_path: Path, out_dir: Path, cfg: TrainConfig, seed: int
) -> dict[str, Any]:
    """Run `run_training` in a fresh Python process and return its summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    job_path = out_dir / "train_job.json"
    result_path = out_dir / "train_result.json"
    result_path.unlink(missing_ok=True)
    job = {"conversations": conversations, "hf_dir": str(hf_dir), "gguf": str(gguf_path), "out_dir": str(out_dir),
           "cfg": asdict(cfg), "seed": seed}
    job_path.write_text(json.dumps(job))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "isheep_lite.train", str(job_path)], env=env, preexec_fn=_die_with_parent)
    if proc.returncode == 2:
        raise UserError("training refused its input (see the line above)")
    if proc.returncode != 0 or not result_path.exists():
        raise RuntimeError(f"training process failed with exit code {proc.returncode}")
    return json.loads(result_path.read_text())


def _die_with_parent() -> None:
    """Linux: the training child is killed when the run process dies (a killed run must not leave an
    orphan writing into the run directory while its rerun trains the same iteration)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _main(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    try:
        result = run_training(job)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(job["out_dir"]) / "train_result.json"
    out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
