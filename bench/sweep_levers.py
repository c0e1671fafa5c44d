"""Lever sweep: which selection/training settings make M_1 better than M_0 on held-out checks?

Why this design: the levers swept here (keep fraction, response/instruction strictness, learning rate,
epochs, LoRA rank) act *after* self-assessment, so one finished run's iteration-1 instructions,
responses and self-scores serve every variant. Each variant copies them into its own run directory and
runs the toolkit's own filter → train → export → eval stages through `loop.run` (the shipped code
path, not a re-implementation). M_0 is evaluated once, on the same prompts, and its entry is reused.
Each M_1 is compared with M_0 by a paired bootstrap over the same suite prompts.

    python bench/sweep_levers.py SOURCE_RUN_DIR [--out /tmp/sweep] [--suite 120] [--only a,b] [--set loop.seed=1 ...]

Prints a markdown table and writes bench/results/lever-sweep.json (updated after every variant, so a
killed sweep keeps what it measured).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import yaml

from isheep_lite import config, loop, recipe
from isheep_lite.evals import measure
from isheep_lite.rundir.jsonl import read_jsonl, write_jsonl
from isheep_lite.rundir.manifest import Manifest, fork
from isheep_lite.selfalign import filters
from isheep_lite.stages import EvalSummary, FilterSummary, TrainSummary

VARIANTS: dict[str, list[str]] = {
    "default": [],
    "keep_all": ["filter.keep_top=null"],  # no assessment: rule filters only
    "keep_top_0.25": ["filter.keep_top=0.25"],
    "lr_3e-4": ["train.lr=3e-4"],
    "epochs_1": ["train.epochs=1"],
    "rank_16": ["train.lora_r=16", "train.lora_alpha=32"],
    "strict_instr": [],  # instructions of ≥ 8 words, ROUGE-L < 0.5 to each other (applied below)
    "short_answers": ["filter.max_response_words=120"],
    "lr_3e-5": ["train.lr=3e-5"],
    "epochs_3": ["train.epochs=3"],
    # Selection by IFD (judge-free) and by the yes/no verdict + IFD: these re-run self-assessment
    # (M_0 grades again, now also recording IFD) on the same pairs.
    "rank_ifd": ["assess.ifd=true", "filter.rank_by=ifd"],
    "verdict_ifd": ["assess.aspects=[verdict]", "assess.ifd=true", "filter.rank_by=score+ifd"],
    # The yes/no verdict calibrated against the same question with the instruction withheld (today's default).
    "verdict_calibrated": ["assess.aspects=[verdict]", "assess.calibrate=true"],
    # I-SHEEP's pair of graded aspects, uncalibrated (the default until the calibrated verdict replaced it).
    "quality_following": ["assess.aspects=[quality,following]", "assess.calibrate=false"],
}
REASSESS = {"rank_ifd", "verdict_ifd", "verdict_calibrated", "quality_following"}
REUSED = ("instructions", "responses", "assess")


def stricter_pool(d: Path) -> None:
    """Keep only pairs whose instruction passes min_words=8 and ROUGE-L < 0.5 against those kept before it."""
    cfg = config.FilterConfig(min_words=8)
    index, keep = filters.RougeIndex(), set()
    for x in read_jsonl(d / "instructions.jsonl"):
        text = x["instruction"] + " " + x.get("input", "")
        if filters.instruction_reject_reason(x["instruction"], cfg) is None and index.max_f1(text) < 0.5:
            index.add(text)
            keep.add(x["id"])
    for name in ("instructions.jsonl", "responses.jsonl", "scored.jsonl"):
        write_jsonl(d / name, [x for x in read_jsonl(d / name) if x["id"] in keep])


def prepare(source: Path, dest: Path, m0_eval: dict | None, strict: bool, reassess: bool = False) -> None:
    """A run directory holding the source's M_0 and iteration-1 records up to self-assessment (or before it)."""
    fork(source, dest, REUSED[:2] if reassess else REUSED)
    if strict:
        stricter_pool(dest / "iter_01")
    m = json.loads((dest / "manifest.json").read_text())
    m["iterations"]["0"] = {"base": m["iterations"]["0"]["base"], **({"eval": m0_eval} if m0_eval else {})}
    (dest / "manifest.json").write_text(json.dumps(m, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("source", type=Path)
    ap.add_argument("--out", type=Path, default=Path("/tmp/sweep"))
    ap.add_argument("--suite", type=int, default=120)
    ap.add_argument("--only", default="")
    ap.add_argument("--set", nargs="*", default=[], help="overrides added to every variant, e.g. a replicate's loop.seed=1")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "lever-sweep.json")
    args = ap.parse_args()
    names = [n for n in VARIANTS if not args.only or n in args.only.split(",")]
    results = json.loads(args.json.read_text()) if args.json.exists() else {"variants": {}}
    default_assess = asdict(recipe.load(None).assess)
    results.update(
        source=str(args.source), suite_prompts=args.suite, stop_prompts=20, extra_overrides=args.set, default_assess=default_assess
    )
    m0_eval = results.get("m0_eval")
    # "default" reuses the source's self-scores only if the source was graded the way the default grades
    stale = yaml.safe_load((args.source / "recipe.yaml").read_text())["assess"] != default_assess
    for name in names:
        dest = args.out / name
        prepare(args.source, dest, m0_eval, strict=name == "strict_instr", reassess=name in REASSESS or (name == "default" and stale))
        overrides = [
            f"name={name}",
            f"runs_dir={args.out}",
            "loop.iterations=1",
            "eval.ifeval_prompts=0",
            f"eval.suite_prompts={args.suite}",
            *VARIANTS[name],
            *args.set,
        ]
        start = time.time()
        m = Manifest.of(loop.run(recipe.load(None, overrides), force=True))
        m0_eval = m0_eval or m.data["iterations"]["0"]["eval"]  # the raw entry: the next variant's manifest reuses it
        results["m0_eval"] = m0_eval
        e1, tr, fl = m.get(1, EvalSummary), m.get(1, TrainSummary), m.get(1, FilterSummary)
        assert e1 and e1.suite and tr and fl
        results["variants"][name] = {
            "overrides": VARIANTS[name] or (["instructions: min_words 8, ROUGE-L < 0.5"] if name == "strict_instr" else []),
            "kept": fl.kept,
            "train_steps": tr.steps,
            "train_loss": tr.train_loss,
            "stop_rate": e1.stop_rate,
            "strict": e1.suite["strict"],
            "loose": e1.suite["loose"],
            "strict_ci95": e1.suite["strict_ci95"],
            "vs_m0": measure.paired_bootstrap(m0_eval["suite"]["strict_pass"], e1.suite["strict_pass"]),
            "strict_pass": e1.suite["strict_pass"],  # per suite prompt: replicates pool by prompt (bench/pool_replicates.py)
            "seconds": round(time.time() - start, 1),
        }
        args.json.write_text(json.dumps(results, indent=2))
    print(table(results))


def table(results: dict) -> str:
    m0 = results["m0_eval"]
    lines = [
        "| model | kept pairs | steps | stop rate | suite strict (95 % CI) | loose | Δ strict vs M_0 (95 % CI) | P(worse) |",
        "|---|---:|---:|---:|---|---:|---|---:|",
        f"| M_0 | – | – | {m0['stop_rate']} | {m0['suite']['strict']} ({m0['suite']['strict_ci95'][0]}–{m0['suite']['strict_ci95'][1]}) "
        f"| {m0['suite']['loose']} | – | – |",
    ]
    for name, v in results["variants"].items():
        d = v["vs_m0"]
        lines.append(
            f"| M_1 {name} | {v['kept']} | {v['train_steps']} | {v['stop_rate']} | {v['strict']} ({v['strict_ci95'][0]}–{v['strict_ci95'][1]}) "
            f"| {v['loose']} | {d['delta']:+} ({d['ci95'][0]:+}–{d['ci95'][1]:+}) | {d['p_worse']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
