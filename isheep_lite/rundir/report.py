"""`isheep report RUN_DIR`: report.md and PNG plots of one run, read from its manifest and records.

Why pictures: whether self-alignment helped, and where it stopped helping, is a trend over
iterations with noisy measurements; a plot with intervals shows it at a glance where a table of
numbers does not. Everything is read back from the run directory, so a report can be made of a
finished, a stopped or a running run (only finished stages are shown). Matplotlib runs headless (Agg).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from isheep_lite.evals import measure
from isheep_lite.rundir.files import atomic_path, atomic_write_text
from isheep_lite.rundir.jsonl import read_jsonl
from isheep_lite.rundir.manifest import Manifest
from isheep_lite.rundir.page import write_page
from isheep_lite.stages import (
    AssessSummary,
    EvalSummary,
    FilterSummary,
    InstructionsSummary,
    PromoteSummary,
    ResponsesSummary,
    TrainSummary,
    assess,
    instructions,
)

FIGSIZE, DPI = (8.0, 4.5), 100  # every plot is 800 × 450 pixels
PLOTS = ("scores", "selection", "loss", "eval", "throughput")


def eval_rows(m: Manifest) -> list[dict[str, Any]]:
    """One row per evaluated model: metric → (value, 95 % interval). IFEval is split into its prompts
    whose constraint kinds training sees (`ifeval_trained`) and the rest (`ifeval_untrained`: what
    promotion decides on); so is the second set."""
    rows = []
    for t in m.iterations(with_base=True):
        e = m.get(t, EvalSummary)
        if not e:
            continue
        row: dict[str, Any] = {"t": t, "promote": m.get(t, PromoteSummary)}
        if e.samples:
            stops = [float(s["finish"] == "stop") for s in e.samples]
            row["stop_rate"] = (e.stop_rate, measure.bootstrap_ci(stops))
        if e.ifeval:
            i = e.ifeval
            row["ifeval_loose"] = (i["prompt_loose"], i["prompt_loose_ci95"])
            row["ifeval_strict"] = (i["prompt_strict"], i["prompt_strict_ci95"])
            row["ifeval_instruction_loose"] = (i["instruction_loose"], None)
            for part in ("untrained", "trained_part"):
                if i.get(part, {}).get("prompts"):
                    row[f"ifeval_{part.split('_')[0]}"] = (i[part]["mean"], i[part]["ci95"])
        if e.suite:
            row["strict"] = (e.suite["strict"], e.suite["strict_ci95"])
            row["loose"] = (e.suite["loose"], None)
        if e.heldout:
            row["heldout"] = (e.heldout["strict"], e.heldout["strict_ci95"])
            for part in ("untrained", "trained_part"):
                if e.heldout.get(part, {}).get("prompts"):
                    row[f"heldout_{part.split('_')[0]}"] = (e.heldout[part]["mean"], e.heldout[part]["ci95"])
        if e.knowledge:
            row["knowledge"] = (e.knowledge["accuracy"], e.knowledge["accuracy_ci95"])
        if e.pairwise:
            p = e.pairwise
            row["pairwise"] = (p["score"], p["score_ci95"])
            row["wtl"] = (p["win"], p["tie"], p["loss"])
        rows.append(row)
    return rows


def throughput(m: Manifest, t: int) -> dict[str, float]:
    """Generated tokens per second per generating stage, and scored pairs per second."""
    out: dict[str, float] = {}
    ins = m.get(t, InstructionsSummary)
    if ins and ins.seconds > 0:
        tokens = sum(x.get("tokens", 0) for x in read_jsonl(m.root / f"iter_{t:02d}" / instructions.COMPLETIONS))
        out["instructions tok/s"] = tokens / ins.seconds
    res = m.get(t, ResponsesSummary)
    if res and res.seconds > 0:
        out["responses tok/s"] = res.tokens / res.seconds
    ev = m.get(t, EvalSummary)
    if ev and ev.seconds > 0:
        tokens = sum(s["tokens"] for s in ev.samples or []) + sum((x or {}).get("tokens", 0) for x in (ev.ifeval, ev.suite, ev.heldout))
        out["eval tok/s"] = tokens / ev.seconds
    a = m.get(t, AssessSummary)
    if a and a.seconds > 0:
        out["assess pairs/s"] = a.scored / a.seconds
    return out


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=FIGSIZE, dpi=DPI)


def _save(plt: Any, fig: Any, path: Path, legend_ax: Any = None) -> None:
    if legend_ax is not None and legend_ax.get_legend_handles_labels()[0]:
        legend_ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")  # no bbox_inches="tight": every plot keeps the documented size
    plt.close(fig)


def _scale(run_dir: Path) -> int:
    """The run's assess.scale (scores are 1..scale), from its recipe.yaml; 9 if unreadable."""
    import yaml

    try:
        return int(yaml.safe_load((run_dir / "recipe.yaml").read_text(encoding="utf-8"))["assess"]["scale"])
    except (OSError, TypeError, KeyError, ValueError, yaml.YAMLError):
        return 9


