"""How long `isheep --help` and `isheep doctor` take, start to exit (target: ≤ 1.5 s each).

    python bench/bench_cli_start.py [--repeats 5]

Median and worst of `repeats` runs after one warm-up (the first run after an install pays the
bytecode compilation). Prints a table; writes bench/results/cli-start.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

COMMANDS = {"isheep --help": ["--help"], "isheep doctor": ["doctor"]}
TARGET_S = 1.5


def wall(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, capture_output=True, check=False)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    exe = shutil.which("isheep")
    assert exe, "install the package first (pip install -e .)"
    rows = {}
    for name, tail in COMMANDS.items():
        wall([exe, *tail])  # warm-up
        times = [wall([exe, *tail]) for _ in range(args.repeats)]
        rows[name] = {"median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3), "target_s": TARGET_S}
    out = {"cpus": os.cpu_count(), "load_1min": round(os.getloadavg()[0], 2), "repeats": args.repeats, "commands": rows}
    (Path(__file__).parent / "results" / "cli-start.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"| command | median | worst | target |  (load average {out['load_1min']} on {out['cpus']} CPUs)")
    print("|---|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| `{name}` | {r['median_s']} s | {r['max_s']} s | ≤ {TARGET_S} s |")


if __name__ == "__main__":
    main()
