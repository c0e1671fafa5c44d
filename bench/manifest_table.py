"""Print a run's manifest as markdown tables (per-stage counts and seconds; evaluation per model).

python bench/manifest_table.py runs/smollm2-135m-cpu [--save bench/results/default-run.json]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from isheep_lite.rundir.manifest import Manifest
from isheep_lite.stages import (
    SUMMARIES,
    AssessSummary,
    EvalSummary,
    ExportSummary,
    FilterSummary,
    InstructionsSummary,
    PromoteSummary,
    ResponsesSummary,
    Summary,
    TrainSummary,
)

STAGES = ("base", "instructions", "responses", "assess", "filter", "train", "export", "eval")


def counts(e: Summary) -> str:
    if isinstance(e, InstructionsSummary):
        return f"{e.instructions} kept of {e.instructions + e.rejected} parsed, {e.prompts} prompts"
    if isinstance(e, ResponsesSummary):
        return f"{e.responses} answers, {e.tokens} tokens, {e.finished} ended by end-of-turn"
    if isinstance(e, AssessSummary):
        return f"{e.scored} pairs by {e.assessor}, mean {e.score_mean} (sd {e.score_sd}, {e.score_min}–{e.score_max})"
    if isinstance(e, FilterSummary):
        return f"{e.kept} kept ({100 * e.kept_ratio:.0f} %), rejected: " + ", ".join(f"{k} {v}" for k, v in e.rejected_by_reason.items())
    if isinstance(e, TrainSummary):
        resumed = f"; seconds from the resume at step {e.resumed_from_step}" if e.resumed_from_step else ""
        return f"{e.examples} examples, {e.steps} steps, loss {e.loss_first} → {e.loss_last}{resumed}"
    if isinstance(e, ExportSummary):
        return ", ".join(Path(p).name for p in e.files.values())
    if isinstance(e, EvalSummary):
        return "see the table below"
    return "M_0 served as F16"


def suite_cells(ev: EvalSummary) -> str:
    s = ev.suite or {}
    ci = s.get("strict_ci95", [None, None])
    return f"{s.get('strict')} ({ci[0]}–{ci[1]}) | {s.get('loose')}"


def heldout_cell(ev: EvalSummary) -> str:
    h = ev.heldout or {}
    kept = h.get("constraints_kept")
    return f"{h.get('strict', '–')}, {sum(kept) / len(kept):.3f}" if kept else "–"


def ifeval_cell(ev: EvalSummary) -> str:
    i = ev.ifeval or {}
    if not i:
        return "–"
    ci, un = i["prompt_loose_ci95"], i.get("untrained") or {}
    return f"{i['prompt_loose']:.4f} ({ci[0]}–{ci[1]}), untrained kinds {un.get('mean')} of {un.get('prompts')}"


def knowledge_cell(ev: EvalSummary) -> str:
    k = ev.knowledge or {}
    ci = k.get("accuracy_ci95", [None, None])
    return f"{k['accuracy']} ({ci[0]}–{ci[1]})" if k else "–"


def promote_cell(m: Manifest, t: int) -> str:
    """Δ per compared set against the best model before M_t, and the decision."""
    p = m.get(t, PromoteSummary)
    if not p or not p.sets:
        return "–"
    # a run before the guard compared with M_0 kept one comparison per set, against the best
    deltas = "; ".join(
        f"{k} {v['delta']:+.3f} ({v['ci95'][0]:+.3f}…{v['ci95'][1]:+.3f})" for k, v in ((k, s.get("vs_best", s)) for k, s in p.sets.items())
    )
    flag = " (flagged worse)" if p.worse else ""
    return f"vs M_{p.against}: {deltas} → {'best' if p.best == t else 'not promoted'}{flag}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--save", type=Path)
    args = ap.parse_args()
    m = Manifest.read(args.run_dir)
    print("| iteration | stage | seconds | counts |\n|---|---|---:|---|")
    for t in m.iterations(with_base=True):
        for stage in STAGES:
            if e := m.get(t, SUMMARIES[stage]):
                print(f"| {t} | {stage} | {e.seconds:.0f} | {counts(e)} |")
    total = sum(sum(m.seconds(t).values()) for t in m.iterations(with_base=True))
    print(f"| | **total** | **{total:.0f}** | |")
    evals = {t: ev for t in m.iterations(with_base=True) if (ev := m.get(t, EvalSummary))}
    suite = any(ev.suite for ev in evals.values())  # the suite's columns only where it ran
    print(
        "\n| model | stop rate | mean answer tokens | IFEval loose (95 % CI) | "
        + ("suite strict (95 % CI) | suite loose | " if suite else "")
        + "second set: whole prompts, constraints kept | knowledge (95 % CI) | promote |\n|---|---:|---:|---|"
        + ("---:|---:|" if suite else "")
        + "---:|---:|---|"
    )
    for t, ev in evals.items():
        print(
            f"| M_{t} | {ev.stop_rate} | {ev.mean_tokens} | {ifeval_cell(ev)} | "
            + (f"{suite_cells(ev)} | " if suite else "")
            + f"{heldout_cell(ev)} | {knowledge_cell(ev)} | {promote_cell(m, t)} |"
        )
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.run_dir / "manifest.json", args.save)


if __name__ == "__main__":
    main()
