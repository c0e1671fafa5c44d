"""IFEval sweep: which recipe's M_1 beats M_0 on IFEval (lm-evaluation-harness's checker, all 541
prompts), without losing knowledge — chosen on some seeds, confirmed on fresh ones.

Every configuration is the current default recipe plus its overrides, one iteration per
`loop.seed`, run whole (`loop.run`: generation, self-assessment, selection, training, export,
evaluation). M_0 is evaluated once and every later run is forked from the first (`manifest.fork`,
M_0 only); a run shares with a finished run of the same seed the stages their overrides do not
change. Per set, M_1 − M_0 is averaged over seeds per prompt and bootstrapped over prompts.

Sets: `ifeval` (prompt-level loose, all prompts), `ifeval_strict`, `ifeval_untrained` (loose, the
prompts none of whose kinds the verifiable library trains — the same prompts for every
configuration), `heldout` (the second set's share of constraints kept), `knowledge`, `stop`.

    python bench/sweep_ifeval.py --configs default,more_pairs --seeds 1 2 3     # choose
    python bench/sweep_ifeval.py --configs more_pairs,default --seeds 4 5 6     # confirm
    python bench/sweep_ifeval.py --versus more_pairs default --seeds 4 5 6      # A − B, paired

Writes bench/results/ifeval-sweep.json after every run (a killed sweep keeps what it measured and
skips finished runs when started again) and prints the pooled table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sweep_seeds import pooled, seed_mean, start_from

from isheep_lite import loop, recipe
from isheep_lite.evals import ifeval, measure
from isheep_lite.rundir.manifest import Manifest
from isheep_lite.selfalign import constraints
from isheep_lite.stages import EvalSummary, FilterSummary, PromoteSummary, TrainSummary

CONFIGS: dict[str, list[str]] = {
    "default": [],  # the shipped recipe: verifiable constraints on half the instructions
    "previous_default": ["synth.verifiable_fraction=0"],  # the default before it
    "more_pairs": ["synth.num_instructions=384"],  # three times the kept pairs
    "verifiable_all": ["synth.verifiable_fraction=1.0"],
    "more_pairs_verifiable_all": ["synth.num_instructions=384", "synth.verifiable_fraction=1.0"],
    "best_of_3_dpo": ["synth.responses_per_instruction=3", "train.objective=sft+dpo", "train.dpo_margin=0.25"],
}
EVAL = [
    "eval.ifeval_prompts=541",
    "eval.heldout_prompts=80",
    "eval.knowledge_questions=120",
    "eval.stop_prompts=20",
    "eval.suite_prompts=0",
    "eval.pairwise=false",
]
# IFEval's prompts none of whose instruction kinds the verifiable library trains
UNTRAINED = [not set(p.instruction_id_list) & constraints.trained_kinds(1.0) for p in ifeval.prompts()]


def per_prompt(e: EvalSummary) -> dict[str, list[float]]:
    """The per-prompt outcomes of one model, by set."""
    out: dict[str, list[float]] = {}
    if e.ifeval:
        loose = [float(x) for x in e.ifeval["per_prompt_loose"]]
        out["ifeval"], out["ifeval_strict"] = loose, [float(x) for x in e.ifeval["per_prompt_strict"]]
        out["ifeval_untrained"] = [x for x, u in zip(loose, UNTRAINED) if u]
    if e.heldout:
        out["heldout"] = [float(x) for x in e.heldout["constraints_kept"]]
    if e.knowledge:
        out["knowledge"] = [float(x) for x in e.knowledge["correct"]]
    if e.samples:
        out["stop"] = measure.stopped(e.to_entry())
    return out


def pool(results: dict, seeds: list[int]) -> dict:
    """Per configuration and set, the difference from M_0 pooled over `seeds`."""
    out: dict[str, dict] = {}
    for name in sorted({r["config"] for r in results["runs"].values()}):
        runs = [r for r in results["runs"].values() if r["config"] == name and r["seed"] in seeds]
        if runs:
            out[name] = {s: pooled(m0, [r["m1"][s] for r in runs]) for s, m0 in results["m0"].items() if all(s in r["m1"] for r in runs)}
            out[name]["minutes_per_run"] = round(sum(sum(r["stage_seconds"].values()) for r in runs) / len(runs) / 60, 1)
    return out


def versus(results: dict, a: str, b: str, seeds: list[int]) -> str:
    """A against B per set, on the seeds both ran: each one's M_1 averaged over seeds per prompt, paired."""
    lines = [f"{a} − {b} over seeds {seeds}: Δ (95 % CI), P({a} worse)"]
    for s in results["m0"]:
        runs = {c: [r["m1"][s] for r in results["runs"].values() if r["config"] == c and r["seed"] in seeds] for c in (a, b)}
        if all(runs.values()):
            d = measure.paired_bootstrap(seed_mean(runs[b]), seed_mean(runs[a]))
            lines.append(f"  {s}: {d['delta']:+.4f} ({d['ci95'][0]:+.4f}…{d['ci95'][1]:+.4f}), {d['p_worse']:.2f} · seeds {len(runs[a])}")
    return "\n".join(lines)


