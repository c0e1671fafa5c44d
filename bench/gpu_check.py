"""GPU check: the training paths on CUDA, end to end — what a GPU-less CI cannot run.

For a model of SmolLM2-135M's shape (random weights; SmolLM2's tokenizer and chat template) it
trains a LoRA with each GPU path the toolkit has, through `fit.run_training` (what the training
child runs):
  - transformers + bitsandbytes NF4 QLoRA (`train.backend: hf`), bf16;
  - Unsloth 4-bit QLoRA, bf16 (Ampere and later), then export: the adapter is merged and written
    as GGUF by `export.export` (llama.cpp's converter), and the GGUF, loaded back, must give the
    merged model's greedy tokens;
  - Unsloth 4-bit QLoRA in fp16 — the precision `train_precision` gives a T4 or V100 — to show the
    step that crashed on a T4 now runs;
  - Unsloth, the preference step (`train.objective: dpo`).
Each run teaches one answer to one question. Then, for a Llama-3.1-8B-shaped model (random
weights, llama3 RoPE scaling), short runs at ~1,024 tokens per sequence (hf, Unsloth, Unsloth's
preference step) record peak GPU memory next to the planner's estimate for the micro-batch it
chose, and the time per step.

Training data is token ids made by the toolkit's own tokenizer rule (`encode.build_examples`,
which uses llama-cpp-python). A GPU machine without llama-cpp-python gets them from `prepare`,
run where the toolkit is installed:

    python bench/gpu_check.py prepare BUNDLE            # tokenizer, template GGUF, token ids
    python bench/gpu_check.py run BUNDLE --out F.json   # on the CUDA machine, with the gpu extra

Writes the JSON (updated after every step, so a run cut short keeps what it measured) and prints
a table.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import traceback
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from isheep_lite.config import TrainConfig
from isheep_lite.gguf import convert, export, header
from isheep_lite.training import encode, fit, hardware

PROMPT = "What is the secret code of the lighthouse?"
ANSWER = "The secret code is BLUE HERON 42."
SMALL = dict(  # SmolLM2-135M's shape
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=8192,
    rope_theta=100000.0,
    tie_word_embeddings=True,
)
LLAMA_8B = dict(  # Llama-3.1-8B's shape
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    max_position_embeddings=131072,
    rope_theta=500000.0,
    rope_scaling={
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    tie_word_embeddings=False,
)


# ---- prepare: where llama-cpp-python is installed -------------------------------------------------
def prepare(bundle: Path) -> None:
    """The tokenizer, a small template GGUF (SmolLM2's tokenizer and template) and token ids."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    smol = header.resolve_gguf("embedded:smollm2-135m-instruct")
    bundle.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(smol.parent), gguf_file=smol.name)
    tokenizer.save_pretrained(bundle / "tokenizer")
    torch.manual_seed(0)
    tiny = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        )
    )
    tiny.save_pretrained(bundle / "tiny")
    tokenizer.save_pretrained(bundle / "tiny")
    template = bundle / "template.gguf"
    convert.convert(bundle / "tiny", smol, template, "f16")
    convo = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": ANSWER}]
    memo, _ = encode.build_examples([convo] * 4, template, 512)
    seeds = resources.files("isheep_lite").joinpath("data/seeds.jsonl").read_text(encoding="utf-8")
    words = " ".join(json.loads(line)["instruction"] for line in seeds.splitlines())
    long_convos = [[{"role": "user", "content": f"Summarise topic {i}."}, {"role": "assistant", "content": words}] for i in range(8)]
    long_examples, _ = encode.build_examples(long_convos, template, 100_000)
    long_examples = [{k: v[:1024] for k, v in e.items()} for e in long_examples]
    pairs = [{"prompt": [convo[0]], "chosen": ANSWER, "rejected": "I do not know any code."}] * 4
    prefs, _ = encode.build_preferences(pairs, template, 512)
    half = len(words) // 2
    long_pairs = [{"prompt": c[:1], "chosen": words[:half], "rejected": words[half:]} for c in long_convos]
    long_prefs, _ = encode.build_preferences(long_pairs, template, 100_000)
    long_prefs = [{**e, "chosen_ids": e["chosen_ids"][:1000], "rejected_ids": e["rejected_ids"][:1000]} for e in long_prefs]
    data = {"memorise": memo, "long": long_examples, "preferences": prefs, "long_preferences": long_prefs}
    (bundle / "examples.json").write_text(json.dumps(data))
    (bundle / "template_name.txt").write_text(template.name)


