"""Pool lever-sweep replicates (the same variants, other training seeds) into one paired comparison.

    python bench/pool_replicates.py A B bench/results/lever-sweep-2.json bench/results/lever-sweep-2-seed1.json ...

Why: one M_1 per variant is one draw of LoRA training noise, and the suite's 120 prompts give an
interval of about ±0.05 — wider than any selection lever's effect here. Each replicate trains both
variants on the same pool with another `loop.seed`; the difference B − A is averaged over the
replicates per suite prompt and bootstrapped over prompts (the prompts, not the seeds, are the
sample), so the interval narrows as replicates are added without treating one prompt's answers
under three seeds as three independent prompts.
Prints one line per replicate and the pooled line; writes nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from isheep_lite.evals import measure


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("a", help="the reference variant")
    ap.add_argument("b", help="the variant compared with it")
    ap.add_argument("json", nargs="+", type=Path, help="sweep JSONs holding both variants with their strict_pass")
    args = ap.parse_args()
    diffs: list[list[float]] = []
    for f in args.json:
        v = json.loads(f.read_text())["variants"]
        a, b = v[args.a]["strict_pass"], v[args.b]["strict_pass"]
        d = measure.paired_bootstrap(a, b)
        print(
            f"{f.name}: {args.a} {sum(a) / len(a):.3f}, {args.b} {sum(b) / len(b):.3f}, "
            f"Δ {d['delta']:+} ({d['ci95'][0]:+}–{d['ci95'][1]:+}), P(worse) {d['p_worse']}"
        )
        diffs.append([y - x for x, y in zip(a, b)])
    per_prompt = [sum(col) / len(col) for col in zip(*diffs)]
    d = measure.paired_bootstrap([0.0] * len(per_prompt), per_prompt)
    print(
        f"pooled over {len(diffs)} replicates × {len(per_prompt)} prompts: Δ {d['delta']:+} "
        f"({d['ci95'][0]:+}–{d['ci95'][1]:+}), P(worse) {d['p_worse']}"
    )


if __name__ == "__main__":
    main()
