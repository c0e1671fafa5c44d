"""Self-assessment throughput: scores read from next-token log-probs vs scores generated as text.

    python bench/bench_assess.py [--pairs 40] [--model embedded:smollm2-135m-instruct]

Same (instruction, response) pairs, same assessment prompt (grading.py), one aspect. Methods:
- logprob, batched: `grading.assess` — one forward pass per pair, `Engine.score_many`, the default;
- logprob, one at a time: the same with n_parallel=1;
- generated, batched: the engine generates the reply to the prompt without the "Score: " pre-fill
  (greedy, ≤ 32 tokens) and the first integer 1..9 in it is parsed — what a judge without log-probs does;
- generated, sequential: the same through llama-cpp-python's create_completion, one pair at a time.
The pairs are the embedded model's own greedy answers to held-out prompts (made first, not timed).
Prints a table and writes bench/results/assess-speed.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from isheep_lite.config import AssessConfig
from isheep_lite.engines.base import Sampling
from isheep_lite.engines.llamacpp import Engine
from isheep_lite.evals import measure, suite
from isheep_lite.gguf import header
from isheep_lite.selfalign import grading

RESULTS = Path(__file__).resolve().parent / "results"
GEN_TOKENS = 32


def make_pairs(e: Engine, n: int) -> list[dict]:
    qs = [it.prompt for it in suite.suite()][:n]
    outs = measure.greedy_answers(e, qs, 160, lambda k: None)
    return [{"id": f"p{i}", "instruction": q, "input": "", "response": c.text} for i, (q, c) in enumerate(zip(qs, outs))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=40)
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    args = ap.parse_args()
    path = header.resolve_gguf(args.model)
    cfg = AssessConfig(aspects=["quality"], calibrate=False)  # one question per pair: the speed of one read
    rows = []
    with Engine(path, n_ctx=2048, n_parallel=16) as e:
        pairs = make_pairs(e, args.pairs)
        t = time.perf_counter()
        scored = grading.assess(e, pairs, cfg, "bench", {}, lambda r: None)
        dt = time.perf_counter() - t
        rows.append({"method": "logprob, batched (n_parallel 16)", "pairs_s": len(pairs) / dt, "valid": len(scored)})
        prompts = [
            grading.assessment_prompt(e, p["instruction"], p["response"], "quality", cfg.scale)[: -len(grading.PREFILL)] for p in pairs
        ]
        t = time.perf_counter()
        outs = e.generate(prompts, [Sampling(temperature=0.0, max_tokens=GEN_TOKENS)] * len(prompts))
        dt = time.perf_counter() - t
        valid = sum(grading.parse_score(c.text, cfg.scale) is not None for c in outs)
        rows.append(
            {
                "method": f"generated, batched (≤ {GEN_TOKENS} tokens)",
                "pairs_s": len(pairs) / dt,
                "valid": valid,
                "mean_tokens": sum(c.n_tokens for c in outs) / len(outs),
                "example": outs[0].text[:120],
            }
        )
        t = time.perf_counter()
        valid = 0
        for p in prompts:
            e.llm.reset()
            text = e.llm.create_completion(p, max_tokens=GEN_TOKENS, temperature=0.0)["choices"][0]["text"]
            valid += grading.parse_score(text, cfg.scale) is not None
        dt = time.perf_counter() - t
        rows.append(
            {"method": f"generated, sequential create_completion (≤ {GEN_TOKENS} tokens)", "pairs_s": len(pairs) / dt, "valid": valid}
        )
    with Engine(path, n_ctx=2048, n_parallel=1) as e1:
        t = time.perf_counter()
        grading.assess(e1, pairs, cfg, "bench", {}, lambda r: None)
        rows.append(
            {"method": "logprob, one at a time (n_parallel 1)", "pairs_s": len(pairs) / (time.perf_counter() - t), "valid": len(pairs)}
        )
    base = rows[0]["pairs_s"]
    base_valid = base * rows[0]["valid"] / len(pairs)
    print(
        f"| method ({len(pairs)} pairs, {path.name}) | pairs/s | logprob-batched speed-up | valid scores | valid scores/s | speed-up per valid score |\n|---|---:|---:|---:|---:|---:|"
    )
    for r in rows:
        # a pair whose generated reply holds no score must be asked again (or dropped): what a
        # stage gets per second is the valid scores, not the pairs
        r["valid_s"] = r["pairs_s"] * r["valid"] / len(pairs)
        speedup = f"{base_valid / r['valid_s']:.0f}×" if r["valid_s"] else "∞"
        r["pairs_s"], r["valid_s"] = round(r["pairs_s"], 2), round(r["valid_s"], 3)
        print(f"| {r['method']} | {r['pairs_s']} | {base / r['pairs_s']:.1f}× | {r['valid']}/{len(pairs)} | {r['valid_s']} | {speedup} |")
    RESULTS.mkdir(exist_ok=True)
    out = {"model": path.name, "pairs": len(pairs), "machine": platform.platform(), "rows": rows}
    (RESULTS / "assess-speed.json").write_text(json.dumps(out, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