def table(results: dict, pooled_: dict) -> str:
    sets = list(results["m0"])
    lines = ["| configuration | seeds | min/run | " + " | ".join(f"{s}: M_1 (Δ vs M_0, 95 % CI)" for s in sets) + " |"]
    lines.append("|---|---:|---:|" + "---|" * len(sets))
    lines.append("| M_0 | – | – | " + " | ".join(f"{sum(v) / len(v):.4f}" for v in results["m0"].values()) + " |")
    for name, p in pooled_.items():
        cells = [f"{p[s]['m1']:.4f} ({p[s]['delta']:+.4f}, {p[s]['ci95'][0]:+.4f}…{p[s]['ci95'][1]:+.4f})" if s in p else "–" for s in sets]
        seeds = next(v["seeds"] for v in p.values() if isinstance(v, dict))
        lines.append(f"| {name} | {seeds} | {p['minutes_per_run']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="default")
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--out", type=Path, default=Path("/tmp/ifeval-sweep"))
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "ifeval-sweep.json")
    ap.add_argument("--versus", nargs=2, metavar=("A", "B"), help="only print A − B per set over --seeds")
    args = ap.parse_args()
    results = json.loads(args.json.read_text()) if args.json.exists() else {"runs": {}}
    if args.versus:
        print(versus(results, *args.versus, args.seeds) if "m0" in results else f"{args.json}: no run measured yet")
        return
    results.update(eval_overrides=EVAL, configs=CONFIGS)
    first = next((Path(r["run_dir"]) for r in results["runs"].values() if Path(r["run_dir"]).exists()), None)
    for seed in args.seeds:
        for name in args.configs.split(","):
            key = f"{name}/seed{seed}"
            if key in results["runs"]:
                continue
            dest = args.out / f"{name}-seed{seed}"
            shared = start_from(results, CONFIGS, name, seed, first, dest)
            overrides = [f"name={dest.name}", f"runs_dir={args.out}", "loop.iterations=1", f"loop.seed={seed}", *EVAL, *CONFIGS[name]]
            start = time.time()
            m = Manifest.of(loop.run(recipe.load(None, overrides), force=True))
            first = first or dest
            e0, e1 = m.get(0, EvalSummary), m.get(1, EvalSummary)
            tr, fl = m.get(1, TrainSummary), m.get(1, FilterSummary)
            assert e0 and e1 and tr and fl
            results["m0"] = results.get("m0") or per_prompt(e0)
            results["m0_figures"] = {k: v for k, v in e0.ifeval.items() if not isinstance(v, list)}
            results["runs"][key] = {
                "config": name,
                "seed": seed,
                "run_dir": str(dest),
                "kept": fl.kept,
                "train_steps": tr.steps,
                "stage_seconds": m.seconds(1),  # a stage shared by fork counts its source's time
                "shared": shared,
                "seconds": round(time.time() - start, 1),
                "promoted": m.get(1, PromoteSummary).best == 1,
                "m1": per_prompt(e1),
            }
            args.json.write_text(json.dumps(results, indent=1))
    print(table(results, pool(results, args.seeds)))


if __name__ == "__main__":
    main()
