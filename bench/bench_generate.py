"""Generation throughput: sequential llama.cpp vs the batched engine vs transformers, same prompts.

    python bench/bench_generate.py                       # shipped Q4_1 and an F16 export, 64 prompts × 128 tokens
    python bench/bench_generate.py --prompts 16 --tokens 64 --models q4_1

Prints one table and writes bench/results/generate-<model>.json. Aggregate tok/s = generated tokens /
wall seconds (greedy; sequences stop at their end-of-turn token or at --tokens). Prompt evaluation is
the same model's throughput on one 512-token prompt, measured in the same run.

A second table says where the engine's wall time goes at the largest n_parallel, every llama_decode
call timed and sorted by what it carried: full steps (one new token for each of n_parallel
sequences), steps of the draining last wave (fewer sequences left than slots), calls that also
evaluate prompts (the first fill and every refill), and time outside llama_decode (the engine's
Python: batch filling, sampling, stop strings). Prompt tokens are counted as evaluated, after the
prefix every prompt shares.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable

from isheep_lite.engines.base import Sampling
from isheep_lite.engines.llamacpp import Engine
from isheep_lite.evals import suite
from isheep_lite.gguf import header, weights

RESULTS = Path(__file__).resolve().parent / "results"


def prompts(n: int) -> list[str]:
    return [it.prompt for it in suite.suite()][:n]


def timed_decode(p: int) -> tuple[dict, Callable[[], None]]:
    """Wrap llama_decode to sort its wall time by what each call carried (see the module docstring)."""
    import llama_cpp as lc

    parts = {k: {"calls": 0, "seconds": 0.0, "generated": 0, "prompt": 0} for k in ("full", "drain", "prompt")}
    decode = lc.llama_decode

    def timed(ctx, batch):  # type: ignore[no-untyped-def]
        n = batch.n_tokens
        rows = sum(1 for i in range(n) if batch.logits[i])
        t = time.perf_counter()
        rc = decode(ctx, batch)
        part = parts["prompt" if rows < n else "full" if rows == p else "drain"]
        part["calls"] += 1
        part["seconds"] += time.perf_counter() - t
        part["generated"] += rows
        part["prompt"] += n - rows
        return rc

    lc.llama_decode = timed

    def restore() -> None:
        lc.llama_decode = decode

    return parts, restore


def breakdown(parts: dict, wall: float) -> list[dict]:
    rows = [
        {
            "part": {"full": "full steps", "drain": "draining steps", "prompt": "calls with prompts"}[k],
            "calls": v["calls"],
            "seconds": round(v["seconds"], 2),
            "share": round(v["seconds"] / wall, 3),
            "tokens": v["generated"] + v["prompt"],
            "prompt_tokens": v["prompt"],
            "ms_per_token": round(1000 * v["seconds"] / max(1, v["generated"] + v["prompt"]), 2),
        }
        for k, v in parts.items()
    ]
    outside = wall - sum(v["seconds"] for v in parts.values())
    rows.append({"part": "outside llama_decode", "seconds": round(outside, 2), "share": round(outside / wall, 3)})
    return rows


def bench_llama(path: Path, qs: list[str], tokens: int, parallels: list[int]) -> tuple[list[dict], list[dict]]:
    rows: list[dict] = []
    split: list[dict] = []
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
            e.chat_many(
                [[{"role": "user", "content": "Hi"}]], [Sampling(max_tokens=1)]
            )  # builds the batched context, as `Llama` built its own above
            parts, restore = timed_decode(p) if p == max(parallels) else (None, lambda: None)
            try:
                t = time.perf_counter()
                outs = e.chat_many(chats, [greedy] * len(qs))
                wall = time.perf_counter() - t
            finally:
                restore()
            n = sum(c.n_tokens for c in outs)
            rows.append({"method": f"engine n_parallel={p}", "tok_s": round(n / wall, 1), "tokens": n})
            if parts is not None:
                split = breakdown(parts, wall)
    return rows, split


def bench_transformers(hf_dir: Path, qs: list[str], tokens: int, batch: int = 8) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    tok = AutoTokenizer.from_pretrained(str(hf_dir), padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    n = 0
    t = time.perf_counter()
    for i in range(0, len(qs), batch):
        texts = [
            tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True) for q in qs[i : i + batch]
        ]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=tokens, do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id)
        for row in out[:, enc["input_ids"].shape[1] :]:
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
    given = header.resolve_gguf("embedded:smollm2-135m-instruct")
    hf_dir = weights.resolve_hf(None, given)
    qs = prompts(args.prompts)
    parallels = [int(x) for x in args.parallel.split(",")]
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in args.models.split(","):
        path = given
        if name == "f16":
            from isheep_lite.gguf import export

            path = RESULTS / "_smollm2-f16.gguf"
            if not path.exists():
                export.export(hf_dir, None, given, RESULTS, ["f16"])
                (RESULTS / "model-f16.gguf").rename(path)
                (RESULTS / "export.json").unlink(missing_ok=True)
        rows, split = bench_llama(path, qs, args.tokens, parallels)
        rows.append(bench_transformers(hf_dir, qs, args.tokens))
        seq = next(r["tok_s"] for r in rows if r["method"].startswith("sequential"))
        pe = rows[0]["tok_s"]
        print(f"\nSmolLM2-135M {name}: {len(qs)} prompts × ≤{args.tokens} new tokens, {os.cpu_count()} CPU threads")
        print(f"{'method':<48}{'tok/s':>10}{'× seq':>8}{'% prompt-eval':>15}")
        for r in rows:
            print(f"{r['method']:<48}{r['tok_s']:>10.1f}{r['tok_s'] / seq:>8.2f}{100 * r['tok_s'] / pe:>14.0f}%")
        print(f"\nwhere the engine's time goes at n_parallel={max(parallels)}")
        print(f"{'part':<24}{'calls':>7}{'seconds':>9}{'share':>8}{'tokens':>8}{'of them prompt':>16}{'ms/token':>10}")
        for r in split:
            if "calls" in r:
                print(
                    f"{r['part']:<24}{r['calls']:>7}{r['seconds']:>9.2f}{r['share']:>8.1%}{r['tokens']:>8}{r['prompt_tokens']:>16}{r['ms_per_token']:>10.2f}"
                )
            else:
                print(f"{r['part']:<24}{'':>7}{r['seconds']:>9.2f}{r['share']:>8.1%}")
        out = {
            "model": name,
            "prompts": len(qs),
            "max_tokens": args.tokens,
            "cpu_threads": os.cpu_count(),
            "machine": platform.machine(),
            "rows": rows,
            "engine_time_split": split,
        }
        (RESULTS / f"generate-{name}.json").write_text(json.dumps(out, indent=2))
    (RESULTS / "_smollm2-f16.gguf").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
