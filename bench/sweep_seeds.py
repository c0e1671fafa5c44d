"""Seed sweep: does a configuration's M_1 beat M_0 on the full suite, the held-out set and the
knowledge probe, once the noise of generation and training is averaged over seeds?

Why this design: one run is one draw of sampling and LoRA noise, and a few points either way is
inside it. Each configuration runs whole (`loop.run`, the shipped code path: generation,
self-assessment, selection, training, export, evaluation) once per `loop.seed`. Evaluation is
greedy, so M_0's answers are the same for every seed and configuration: M_0 is evaluated once and
every later run is forked from the first (`manifest.fork`, M_0 only). Per set, the difference
M_1 − M_0 is averaged over seeds per prompt and bootstrapped over prompts (the prompts, not the
seeds, are the sample; bench/pool_replicates.py explains why).

    python bench/sweep_seeds.py [--configs default,combined] [--seeds 1 2 3] [--out /tmp/seed-sweep]
    python bench/sweep_seeds.py --backfill   # the second set's constraint shares for older runs
    python bench/sweep_seeds.py --versus dpo_margin_0.25 verifiable   # one configuration against another

Writes bench/results/seed-sweep.json after every run (a killed sweep keeps what it measured and
skips finished runs when started again) and prints the pooled table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from isheep_lite import loop, recipe
from isheep_lite.engines.serving import Engines, Served
from isheep_lite.evals import measure
from isheep_lite.rundir.manifest import Manifest, fork
from isheep_lite.stages import EvalSummary, FilterSummary, TrainSummary

# Every configuration is BASE plus its overrides. BASE is the default recipe the sweep started from
# (the calibrated verdict, no verifiable constraints); the default recipe has since taken
# `verifiable`'s constraints, so BASE pins them off to keep every configuration as it was measured.
BASE = ["synth.verifiable_fraction=0"]
CONFIGS: dict[str, list[str]] = {
    "default": [],
    # I-SHEEP's two graded aspects, uncalibrated (its absolute threshold keeps nothing from a 135 M model's
    # scores, so the same rank cut as the default)
    "paper_aspects": ["assess.aspects=[quality,following]", "assess.calibrate=false"],
    "verifiable": ["synth.verifiable_fraction=0.5"],
    "best_of_3": ["synth.responses_per_instruction=3"],
    # the preference step needs two or more answers per instruction: its own effect is dpo − best_of_3
    "dpo": ["synth.responses_per_instruction=3", "train.objective=sft+dpo"],
    # best-of-3 answers a 135 M model grades 0.41 points apart on average: margin 1.0 keeps few pairs
    "dpo_margin_0.25": ["synth.responses_per_instruction=3", "train.objective=sft+dpo", "train.dpo_margin=0.25"],
    # the two levers that each moved both sets, together
    "paper_verifiable": ["assess.aspects=[quality,following]", "assess.calibrate=false", "synth.verifiable_fraction=0.5"],
    "combined": ["synth.verifiable_fraction=0.5", "synth.responses_per_instruction=3", "train.objective=sft+dpo"],
}
# The evaluation every run shares: the decision sets only (the stop-rate prompts and the pairwise
# judge inform a user's report, not this comparison).
EVAL = [
    "eval.ifeval_prompts=0",
    "eval.suite_prompts=160",
    "eval.heldout_prompts=80",
    "eval.knowledge_questions=120",
    "eval.stop_prompts=0",
    "eval.pairwise=false",
]
SETS = {
    "suite": ("suite", "strict_pass"),
    "suite_loose": ("suite", "loose_pass"),
    "heldout": ("heldout", "strict_pass"),
    "heldout_constraints": ("heldout", "constraints_kept"),
}
SETS_KNOWLEDGE = ("knowledge", "correct")
# The stages a run shares with a finished run of the same seed: those before the first stage an
# override the two configurations do not share acts on (the same seed writes the same records).
SHAREABLE = ("instructions", "responses", "assess", "filter")


def first_stage(override: str) -> str:
    """The first stage of an iteration an override changes (selection reads train.objective and
    train.dpo_margin to form preference pairs)."""
    key = override.split("=", 1)[0]
    if key in ("synth.responses_per_instruction", "synth.response_max_tokens"):
        return "responses"
    if key.startswith("synth."):
        return "instructions"
    if key.startswith("assess."):
        return "assess"
    if key.startswith("filter.") or key in ("train.objective", "train.dpo_margin"):
        return "filter"
    return "train"


def shared_stages(a: list[str], b: list[str]) -> tuple[str, ...]:
    """The stages two configurations' runs of one seed do identically."""
    stops = [SHAREABLE.index(st) for st in map(first_stage, set(a) ^ set(b)) if st in SHAREABLE]
    return SHAREABLE[: min(stops, default=len(SHAREABLE))]


