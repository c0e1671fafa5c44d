"""Does self-assessment separate good from bad answers? AUROC on this project's labelled set.

    python bench/bench_assess_quality.py [--model embedded:smollm2-135m-instruct] [--labelled PATH ...]

tests/data/assess_labelled.jsonl holds 84 (instruction, response) pairs written for this project,
42 good and 42 bad (wrong, off-topic, ignores a constraint, repetitive, truncated). Each signal
scores every pair; AUROC = P(a random good pair scores above a random bad one), ties count half;
0.5 = no separation. The 95 % interval is a percentile bootstrap over pairs (2000 resamples).
Signals: the assessment levels (quality only, instruction-following only, both = I-SHEEP's mean),
the yes/no verdict, each with log-prob scores and grammar-constrained answers, each again calibrated
(grading.calibrate: the score minus the score with the instruction withheld — the calibrated verdict
is the toolkit's default, marked "← default"), IFD (lower = better,
so −IFD is used), and rank-mean combinations (filter.rank_by: score+ifd).
Also the pairwise judge (measure.pairwise) on the 42 (good, bad) answers to the same instruction:
how often it prefers the good one in both orders, and its position bias.
Caveat: the verdict question and the combinations were picked after trying several signals on this
same set, so their AUROC is optimistic. tests/data/assess_labelled_heldout.jsonl is the fair test:
84 more pairs (new instructions, the same mix of bad kinds), written after every signal here was
fixed and scored once with them unchanged (`--labelled tests/data/assess_labelled_heldout.jsonl`).
The calibrated verdict was then picked on those two sets, so tests/data/assess_labelled_fresh.jsonl
(84 more pairs, written after it was fixed) is its fair test.
Several files are pooled (`--labelled A.jsonl B.jsonl C.jsonl`; each file's AUROC is reported too).
Prints a table and writes
bench/results/assess-quality.json (assess-quality-<file stem>.json for another labelled file,
assess-quality-pooled.json for several).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from isheep_lite.config import AssessConfig
from isheep_lite.engines.llamacpp import Engine
from isheep_lite.evals import measure
from isheep_lite.gguf import header
from isheep_lite.selfalign import filters, grading

ROOT = Path(__file__).resolve().parent
LABELLED = ROOT.parent / "tests" / "data" / "assess_labelled.jsonl"


def auroc(scores: list[float], labels: list[int]) -> float:
    good = [s for s, y in zip(scores, labels) if y]
    bad = [s for s, y in zip(scores, labels) if not y]
    wins = sum((g > b) + 0.5 * (g == b) for g in good for b in bad)
    return wins / (len(good) * len(bad))


def auroc_ci(scores: list[float], labels: list[int], n_boot: int = 2000, seed: int = 0) -> list[float]:
    rng, n, vals = random.Random(seed), len(scores), []
    while len(vals) < n_boot:
        idx = [rng.randrange(n) for _ in range(n)]
        ys = [labels[i] for i in idx]
        if 0 < sum(ys) < n:
            vals.append(auroc([scores[i] for i in idx], ys))
    vals.sort()
    return [round(vals[int(0.025 * n_boot)], 3), round(vals[int(0.975 * n_boot) - 1], 3)]


def judge_accuracy(e: Engine, rows: list[dict]) -> dict:
    """The pairwise judge on (good, bad) answers to the same instruction, good as `new`, bad as `old`."""
    pairs: dict[str, dict[str, str]] = {}
    for r in rows:
        pairs.setdefault(r["instruction"], {})[r["label"]] = r["response"]
    qs = [q for q, v in pairs.items() if {"good", "bad"} <= set(v)]
    out = measure.pairwise(e, qs, [pairs[q]["good"] for q in qs], [pairs[q]["bad"] for q in qs])
    k = len(qs)
    by_odds = sum(x is not None and x > 0 for x in out["log_odds"])  # a forced choice, no tie margin
    return {
        "pairs": k,
        "good_both_orders": out["win"],
        "bad_both_orders": out["loss"],
        "ties": out["tie"],
        "judge_prefers_a": out["judge_prefers_a"],
        "good_by_log_odds": int(by_odds),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--labelled", nargs="+", default=[str(LABELLED)], help="one labelled JSONL, or several pooled")
    args = ap.parse_args()
    files = [Path(x) for x in args.labelled]
    rows = [{**json.loads(line), "file": f.name} for f in files for line in f.read_text().splitlines() if line.strip()]
    labels = [int(r["label"] == "good") for r in rows]
    path = header.resolve_gguf(args.model)
    signals: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    with Engine(path, n_ctx=2048, n_parallel=16) as e:
        for mode in ("logprob", "grammar"):
            # the log-prob pass is calibrated too: its records keep the uncalibrated scores as scores_shown
            t = time.perf_counter()
            cfg = AssessConfig(mode=mode, aspects=["quality", "following", "verdict"], calibrate=mode == "logprob")
            out = grading.assess(e, rows, cfg, "bench", {}, lambda r: None)
            seconds[f"{mode}{', with calibration' if cfg.calibrate else ''}"] = time.perf_counter() - t
            raw = [r["scores_shown"] if cfg.calibrate else r["scores"] for r in out]
            signals[f"quality only ({mode})"] = [x["quality"] for x in raw]
            signals[f"following only ({mode})"] = [x["following"] for x in raw]
            signals[f"both, mean ({mode})"] = [(x["quality"] + x["following"]) / 2 for x in raw]
            signals[f"verdict ({mode})"] = [x["verdict"] for x in raw]
            if cfg.calibrate:
                for aspect in ("quality", "following", "verdict"):
                    default = " ← default" if aspect == "verdict" else ""  # AssessConfig(): aspects [verdict], calibrate
                    signals[f"{aspect}, calibrated (logprob){default}"] = [r["scores"][aspect] for r in out]
                signals["both, mean, calibrated (logprob)"] = [(r["scores"]["quality"] + r["scores"]["following"]) / 2 for r in out]
        t = time.perf_counter()
        signals["−IFD (judge-free)"] = [-x for x in grading.ifd(e, rows)]
        seconds["ifd"] = time.perf_counter() - t
        for name in ("both, mean (logprob)", "verdict (logprob)"):
            signals[f"{name} + IFD, rank mean"] = [
                (a + b) / 2 for a, b in zip(filters.ranks(signals[name]), filters.ranks(signals["−IFD (judge-free)"]))
            ]
        t = time.perf_counter()
        judge = judge_accuracy(e, rows)
        seconds["pairwise judge"] = time.perf_counter() - t
    results = {name: {"auroc": round(auroc(s, labels), 3), "ci95": auroc_ci(s, labels)} for name, s in signals.items()}
    if len(files) > 1:  # each file's own AUROC too, from the same scores
        for name, s in signals.items():
            results[name]["by_file"] = {
                f.name: round(
                    auroc([x for x, r in zip(s, rows) if r["file"] == f.name], [y for y, r in zip(labels, rows) if r["file"] == f.name]), 3
                )
                for f in files
            }
    by_kind = {}
    for name in ("both, mean (logprob)", "verdict, calibrated (logprob) ← default", "−IFD (judge-free)"):
        s = signals[name]
        goods = [x for x, y in zip(s, labels) if y]
        for kind in sorted({r["kind"] for r in rows} - {"good"}):
            bads = [x for x, r in zip(s, rows) if r["kind"] == kind]
            by_kind.setdefault(name, {})[kind] = round(auroc(goods + bads, [1] * len(goods) + [0] * len(bads)), 3)
    heads = "".join(f" | {f.stem}" for f in files) if len(files) > 1 else ""
    print(f"| signal ({len(rows)} pairs, {path.name}) | AUROC | 95 % CI{heads} |\n|---|---:|---|" + "---:|" * (len(files) > 1) * len(files))
    for name, v in results.items():
        per_file = "".join(f" | {a}" for a in v.get("by_file", {}).values())
        print(f"| {name} | {v['auroc']} | {v['ci95'][0]}–{v['ci95'][1]}{per_file} |")
    print("\nAUROC of good vs each kind of bad:")
    for name, kinds in by_kind.items():
        print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in kinds.items()))
    print(
        f"\nPairwise judge on {judge['pairs']} (good, bad) answers to one instruction: prefers good in both orders "
        f"{judge['good_both_orders']}, bad in both {judge['bad_both_orders']}, ties {judge['ties']}; "
        f"position A chosen {judge['judge_prefers_a']:.0%}; summed log-odds favour good in {judge['good_by_log_odds']}"
    )
    out = {
        "model": path.name,
        "labelled": [f.name for f in files],
        "pairs": len(rows),
        "results": results,
        "by_kind": by_kind,
        "pairwise_judge": judge,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    (ROOT / "results").mkdir(exist_ok=True)
    name = (
        "assess-quality.json"
        if [f.resolve() for f in files] == [LABELLED.resolve()]
        else f"assess-quality-{files[0].stem}.json"
        if len(files) == 1
        else "assess-quality-pooled.json"
    )
    (ROOT / "results" / name).write_text(json.dumps(out, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
