"""Generation throughput: sequential llama.cpp vs the batched engine vs transformers, same prompts.

    python bench/bench_generate.py                       # shipped Q4_1 and an F16 export, 64 prompts × 128 tokens
    python bench/bench_generate.py --prompts 16 --tokens 64 --models q4_1

Prints one table and writes bench/results/generate-<model>.json. Aggregate tok/s = generated tokens /
wall seconds (greedy; sequences stop at their end-of-turn token or at --tokens). Prompt evaluation is
the same model's throughput on one 512-token prompt, measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from isheep_lite import ifeval, models
from isheep_lite.engine import Engine, Sampling

RESULTS = Path(__file__).resolve().parent / "results"


def prompts(n: int) -> list[str]:
    return [it.prompt for it in ifeval.suite()][:n]


def bench_llama(path: Path, qs: list[str], tokens: int, parallels: list[int]) -> list[dict]:
    rows = []
    greedy = Sampling(temperature=0.0, max_tokens=tokens)
    with Engine(path, n_ctx=1024, n_parallel=max(parallels)) as e:
        # prompt evaluation: one 512-token prompt
        long_prompt = " ".join(["The quick brown fox jumps over the lazy dog."] * 60)
        toks = e.tokenize(long_prompt)[:512]
        e.llm.reset()
        t = time.perf_counter()
        e.llm.eval(toks)
        pe = len(toks) / (time.perf_counter() - t)
        rows.append({"method": "prompt evaluation (512 tokens)", "tok_s": round(pe, 1)})
        t = time.perf_counter()
        n = 0
        for q in qs:
            out = e.llm.create_chat_completion([{"role": "user", "content": q}], max_tokens=tokens, temperature=0.0)
            n += out["usage"]["completion_tokens"]
        rows.append({"method": "sequential create_chat_completion", "tok_s": round(n / (time.perf_counter() - t), 1), "tokens": n})
    for p in parallels:
        with Engine(path, n_ctx=1024, n_parallel=p) as e:
            chats = [[{"role": "user", "content": q}] for q in qs]
            t = time.perf_counter()
            outs = e.chat_many(chats, [greedy] * len(qs))
            n = sum(c.n_tokens for c in outs)
            rows.append({"method": f"engine n_parallel={p}", "tok_s": round(n / (time.perf_counter() - t), 1), "tokens": n})
    return rows


def bench_transformers(hf_dir: Path, qs: list[str], tokens: int, batch: int = 8) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    tok = AutoTokenizer.from_pretrained(str(hf_dir), padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    n = 0
    t = time.perf_counter()
    for i in range(0, len(qs), batch):
        texts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
                 for q in qs[i : i + batch]]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=tokens, do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id)
        for row in out[:, enc["input_ids"].shape[1]:]:
            ids = row.tolist()
            n += ids.index(tok.eos_token_id) if tok.eos_token_id in ids else len(ids)
    return {"method": f"transformers generate (batch {batch}, float32)", "tok_s": round(n / (time.perf_counter() - t), 1), "tokens": n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--models", default="q4_1,f16")
    ap.add_argument("--parallel", default="1,4,8,16")
    args = ap.parse_args()
    given = models.resolve_gguf("embedded:smollm2-135m-instruct")
    hf_dir = models.resolve_hf(None, given)
    qs = prompts(args.prompts)
    parallels = [int(x) for x in args.parallel.split(",")]
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in args.models.split(","):
        path = given
        if name == "f16":
            from isheep_lite import export

            path = RESULTS / "_smollm2-f16.gguf"
            if not path.exists():
                export.export(hf_dir, None, given, RESULTS, ["f16"])
                (RESULTS / "model-f16.gguf").rename(path)
                (RESULTS / "export.json").unlink(missing_ok=True)
        rows = bench_llama(path, qs, args.tokens, parallels)
        rows.append(bench_transformers(hf_dir, qs, args.tokens))
        seq = next(r["tok_s"] for r in rows if r["method"].startswith("sequential"))
        pe = rows[0]["tok_s"]
        print(f"\nSmolLM2-135M {name}: {len(qs)} prompts × ≤{args.tokens} new tokens, {os.cpu_count()} CPU threads")
        print(f"{'method':<48}{'tok/s':>10}{'× seq':>8}{'% prompt-eval':>15}")
        for r in rows:
            print(f"{r['method']:<48}{r['tok_s']:>10.1f}{r['tok_s'] / seq:>8.2f}{100 * r['tok_s'] / pe:>14.0f}%")
        out = {"model": name, "prompts": len(qs), "max_tokens": args.tokens, "cpu_threads": os.cpu_count(),
               "machine": platform.machine(), "rows": rows}
        (RESULTS / f"generate-{name}.json").write_text(json.dumps(out, indent=2))
    (RESULTS / "_smollm2-f16.gguf").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