def per_prompt(entry: dict) -> dict[str, list[float]]:
    """The per-prompt outcomes of one eval entry, by set."""
    out = {name: [float(x) for x in entry[a][b]] for name, (a, b) in SETS.items() if entry.get(a) and b in entry[a]}
    a, b = SETS_KNOWLEDGE
    if entry.get(a):
        out["knowledge"] = [float(x) for x in entry[a][b]]
    return out


def start_from(results: dict, configs: dict[str, list[str]], name: str, seed: int, first: Path | None, dest: Path) -> dict | None:
    """Fork `dest` from the finished run of this seed that shares the most stages with `name` (else
    from `first`: M_0 and its evaluation only); what was shared, for the results."""
    source, shared = first, ()
    for done in results["runs"].values():
        if done["seed"] != seed or done["config"] not in configs or not Path(done["run_dir"]).exists():
            continue
        common = shared_stages(configs[done["config"]], configs[name])
        if len(common) > len(shared):
            source, shared = Path(done["run_dir"]), common
    if source is not None and not (dest / "manifest.json").exists():
        fork(source, dest, shared)  # M_0 and its evaluation, and the stages in common
    return {"from": str(source), "stages": list(shared)} if shared else None


def seed_mean(runs: list[list[float]]) -> list[float]:
    """Per prompt, the mean over the seeds' runs."""
    return [sum(col) / len(col) for col in zip(*runs)]


def pooled(m0: list[float], runs: list[list[float]]) -> dict:
    """M_1 − M_0 averaged over seeds per prompt, bootstrapped over prompts."""
    diffs = seed_mean([[y - x for x, y in zip(m0, r)] for r in runs])
    d = measure.paired_bootstrap([0.0] * len(diffs), diffs)
    mean = seed_mean(runs)
    return {"m1": round(sum(mean) / len(mean), 4), "delta": d["delta"], "ci95": d["ci95"], "p_worse": d["p_worse"], "seeds": len(runs)}


def versus(results: dict, a: str, b: str) -> str:
    """Configuration A against configuration B, per set: each one's M_1 averaged over its seeds per
    prompt, the difference bootstrapped over prompts (the same prompts, so paired)."""
    lines = [f"{a} − {b}: Δ (95 % CI), P({a} worse)"]
    for s in results["m0"]:
        runs = {c: [r["m1"][s] for r in results["runs"].values() if r["config"] == c and s in r["m1"]] for c in (a, b)}
        if not all(runs.values()):
            continue
        d = measure.paired_bootstrap(seed_mean(runs[b]), seed_mean(runs[a]))
        lines.append(
            f"  {s}: {d['delta']:+.3f} ({d['ci95'][0]:+.3f}…{d['ci95'][1]:+.3f}), {d['p_worse']:.2f} · seeds {len(runs[a])} / {len(runs[b])}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="default,combined")
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--out", type=Path, default=Path("/tmp/seed-sweep"))
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "seed-sweep.json")
    ap.add_argument("--set", nargs="*", default=[], help="overrides added to every run")
    ap.add_argument("--backfill", action="store_true", help="only add the second set's per-prompt constraint shares where missing")
    ap.add_argument("--versus", nargs=2, metavar=("A", "B"), help="only print A − B per set, pooled over the seeds each ran")
    args = ap.parse_args()
    results = json.loads(args.json.read_text()) if args.json.exists() else {"runs": {}}
    if args.versus:
        print(versus(results, *args.versus))
        return
    if args.backfill:
        backfill(results)
        results["pooled"] = pool(results)
        args.json.write_text(json.dumps(results, indent=1))
        print(table(results))
        return
    results.update(eval_overrides=EVAL, base_overrides=BASE, extra_overrides=args.set)
    results.setdefault("configs", {}).update({k: CONFIGS[k] for k in args.configs.split(",")})
    first = next((Path(r["run_dir"]) for r in results["runs"].values() if Path(r["run_dir"]).exists()), None)
    for seed in args.seeds:
        for name in args.configs.split(","):
            key = f"{name}/seed{seed}"
            if key in results["runs"]:
                continue
            dest = args.out / f"{name}-seed{seed}"
            shared = start_from(results, {**CONFIGS, **results["configs"]}, name, seed, first, dest)
            overrides = [
                f"name={dest.name}",
                f"runs_dir={args.out}",
                "loop.iterations=1",
                f"loop.seed={seed}",
                *EVAL,
                *BASE,
                *CONFIGS[name],
                *args.set,
            ]
            start = time.time()
            m = Manifest.of(loop.run(recipe.load(None, overrides), force=True))
            first = first or dest
            e0, e1 = m.get(0, EvalSummary), m.get(1, EvalSummary)
            tr, fl = m.get(1, TrainSummary), m.get(1, FilterSummary)
            assert e0 and e1 and tr and fl
            for k, v in per_prompt(e0.to_entry()).items():  # what --backfill added to M_0 stays
                results.setdefault("m0", {}).setdefault(k, v)
            results["runs"][key] = {
                "config": name,
                "seed": seed,
                "run_dir": str(dest),
                "kept": fl.kept,
                "train_steps": tr.steps,
                "train_loss": tr.train_loss,
                "stage_seconds": m.seconds(1),  # a stage shared by fork counts its source's time
                "shared": shared,
                "seconds": round(time.time() - start, 1),
                "m1": per_prompt(e1.to_entry()),
            }
            results["pooled"] = pool(results)
            args.json.write_text(json.dumps(results, indent=1))
    print(table(results))


