"""How fast the run page renders a large run in headless Chromium: a run directory written with the
paper recipe's scale — 2000 answered instructions per iteration, three iterations, every IFEval
prompt answered by each model — its page written by the toolkit, then loaded from the file system.

Measured: the time from navigation to the page's first table drawn (`body[data-ready]`), and the time
one filter and one sort take on every pair of the run. The records are generated (the answers'
lengths are drawn around a self-written answer's), so the numbers are the page's, not a model's.

    python bench/bench_page.py [--pairs 2000] [--iterations 3]

Writes bench/results/page-render.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from browser import open_page  # noqa: E402

from isheep_lite.evals import ifeval  # noqa: E402
from isheep_lite.rundir import page as run_page  # noqa: E402
from isheep_lite.rundir.jsonl import write_jsonl  # noqa: E402
from isheep_lite.rundir.manifest import Manifest  # noqa: E402

WORDS = "the a model answer writes river stone light market garden letter number table small quickly because".split()
REASONS = ["truncated", "below_top_fraction", "fails_constraint", "refusal", "repeats_instruction"]


def text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def write_run(root: Path, pairs: int, iterations: int) -> Path:
    rng = random.Random(0)
    prompts = ifeval.prompts()
    its: dict = {"0": {"base": {"status": "done", "seconds": 1.0, "gguf": "m0.gguf", "hf": "hf"}}}
    for t in range(iterations + 1):
        d = root / f"iter_{t:02d}"
        d.mkdir(parents=True)
        answers = [
            {"set": "ifeval", "id": p.key, "prompt": p.prompt, "answer": text(rng, rng.randint(20, 300)), "passed": rng.random() < 0.2}
            for p in prompts
        ]
        write_jsonl(d / "eval_answers.jsonl", answers)
        if t == 0:
            continue
        rows = [
            {
                "id": f"{t}-{i}",
                "instruction": text(rng, rng.randint(6, 40)),
                "input": "",
                "response": text(rng, rng.randint(10, 320)),
                "gen": {},
            }
            for i in range(pairs)
        ]
        write_jsonl(d / "responses.jsonl", rows)
        write_jsonl(d / "scored.jsonl", [{"id": r["id"], "score": round(rng.uniform(1, 9), 2)} for r in rows])
        kept = rows[: pairs // 2]
        write_jsonl(d / "kept.jsonl", [{"id": r["id"], "messages": [], "score": 1} for r in kept])
        write_jsonl(d / "rejected.jsonl", [{**r, "reason": rng.choice(REASONS)} for r in rows[pairs // 2 :]])
        its[str(t)] = {"responses": {"status": "done", "seconds": 1.0, "responses": pairs, "tokens": 1, "finished": 1}}
    (root / "manifest.json").write_text(json.dumps({"iterations": its}))
    return root


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "page-render.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = write_run(Path(tmp) / "run", args.pairs, args.iterations)
        start = time.perf_counter()
        html = run_page.write_page(Manifest.read(run), run / "report", ())
        written = time.perf_counter() - start
        with open_page(html) as (page, requests, _):
            ready = page.evaluate("performance.now()")  # ms from navigation to the first table drawn
            page.click("nav button[data-tab=pairs]")
            t0 = page.evaluate("performance.now()")
            page.select_option("#p-reason", "truncated")
            t1 = page.evaluate("performance.now()")
            page.select_option("#p-sort", "score-desc")
            t2 = page.evaluate("performance.now()")
            shown = page.inner_text("#p-pager .count")
        result = {
            "date": time.strftime("%Y-%m-%d"),
            "pairs_per_iteration": args.pairs,
            "iterations": args.iterations,
            "ifeval_answers_per_model": len(ifeval.prompts()),
            "page_bytes": html.stat().st_size,
            "write_seconds": round(written, 2),
            "load_to_first_table_ms": round(ready),
            "filter_by_reason_ms": round(t1 - t0),
            "sort_by_grade_ms": round(t2 - t1),
            "rows_after_filter": shown,
            "requests_outside_the_file_system": [u for u in requests if not u.startswith("file://")],
            "target_ms": 2000,
        }
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
