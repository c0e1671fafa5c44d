"""Where batched generation spends its time: inside llama_decode or in the engine's Python loop.

    python bench/profile_decode.py [--model embedded:smollm2-135m-instruct] [--prompts 32] [--tokens 96] [--ceiling-only]

Times every llama_decode call of `Engine.generate` (16 sequences, greedy, suite prompts) for three
flash-attention settings and three per-sequence context sizes, prints a table and writes
bench/results/decode-profile.json. Why: it tells whether generation time is the engine's Python or
llama.cpp's, and what the attention settings cost. A second table times single llama_decode calls
of fixed shapes with no engine at all (`ceiling`), the most any engine on this llama.cpp build could
reach per call shape.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import llama_cpp as lc

from isheep_lite.engines.base import Sampling
from isheep_lite.engines.llamacpp import Engine
from isheep_lite.evals import suite
from isheep_lite.gguf import header

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
    return {
        "flash_attn": {None: "auto (default)", 0: "off", 1: "on"}[flash],
        "n_ctx_per_seq": n_ctx,
        "tokens": n,
        "tok_s": round(n / wall, 1),
        "decode_share": round(spent["decode"] / wall, 3),
        "ms_per_token": round(1000 * wall / n, 2),
        "decode_calls": spent["calls"],
    }


def ceiling(path: Path, prefix: int = 128, reps: int = 8) -> list[dict]:
    """llama.cpp alone, no engine: ms per token of one llama_decode call of each shape, every
    sequence already holding `prefix` tokens. "16 sequences × 1 token, every logit" is exactly one
    step of the engine at n_parallel 16, so its ms/token is the most the engine could reach; the
    512-token prompt (last logit only) is what bench_generate.py calls prompt evaluation."""
    from isheep_lite.engines.batch import add_token

    shapes = [
        ("1 sequence × 1 token", 1, 1, True),
        ("16 sequences × 1 token, every logit", 16, 1, True),
        ("1 sequence × 16 tokens, every logit", 1, 16, True),
        ("1 sequence × 16 tokens, last logit", 1, 16, False),
        ("1 sequence × 512 tokens, last logit (prompt evaluation)", 1, 512, False),
    ]
    rows = []
    with Engine(path, n_ctx=1024, n_parallel=16) as e:
        ctx = e.batched_context()
        memory = lc.llama_get_memory(ctx)
        batch = lc.llama_batch_init(1024, 0, 1)
        tokens = e.tokenize(" ".join(it.prompt for it in suite.suite()))
        try:
            lc.llama_memory_clear(memory, True)
            for i, tok in enumerate(tokens[:prefix]):
                add_token(batch, tok, i, 0, i == prefix - 1)
            assert lc.llama_decode(ctx, batch) == 0
            for seq in range(1, 16):
                lc.llama_memory_seq_cp(memory, 0, seq, -1, -1)
            for name, seqs, n, every in shapes:
                spent = []
                for r in range(reps + 1):  # the first call warms up
                    batch.n_tokens = 0
                    for seq in range(seqs):
                        for i in range(n):
                            add_token(batch, tokens[prefix + i], prefix + i, seq, every or i == n - 1)
                    t = time.perf_counter()
                    assert lc.llama_decode(ctx, batch) == 0
                    spent.append(time.perf_counter() - t)
                    for seq in range(seqs):
                        lc.llama_memory_seq_rm(memory, seq, prefix, -1)
                ms = 1000 * sorted(spent[1:])[reps // 2] / (seqs * n)  # median call
                rows.append({"shape": name, "tokens_per_call": seqs * n, "ms_per_token": round(ms, 2), "tok_s": round(1000 / ms, 1)})
        finally:
            lc.llama_batch_free(batch)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--ceiling-only", action="store_true", help="only the llama_decode-alone table (merged into the JSON)")
    args = ap.parse_args()
    path = header.resolve_gguf(args.model)
    qs = [it.prompt for it in suite.suite()][: args.prompts]
    if args.ceiling_only:
        out = json.loads((RESULTS / "decode-profile.json").read_text())
        out.setdefault("llama_decode_alone", {})[path.name] = ceiling(path)  # one entry per model
        (RESULTS / "decode-profile.json").write_text(json.dumps(out, indent=2))
        print(json.dumps(out["llama_decode_alone"][path.name], indent=1))
        return
    rows = [run(path, qs, args.tokens, n_ctx, flash) for n_ctx, flash in [(1024, None), (1024, 0), (1024, 1), (256, None), (4096, None)]]
    print(
        "| flash attention | n_ctx / sequence | tok/s | ms / token | share in llama_decode | decode calls |\n|---|---:|---:|---:|---:|---:|"
    )
    for r in rows:
        print(
            f"| {r['flash_attn']} | {r['n_ctx_per_seq']} | {r['tok_s']} | {r['ms_per_token']} | {r['decode_share']:.1%} | {r['decode_calls']} |"
        )
    ceil = ceiling(path)
    print(
        "\n| llama_decode alone (128 tokens already in each sequence's cache) | tokens / call | ms / token | tok/s |\n|---|---:|---:|---:|"
    )
    for r in ceil:
        print(f"| {r['shape']} | {r['tokens_per_call']} | {r['ms_per_token']} | {r['tok_s']} |")
    RESULTS.mkdir(exist_ok=True)
    out = {
        "model": path.name,
        "prompts": len(qs),
        "max_tokens": args.tokens,
        "n_parallel": 16,
        "rows": rows,
        "llama_decode_alone": {path.name: ceil},
    }
    (RESULTS / "decode-profile.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