def plot_scores(m: Manifest, path: Path) -> None:
    plt, fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    scale = _scale(m.root)
    for t in m.iterations():
        scores = [x["score"] for x in read_jsonl(m.root / f"iter_{t:02d}" / assess.SCORED) if x["score"] is not None]
        if scores:
            ax.hist(
                scores,
                bins=[1 + i * 0.25 for i in range(4 * (scale - 1) + 1)],
                histtype="step",
                linewidth=2,
                label=f"iteration {t} (n={len(scores)}, mean {sum(scores) / len(scores):.2f})",
            )
    ax.set(title="Self-assessment scores (expected score, mean of aspects)", xlabel="score", ylabel="pairs", xlim=(1, scale))
    _save(plt, fig, path, legend_ax=ax)


def plot_selection(m: Manifest, path: Path) -> None:
    plt, fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    sel = {t: f for t in m.iterations() if (f := m.get(t, FilterSummary))}
    its = list(sel)
    reasons: list[str] = []
    for t in its:
        reasons += [r for r in sel[t].rejected_by_reason if r not in reasons]
    kept = [sel[t].kept for t in its]
    ax.bar([str(t) for t in its], kept, label="kept", color="tab:green")
    bottom = [float(k) for k in kept]
    colours = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 2]  # green is "kept"
    for k, reason in enumerate(reasons):
        counts = [sel[t].rejected_by_reason.get(reason, 0) for t in its]
        ax.bar(
            [str(t) for t in its],
            counts,
            bottom=bottom,
            label=reason,
            color=colours[k % len(colours)],
            hatch="//" if k >= len(colours) else None,
        )
        bottom = [b + c for b, c in zip(bottom, counts)]
    for i, t in enumerate(its):
        ax.annotate(f"kept {100 * sel[t].kept_ratio:.0f} %", (i, bottom[i]), ha="center", va="bottom")
    ax.set(title="Answered pairs: kept, and rejected by reason", xlabel="iteration", ylabel="pairs")
    if its:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.set_ylim(0, max(bottom) * 1.15)
    _save(plt, fig, path)


def plot_loss(m: Manifest, path: Path) -> None:
    plt, fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for t in m.iterations():
        trained = m.get(t, TrainSummary)
        losses = trained.losses if trained else []
        if losses:
            ax.plot(range(1, len(losses) + 1), losses, marker=".", label=f"iteration {t}")
    ax.set(title="LoRA training loss (answer tokens only)", xlabel="step", ylabel="loss")
    _save(plt, fig, path, legend_ax=ax)


def plot_eval(m: Manifest, path: Path) -> None:
    plt, fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    rows = eval_rows(m)
    metrics = (
        ("ifeval_loose", "IFEval prompt-level loose"),
        ("ifeval_untrained", "IFEval, untrained kinds (loose)"),
        ("heldout", "held-out set strict accuracy"),
        ("knowledge", "knowledge-probe accuracy"),
        ("stop_rate", "stop rate"),
        ("pairwise", "pairwise score vs M_0 (0.5 = same)"),
    )
    for k, (metric, label) in enumerate(metrics):
        pts = [(r["t"] + 0.06 * (k - 2), r[metric][0], r[metric][1] or [r[metric][0]] * 2) for r in rows if metric in r]
        if not pts:
            continue
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        err = [[y - p[2][0] for y, p in zip(ys, pts)], [p[2][1] - y for y, p in zip(ys, pts)]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=4, label=label)
    for r in rows:
        if r["promote"] and r["promote"].worse:
            ax.annotate("worse", (r["t"], 0.02), ha="center", color="tab:red")
    if m.best is not None:
        ax.axvline(m.best.iteration, color="grey", linestyle=":", label=f"best: M_{m.best.iteration}")
    ax.set(title="Held-out checks per model (95 % bootstrap intervals)", xlabel="model M_t", ylabel="rate", ylim=(0, 1.05))
    ax.set_xticks([r["t"] for r in rows])
    if rows:
        ax.legend(fontsize=8)
    _save(plt, fig, path)


def plot_throughput(m: Manifest, path: Path) -> None:
    plt, fig = _figure()
    tok_ax, pair_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    its = m.iterations()
    per = {t: throughput(m, t) for t in its}
    stages = ["instructions tok/s", "responses tok/s", "eval tok/s"]
    width = 0.8 / max(1, len(its))
    for i, t in enumerate(its):
        tok_ax.bar([s + i * width for s in range(len(stages))], [per[t].get(s, 0) for s in stages], width, label=f"iteration {t}")
        pair_ax.bar([i], [per[t].get("assess pairs/s", 0)], 0.6, label=f"iteration {t}")
    tok_ax.set_xticks([s + 0.4 - width / 2 for s in range(len(stages))], [s.split()[0] for s in stages])
    tok_ax.set(title="Generated tokens per second", ylabel="tokens/s")
    pair_ax.set_xticks(range(len(its)), [str(t) for t in its])
    pair_ax.set(title="Self-assessment pairs per second", xlabel="iteration", ylabel="pairs/s")
    if its:
        tok_ax.legend(fontsize=8)
    _save(plt, fig, path)