def heldout_again(gguf: Path) -> dict:
    """The second set alone on one model (greedy, the sweep's engine settings)."""
    r = recipe.load(None, [*EVAL, "eval.suite_prompts=0", "eval.knowledge_questions=0"])
    with Engines(r) as engines:
        return measure.checks(Served(gguf), r, engines)["heldout"]


def backfill(results: dict) -> None:
    """`heldout_constraints` for the models measured before the eval recorded it: each is evaluated
    on the second set again, and must pass the same prompts as before (greedy decoding) for the
    shares to be added."""
    first = Path(next(iter(results["runs"].values()))["run_dir"])
    m0 = Path(json.loads((first / "manifest.json").read_text())["iterations"]["0"]["base"]["gguf"])
    todo = [(results["m0"], m0)] + [(r["m1"], Path(r["run_dir"]) / "iter_01" / "model-f16.gguf") for r in results["runs"].values()]
    for sets, gguf in todo:
        if "heldout_constraints" not in sets:
            again = heldout_again(gguf)
            assert [float(x) for x in again["strict_pass"]] == sets["heldout"], f"{gguf}: the second set did not repeat"
            sets["heldout_constraints"] = [float(x) for x in again["constraints_kept"]]


def pool(results: dict) -> dict:
    """Per configuration and set, the seed-pooled difference from M_0."""
    out: dict[str, dict] = {}
    for name in sorted({r["config"] for r in results["runs"].values()}):
        runs = [r for r in results["runs"].values() if r["config"] == name]
        out[name] = {s: pooled(m0, [r["m1"][s] for r in runs]) for s, m0 in results["m0"].items() if all(s in r["m1"] for r in runs)}
        # a whole iteration's time, shared stages included (M_0's evaluation is paid once per run directory)
        out[name]["minutes_per_run"] = round(sum(sum(r["stage_seconds"].values()) for r in runs) / len(runs) / 60, 1)
    return out


def table(results: dict) -> str:
    sets = list(results["m0"])
    head = "| configuration | seeds | min/run | " + " | ".join(f"{s}: M_1 (Δ vs M_0, 95 % CI)" for s in sets) + " |"
    lines = [head, "|---|---:|---:|" + "---|" * len(sets)]
    m0 = " | ".join(f"{sum(v) / len(v):.3f}" for v in results["m0"].values())
    lines.append(f"| M_0 | – | – | {m0} |")
    for name, p in results["pooled"].items():
        cells = [f"{p[s]['m1']:.3f} ({p[s]['delta']:+.3f}, {p[s]['ci95'][0]:+.3f}…{p[s]['ci95'][1]:+.3f})" for s in sets if s in p]
        seeds = next(iter(v["seeds"] for k, v in p.items() if isinstance(v, dict)))
        lines.append(f"| {name} | {seeds} | {p['minutes_per_run']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
