"""The run page, `report/index.html`: everything the model wrote and judged, browsable offline.

One self-contained file — its script and style inlined from `page.html` beside this module, the
run's records embedded as JSON, the report's PNGs beside it — that opens from the file system and
fetches nothing. Per iteration: the stage table and the plots; every answered instruction with its
grade, whether it was kept and, if not, why (instructions the rule filters dropped too), to filter,
sort and search; the preference pairs; and for every evaluation set each prompt with M_0's and
M_t's answers side by side and whether each passed. Model text reaches the page as JSON and is put
on it as text, never as markup, so an answer that writes `<script>` shows those characters.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from isheep_lite.rundir.files import atomic_write_text
from isheep_lite.rundir.jsonl import read_jsonl
from isheep_lite.rundir.manifest import Manifest
from isheep_lite.stages import EvalSummary, PromoteSummary, assess, filter, instructions, responses
from isheep_lite.stages.eval import ANSWERS

PAGE = "index.html"


def _words(text: str) -> int:
    return len(text.split())


def pair_rows(d: Path, t: int) -> list[dict[str, Any]]:
    """Iteration t's answered instructions and dropped instructions, one row each: what was asked,
    the answer, its grade, kept or rejected and why, its constraint kind."""
    kept = {x["id"] for x in read_jsonl(d / filter.KEPT)}
    reasons = {x["id"]: x.get("reason", "") for x in read_jsonl(d / filter.REJECTED)}
    grades = {x["id"]: x for x in read_jsonl(d / assess.SCORED)}
    rows = []
    for x in read_jsonl(d / responses.RESPONSES):
        g = grades.get(x["id"], {})
        rows.append(
            {
                "t": t,
                "id": x["id"],
                "instruction": x["instruction"],
                "input": x.get("input") or "",
                "response": x["response"],
                "score": g.get("score"),
                "status": "kept" if x["id"] in kept else "rejected",
                "reason": "" if x["id"] in kept else reasons.get(x["id"], "not selected"),
                "kind": (x.get("constraint") or {}).get("kind", ""),
                "words": _words(x["response"]),
            }
        )
    for x in read_jsonl(d / instructions.REJECTED):
        rows.append(
            {
                "t": t,
                "id": x["id"],
                "instruction": x["instruction"],
                "input": x.get("input") or "",
                "response": "",
                "score": None,
                "status": "rejected",
                "reason": x.get("reason", ""),
                "kind": "",
                "words": 0,
            }
        )
    return rows


def eval_answers(m: Manifest, t: int) -> dict[str, dict[str, dict[str, Any]]]:
    """M_t's evaluation answers by set and prompt id: {set: {id: {prompt, answer, passed}}}; the stop-rate
    answers come from the manifest (runs evaluated before the answer files were written have those only)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for a in read_jsonl(m.root / f"iter_{t:02d}" / ANSWERS):
        out.setdefault(a["set"], {})[str(a["id"])] = {"prompt": a["prompt"], "answer": a["answer"], "passed": a.get("passed")}
    e = m.get(t, EvalSummary)
    for s in (e.samples if e else None) or []:
        out.setdefault("stop", {})[str(s["id"])] = {
            "prompt": s.get("prompt", ""),
            "answer": s.get("text", ""),
            "passed": int(s["finish"] == "stop"),
        }
    return out


def page_data(m: Manifest) -> dict[str, Any]:
    """Everything the page shows, as plain data."""
    its = m.iterations()
    base = eval_answers(m, 0)
    sides = []
    for t in its:
        mine = eval_answers(m, t)
        for name, prompts in mine.items():
            for pid, a in prompts.items():
                b = base.get(name, {}).get(pid)
                sides.append({"t": t, "set": name, "id": pid, "prompt": a["prompt"], "m0": b, "mt": a})
    stages = [{"t": t, "seconds": {k: round(v) for k, v in m.seconds(t).items()}} for t in m.iterations(with_base=True)]
    verdicts = {}
    for t in its:
        p = m.get(t, PromoteSummary)
        if p:
            verdicts[t] = {"best": p.best, "worse": p.worse, "reason": p.reason}
    return {
        "run": m.root.resolve().name,
        "best": m.best.iteration if m.best else None,
        "final_model": m.final_model,
        "iterations": its,
        "stages": stages,
        "verdicts": verdicts,
        "pairs": [row for t in its for row in pair_rows(m.root / f"iter_{t:02d}", t)],
        "preferences": [{"t": t, **x} for t in its for x in read_jsonl(m.root / f"iter_{t:02d}" / filter.PREFERENCES)],
        "evals": sides,
    }


def _json_for_script(data: dict[str, Any]) -> str:
    """JSON that cannot end the <script> element it sits in, nor open a comment there."""
    return json.dumps(data, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def write_page(m: Manifest, out: Path, plots: tuple[str, ...]) -> Path:
    """Write `out/index.html` for the run of `m` (the plots are the PNG names written beside it)."""
    template = resources.files("isheep_lite.rundir").joinpath("page.html").read_text(encoding="utf-8")
    data = {**page_data(m), "plots": list(plots)}
    html = template.replace("/*DATA*/null", _json_for_script(data), 1)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / PAGE, html)
    return out / PAGE
