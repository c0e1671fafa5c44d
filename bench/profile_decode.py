"""Where batched generation spends its time: inside llama_decode or in the engine's Python loop.

    python bench/profile_decode.py [--model embedded:smollm2-135m-instruct] [--prompts 32] [--tokens 96]

Times every llama_decode call of `Engine.generate` (16 sequences, greedy, suite prompts) for three
flash-attention settings and three per-sequence context sizes, prints a table and writes
bench/results/decode-profile.json. Why: bench_generate.py shows the engine far below the
prompt-evaluation throughput; this tells whether the gap is the engine's Python or llama.cpp's
small-batch matrix products.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import llama_cpp as lc

from isheep_lite import ifeval, models
from isheep_lite.engine import Engine, Sampling

RESULTS = Path(__file__).resolve().parent / "results"


def run(path: Path, qs: list[str], tokens: int, n_ctx: int, flash: int | None) -> dict:
    spent = {"decode": 0.0, "calls": 0}
    decode, init = lc.llama_decode, lc.llama_init_from_model

    def timed_decode(ctx, batch):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        rc = decode(ctx, batch)
        spent["decode"] += time.perf_counter() - t
        spent["calls"] += 1
        return rc

    def init_with_flash(model, params):  # type: ignore[no-untyped-def]
        if flash is not None:
            params.flash_attn_type = flash
        return init(model, params)

    lc.llama_decode, lc.llama_init_from_model = timed_decode, init_with_flash
    try:
        with Engine(path, n_ctx=n_ctx, n_parallel=16) as e:
            e.chat_many([[{"role": "user", "content": "Hi"}]], [Sampling(max_tokens=4)])  # warm-up
            spent.update(decode=0.0, calls=0)
            t = time.perf_counter()
            outs = e.chat_many([[{"role": "user", "content": q}] for q in qs], [Sampling(max_tokens=tokens)] * len(qs))
            wall = time.perf_counter() - t
    finally:
        lc.llama_decode, lc.llama_init_from_model = decode, init
    n = sum(c.n_tokens for c in outs)
    return {"flash_attn": {None: "auto (default)", 0: "off", 1: "on"}[flash], "n_ctx_per_seq": n_ctx, "tokens": n,
            "tok_s": round(n / wall, 1), "decode_share": round(spent["decode"] / wall, 3),
            "ms_per_token": round(1000 * wall / n, 2), "decode_calls": spent["calls"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=96)
    args = ap.parse_args()
    path = models.resolve_gguf(args.model)
    qs = [it.prompt for it in ifeval.suite()][: args.prompts]
    rows = [run(path, qs, args.tokens, n_ctx, flash)
            for n_ctx, flash in [(1024, None), (1024, 0), (1024, 1), (256, None), (4096, None)]]
    print(f"| flash attention | n_ctx / sequence | tok/s | ms / token | share in llama_decode | decode calls |\n|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['flash_attn']} | {r['n_ctx_per_seq']} | {r['tok_s']} | {r['ms_per_token']} | {r['decode_share']:.1%} | {r['decode_calls']} |")
    RESULTS.mkdir(exist_ok=True)
    out = {"model": path.name, "prompts": len(qs), "max_tokens": args.tokens, "n_parallel": 16, "rows": rows}
    (RESULTS / "decode-profile.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