def fmt_ci(v: tuple[float, Any] | None) -> str:
    if v is None:
        return "–"
    value, ci = v
    return f"{value:.2f}" + (f" ({ci[0]:.2f}–{ci[1]:.2f})" if ci else "")


def markdown(m: Manifest) -> str:
    lines = [f"# isheep-lite run report: {m.root.resolve().name}", ""]
    if m.best is not None:
        served = " + ".join([m.best.gguf, *m.best.adapters])
        final = f" Final model: `{m.final_model}`." if m.final_model else ""
        stopped = f" Stopped early: {m.stopped_early}." if m.stopped_early else ""
        lines += [f"Best model: **M_{m.best.iteration}** (`{served}`).{final}{stopped}", ""]
    lines += [
        "## Held-out checks per model",
        "",
        "IFEval: prompt-level accuracy over its prompts as lm-evaluation-harness's checker scores them; "
        "*untrained kinds*: its prompts whose constraint kinds training never sees — what promotion decides on, "
        "with the second set's untrained prompts (where any), the knowledge probe and the stop rate. "
        "The suite is a quick check promotion does not read.",
        "",
        "| model | IFEval loose (95 % CI) | IFEval strict | IFEval, untrained kinds | IFEval, trained kinds | held-out set strict (95 % CI) "
        "| knowledge (95 % CI) | stop rate (95 % CI) | suite strict | pairwise vs M_0 (95 % CI) | win/tie/loss | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in eval_rows(m):
        p = r["promote"]
        verdict = (
            ""
            if r["t"] == 0 or not p
            else (
                "flagged worse, not promoted"
                if p.worse
                else "promoted"
                if p.best == r["t"]
                else f"not promoted ({p.reason or 'lower mean'})"
            )
        )
        for name, c in (p.sets or {}).items() if p and p.compared else ():
            for ref, against in (("vs_best", f"M_{p.against}"), ("vs_m0", "M_0")):
                if ref in c and (ref == "vs_best" or p.against != 0):
                    d = c[ref]
                    verdict += (
                        f"; Δ {name} vs {against} {d['delta']:+.3f} ({d['ci95'][0]:+.3f}–{d['ci95'][1]:+.3f}), P(worse) {d['p_worse']:.2f}"
                    )
        wtl = "/".join(map(str, r["wtl"])) if "wtl" in r else "–"
        cells = (
            "ifeval_loose",
            "ifeval_strict",
            "ifeval_untrained",
            "ifeval_trained",
            "heldout",
            "knowledge",
            "stop_rate",
            "strict",
            "pairwise",
        )
        lines.append(f"| M_{r['t']} | " + " | ".join(fmt_ci(r.get(c)) for c in cells) + f" | {wtl} | {verdict} |")
    lines += [
        "",
        "## Stages",
        "",
        "| iteration | kept / answered | score mean (sd) | train loss first → last | seconds per stage |",
        "|---|---|---|---|---|",
    ]
    for t in m.iterations():
        f, a, tr, res = m.get(t, FilterSummary), m.get(t, AssessSummary), m.get(t, TrainSummary), m.get(t, ResponsesSummary)
        secs = ", ".join(f"{s} {sec:.0f}" for s, sec in m.seconds(t).items())
        kept = f"{f.kept} / {res.responses if res else '?'}" if f else "–"
        score = f"{a.score_mean} ({a.score_sd})" if a else "–"
        loss = f"{tr.loss_first} → {tr.loss_last}" if tr else "–"
        lines.append(f"| {t} | {kept} | {score} | {loss} | {secs} |")
    lines += [""] + [f"![{name}]({name}.png)" for name in PLOTS] + [""]
    return "\n".join(lines)


def write_report(run_dir: Path, out_dir: Path | None = None) -> Path:
    """Write report.md, one PNG per entry of PLOTS and the run page (index.html) into `out_dir`
    (default RUN_DIR/report); returns report.md."""
    m = Manifest.read(run_dir)
    out = Path(out_dir) if out_dir else Path(run_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    plot_scores(m, out / "scores.png")
    plot_selection(m, out / "selection.png")
    plot_loss(m, out / "loss.png")
    plot_eval(m, out / "eval.png")
    plot_throughput(m, out / "throughput.png")
    atomic_write_text(out / "report.md", markdown(m))
    write_page(m, out, PLOTS)
    return out / "report.md"
