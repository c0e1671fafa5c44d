"""Served vs in-process generation: records/s of the HTTP backend at n_parallel 1, 4, 16 against
the batched llama.cpp engine, on the same model, prompts and sampling.

    python bench/bench_served.py                                  # llama-cpp-python's server, started here
    python bench/bench_served.py --server http://127.0.0.1:8080/v1 --model m.gguf  # a server you run

A record is what a stage writes per request: an answer (`responses`: chat, sampled, seeded, up to
--tokens) or a grade (`assess`: one next-token distribution over the score digits). Without
--server the bench starts llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`,
the server this machine has) on the model, with all cores, and stops it at the end. That server
answers one request at a time, so more requests in flight only hide HTTP round trips; a server
that batches (llama-server -np N, vLLM) is the one to pass with --server.

Prints a table and writes bench/results/served-<model>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

from isheep_lite.engines.base import EngineBase, Sampling
from isheep_lite.engines.server import answers
from isheep_lite.evals import suite
from isheep_lite.gguf import header
from isheep_lite.selfalign import grading

RESULTS = Path(__file__).resolve().parent / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(gguf: Path, n_ctx: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--n_ctx", str(n_ctx), "--n_threads", str(os.cpu_count()), "--verbose", "false"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    while not answers(url, 1.0):
        if proc.poll() is not None or time.time() > deadline:
            raise SystemExit("llama_cpp.server did not start")
        time.sleep(0.25)
    return proc, url


def measure(engine: EngineBase, n: int, tokens: int) -> dict[str, float]:
    """Records/s answering and grading `n` suite prompts (the grade prompts hold the answers)."""
    chats = [[{"role": "user", "content": it.prompt}] for it in suite.suite()[:n]]
    samplings = [Sampling(temperature=0.7, top_p=0.95, max_tokens=tokens, seed=i) for i in range(n)]
    t = time.perf_counter()
    outs = engine.chat_many(chats, samplings)
    answer_s = time.perf_counter() - t
    grades = [grading.assessment_prompt(engine, c[0]["content"], o.text, "quality", 9) for c, o in zip(chats, outs)]
    digits = [engine.token_id(str(d)) for d in range(1, 10)]
    t = time.perf_counter()
    engine.score_many(grades, digits)
    grade_s = time.perf_counter() - t
    return {
        "answers_per_s": round(n / answer_s, 2),
        "tokens_per_s": round(sum(o.n_tokens for o in outs) / answer_s, 1),
        "grades_per_s": round(n / grade_s, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--server", default=None, help="an OpenAI-compatible root serving --model (else llama_cpp.server is started)")
    ap.add_argument("--records", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--parallel", type=int, nargs="+", default=[1, 4, 16])
    args = ap.parse_args()
    from isheep_lite.engines.llamacpp import Engine
    from isheep_lite.engines.openai_compat import OpenAIEngine

    gguf = header.resolve_gguf(args.model)
    proc, url = (None, args.server) if args.server else start_server(gguf, 2048)
    rows = []
    try:
        with Engine(gguf, n_ctx=2048, n_parallel=16) as e:
            e.chat_many([[{"role": "user", "content": "Hi"}]], [Sampling(max_tokens=1)])  # builds the batched context
            rows.append({"backend": "in-process llama.cpp engine, n_parallel=16", **measure(e, args.records, args.tokens)})
        for p in args.parallel:
            with OpenAIEngine(url, gguf, n_parallel=p) as e:
                rows.append(
                    {"backend": f"served ({'llama_cpp.server' if proc else url}), n_parallel={p}", **measure(e, args.records, args.tokens)}
                )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    head = "| backend | answers/s | tokens/s | grades/s |\n|---|---|---|---|"
    print(head)
    for r in rows:
        print(f"| {r['backend']} | {r['answers_per_s']} | {r['tokens_per_s']} | {r['grades_per_s']} |")
    out = {
        "command": "python bench/bench_served.py " + " ".join(sys.argv[1:]),
        "model": str(gguf.name),
        "records": args.records,
        "max_tokens": args.tokens,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"served-{gguf.stem}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
