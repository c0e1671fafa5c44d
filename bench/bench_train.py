"""Training backends on the same data and steps: transformers + peft + trl (hf) vs Unsloth.

    python bench/bench_train.py [--steps 20] [--gpu-python .venv-gpu/bin/python]

SmolLM2-135M-Instruct (HF weights dequantised from the embedded GGUF, cached), LoRA r 16 on all
seven projections, micro-batch 4, the 42 good pairs of tests/data/assess_labelled.jsonl cycled to
fill the steps, seed 0. Each backend trains in its own child process (train.train), as in the loop:
hf in this interpreter's venv, Unsloth in the venv with the gpu extra (tests/training/test_unsloth.py makes
`.venv-gpu`). Reports wall seconds, seconds per optimizer step (the trainer's own runtime / steps),
tokens per second, the child's peak RSS and, on CUDA, peak VRAM. Prints a table and writes
bench/results/train-backends-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def conversations(n: int) -> list[list[dict[str, str]]]:
    rows = [json.loads(x) for x in (ROOT / "tests" / "data" / "assess_labelled.jsonl").read_text().splitlines()]
    good = [r for r in rows if r["label"] == "good"]
    return [
        [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["response"]}]
        for r in (good * (n // len(good) + 1))[:n]
    ]


def one(backend: str, steps: int, python: str) -> dict:
    """Runs in a fresh process per backend, so RUSAGE_CHILDREN is the peak RSS of that backend's trainer alone."""
    from isheep_lite.config import TrainConfig
    from isheep_lite.gguf import header, weights
    from isheep_lite.training import train

    gguf = header.resolve_gguf("embedded:smollm2-135m-instruct")
    hf = weights.resolve_hf(None, gguf)
    cfg = TrainConfig(backend=backend, batch_size=4, grad_accum=1, epochs=1, warmup_steps=0, checkpoint_steps=0)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        r = train.train(conversations(4 * steps), hf, gguf, Path(out), cfg, seed=0, python=python)
        wall = time.perf_counter() - t0
    return {
        "backend": r["backend"],
        "device": r["device"],
        "steps": r["steps"],
        "wall_s": round(wall, 1),
        "s_per_step": r["seconds_per_step"],
        "tokens": r["tokens"],
        "tokens_per_s": round(r["tokens"] / (r["seconds_per_step"] * r["steps"]), 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 2),
        "peak_vram_gb": r["peak_vram_gb"],
        "loss_first": r["loss_first"],
        "loss_last": r["loss_last"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--gpu-python", default=str(ROOT / ".venv-gpu" / "bin" / "python"))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--python", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.steps, args.python)))
        return
    rows = []
    for backend, python in (("hf", sys.executable), ("unsloth", args.gpu_python)):
        if not Path(python).exists():
            print(f"skip {backend}: {python} not found (run tests/training/test_unsloth.py once to make it)", file=sys.stderr)
            continue
        out = subprocess.run(
            [sys.executable, __file__, "--one", backend, "--python", python, "--steps", str(args.steps)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("| backend | device | steps | s/step | tokens/s | peak RSS GB | peak VRAM GB | loss first → last |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['backend']} | {r['device']} | {r['steps']} | {r['s_per_step']} | {r['tokens_per_s']} | "
            f"{r['peak_rss_gb']} | {r['peak_vram_gb'] or '—'} | {r['loss_first']} → {r['loss_last']} |"
        )
    device = rows[0]["device"].replace(" ", "-").lower() if rows else "none"
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"train-backends-{device}.json"
    path.write_text(
        json.dumps(
            {
                "command": "python bench/bench_train.py " + " ".join(sys.argv[1:]),
                "machine": f"{platform.machine()}, {platform.processor() or '?'}",
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
