"""Print a run's manifest as markdown tables (per-stage counts and seconds; evaluation per model).

    python bench/manifest_table.py runs/smollm2-135m-cpu [--save bench/results/default-run.json]
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

STAGES = ("instructions", "responses", "assess", "filter", "train", "export", "eval")


def counts(stage: str, e: dict) -> str:
    if stage == "instructions":
        return f"{e['instructions']} kept of {e['instructions'] + e['rejected']} parsed, {e['prompts']} prompts"
    if stage == "responses":
        return f"{e['responses']} answers, {e['tokens']} tokens, {e['finished']} ended by end-of-turn"
    if stage == "assess":
        return f"{e['scored']} pairs by {e['assessor']}, mean {e['score_mean']} (sd {e['score_sd']}, {e['score_min']}–{e['score_max']})"
    if stage == "filter":
        return f"{e['kept']} kept ({100 * e['kept_ratio']:.0f} %), rejected: " + ", ".join(f"{k} {v}" for k, v in e["rejected_by_reason"].items())
    if stage == "train":
        return f"{e['examples']} examples, {e['steps']} steps, loss {e['loss_first']} → {e['loss_last']}"
    if stage == "export":
        return ", ".join(Path(p).name for p in e["files"].values())
    if stage == "eval":
        return "see the table below"
    return ""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--save", type=Path)
    args = ap.parse_args()
    m = json.loads((args.run_dir / "manifest.json").read_text())
    its = m["iterations"]
    print("| iteration | stage | seconds | counts |\n|---|---|---:|---|")
    for t in sorted(its, key=int):
        for stage in ("base",) + STAGES:
            e = its[t].get(stage)
            if e:
                print(f"| {t} | {stage} | {e['seconds']:.0f} | {counts(stage, e) if stage != 'base' else 'M_0 served as F16'} |")
    total = sum(e["seconds"] for st in its.values() for e in st.values())
    print(f"| | **total** | **{total:.0f}** | |")
    print("\n| model | stop rate (20 prompts, ≤512 tokens) | mean answer tokens | suite strict (95 % CI) | suite loose |\n|---|---:|---:|---:|---:|")
    for t in sorted(its, key=int):
        e = its[t].get("eval")
        if e:
            s = e.get("ifeval", {})
            ci = s.get("strict_ci95", [None, None])
            print(f"| M_{t} | {e.get('stop_rate')} | {e.get('mean_tokens')} | {s.get('strict')} ({ci[0]}–{ci[1]}) | {s.get('loose')} |")
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.run_dir / "manifest.json", args.save)


if __name__ == "__main__":
    main()