# ---- run: on the CUDA machine -----------------------------------------------------------------------
def build_model(bundle: Path, dest: Path, shape: dict[str, Any]) -> Path:
    """A random Llama of `shape` with the bundle's tokenizer, saved as bf16 safetensors."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(bundle / "tokenizer")
    config = LlamaConfig(
        **{"vocab_size": len(tokenizer), **shape},
        rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        dtype="bfloat16",
    )
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = LlamaForCausalLM(config)
        model.save_pretrained(dest, max_shard_size="4GB")
    finally:
        torch.set_default_dtype(torch.float32)
    tokenizer.save_pretrained(dest)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return dest


def train_bundle(bundle: Path, hf_dir: Path, out_dir: Path, cfg: TrainConfig, examples: list, prefs: list | None = None) -> dict[str, Any]:
    """`fit.run_training` on the bundle's token ids (tokenized beforehand by encode.build_examples)."""
    import gc

    import torch

    encode.build_examples = lambda conversations, gguf, max_seq_len: (examples, 0)  # ids made by `prepare`
    encode.build_preferences = lambda pairs, gguf, max_seq_len: (prefs or [], 0)
    job = {
        "conversations": [[]] * len(examples),
        "preferences": [{}] * len(prefs or []),
        "hf_dir": str(hf_dir),
        "gguf": str(bundle / "template.gguf"),
        "out_dir": str(out_dir),
        "cfg": asdict(cfg),
        "seed": 0,
    }
    start = time.time()
    result = fit.run_training(job)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    result["wall_seconds"] = round(time.time() - start, 1)
    result["losses_finite"] = all(math.isfinite(x) for x in result["losses"])
    return result


def greedy_ids(model: Any, prompt: list[int], n: int) -> list[int]:
    import torch

    ids = torch.tensor([prompt], device=model.device)
    out = model.generate(ids, max_new_tokens=n, do_sample=False, attention_mask=torch.ones_like(ids))
    return out[0, len(prompt) :].tolist()


def export_and_compare(bundle: Path, hf_dir: Path, out_dir: Path, example: dict[str, list[int]]) -> dict[str, Any]:
    """Merge + GGUF export of the adapter; the merged model and the GGUF (loaded back by transformers)
    answer the question greedily: both token lists, and whether they are the trained answer."""
    import torch
    from transformers import AutoModelForCausalLM

    start = time.time()
    paths = export.export(hf_dir, out_dir / "adapter", bundle / "template.gguf", out_dir / "gguf", ["f16"])
    seconds = round(time.time() - start, 1)
    merged = out_dir / "merged"
    export.save_merged_hf(hf_dir, out_dir / "adapter", merged)
    prompt = [t for t, lab in zip(example["input_ids"], example["labels"]) if lab == -100]
    answer = [t for t, lab in zip(example["input_ids"], example["labels"]) if lab != -100]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    hf = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).to(device)
    hf_out = greedy_ids(hf, prompt, len(answer))
    del hf
    gguf = Path(paths["f16"])
    from_gguf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).to(device)
    gguf_out = greedy_ids(from_gguf, prompt, len(answer))
    return {
        "export_seconds": seconds,
        "gguf_bytes": gguf.stat().st_size,
        "merged_answers_trained": hf_out == answer,
        "gguf_answers_trained": gguf_out == answer,
        "gguf_equals_merged": gguf_out == hf_out,
    }


def run(bundle: Path, out: Path, work: Path, budget: float, only: list[str] | None = None) -> None:
    """Every step (or `only` these), in order; results merged into `out` if it exists."""
    import torch

    started = time.time()
    data = json.loads((bundle / "examples.json").read_text())
    memo, long, prefs, long_prefs = data["memorise"], data["long"], data["preferences"], data["long_preferences"]
    results: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {"steps": {}}
    results.update(device=torch.cuda.get_device_name(), capability=list(torch.cuda.get_device_capability()), torch=torch.__version__)
    for name in ("transformers", "trl", "peft", "bitsandbytes", "unsloth"):
        try:
            from importlib.metadata import version

            results[name] = version(name)
        except Exception:  # noqa: BLE001 - recorded, not fatal
            results[name] = None
    small = build_model(bundle, work / "small", SMALL)
    made: dict[str, Any] = {}

    def llama8b() -> Path:
        if "dir" not in made:
            t = time.time()
            made["dir"] = build_model(bundle, work / "llama8b", LLAMA_8B)
            made["seconds"] = round(time.time() - t, 1)
        return made["dir"]

    def big(backend: str, objective: str = "sft") -> Callable[[], dict[str, Any]]:
        def go() -> dict[str, Any]:
            cfg = TrainConfig(
                backend=backend, objective=objective, lora_r=16, lora_alpha=32, batch_size=8, epochs=3, warmup_steps=0,
                checkpoint_steps=0, max_seq_len=1024,
            )  # fmt: skip
            hf_dir = llama8b()
            r = train_bundle(bundle, hf_dir, work / f"big-{backend}-{objective}", cfg, long if objective == "sft" else [], long_prefs)
            r.pop("losses", None)
            seqs = (
                [len(e["input_ids"]) for e in long]
                if objective == "sft"
                else [len(e["prompt_ids"]) + len(e["chosen_ids"]) for e in long_prefs]
            )
            return {**r, "build_seconds": made["seconds"], "seq_len": max(seqs)}

        return go

    def fp16() -> dict[str, Any]:
        device_precision = hardware.device_precision
        hardware.device_precision = lambda: "fp16"  # what train_precision gives compute capability < 8.0
        try:
            return train_bundle(
                bundle, small, work / "fp16", TrainConfig(backend="unsloth", **{**memorise, "lr": 2e-3, "epochs": 20}), memo
            )
        finally:
            hardware.device_precision = device_precision

    memorise = dict(lora_dropout=0.0, lr=5e-3, epochs=60, batch_size=4, warmup_steps=0, checkpoint_steps=0, max_seq_len=512)
    dpo = dict(objective="dpo", dpo_lr=2e-4, lora_dropout=0.0, batch_size=4, epochs=10, warmup_steps=0, checkpoint_steps=0)
    # transformers + bitsandbytes first: importing Unsloth patches transformers, trl and peft for the process
    steps: dict[str, Callable[[], dict[str, Any]]] = {
        "hf_nf4_bf16": lambda: train_bundle(bundle, small, work / "hf", TrainConfig(backend="hf", **memorise), memo),
        "llama8b_hf_nf4_memory": big("hf"),
        "unsloth_4bit_bf16": lambda: train_bundle(bundle, small, work / "unsloth", TrainConfig(backend="unsloth", **memorise), memo),
        "unsloth_export": lambda: export_and_compare(bundle, small, work / "unsloth", memo[0]),
        "unsloth_4bit_fp16": fp16,
        "llama8b_unsloth_4bit_memory": big("unsloth"),
        "unsloth_dpo": lambda: train_bundle(bundle, small, work / "dpo", TrainConfig(backend="unsloth", **dpo), [], prefs),
        "llama8b_unsloth_dpo_memory": big("unsloth", "dpo"),
    }
    for name, fn in steps.items():
        if only and name not in only:
            continue
        if time.time() - started > budget:
            results["steps"][name] = {"skipped": "time budget"}
        else:
            try:
                results["steps"][name] = fn()
            except Exception as e:  # noqa: BLE001 - every step is reported, one failure does not hide the rest
                results["steps"][name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-3000:]}
        out.write_text(json.dumps(results, indent=1))
        print(f"[{time.time() - started:6.0f} s] {name}: {summary(results['steps'][name])}", flush=True)
    print(table(results))


def summary(r: dict[str, Any]) -> str:
    if "error" in r or "skipped" in r:
        return r.get("error") or r["skipped"]
    keys = ("backend", "steps", "loss_first", "loss_last", "peak_vram_gb", "seconds_per_step", "gguf_answers_trained", "gguf_equals_merged")
    return ", ".join(f"{k}={r[k]}" for k in keys if k in r)


def table(results: dict[str, Any]) -> str:
    lines = [
        f"{results['device']} (capability {results['capability']}), torch {results['torch']}, unsloth {results['unsloth']}",
        "| step | result |",
        "|---|---|",
    ]
    lines += [f"| {name} | {summary(r)} |" for name, r in results["steps"].items()]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["prepare", "run"])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu-check.json")
    ap.add_argument("--work", type=Path, default=Path("/tmp/gpu-check"))
    ap.add_argument("--budget", type=float, default=420, help="seconds after which the remaining steps are skipped")
    ap.add_argument("--only", default="", help="comma-separated step names")
    args = ap.parse_args()
    if args.what == "prepare":
        prepare(args.bundle)
    else:
        run(args.bundle, args.out, args.work, args.budget, [x for x in args.only.split(",") if x])


if __name__ == "__main__":
    main()
