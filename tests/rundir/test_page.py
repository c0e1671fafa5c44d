"""The run page in a real browser (headless Chromium): it filters, sorts and puts M_0's and M_t's
answers side by side; model text is shown as text and runs nothing; it makes no network request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from browser import check_page, open_page, shown_rows

from isheep_lite.rundir import page as run_page
from isheep_lite.rundir import report
from isheep_lite.rundir.jsonl import write_jsonl

SCRIPT = "<script>alert(1)</script>"


def _pair(i: str, instruction: str, response: str, **extra: object) -> dict:
    return {"id": i, "instruction": instruction, "input": "", "response": response, "gen": {"finish": "stop", "tokens": 9}, **extra}


def handmade_run(root: Path) -> Path:
    """A run directory as `isheep run` leaves it, written by hand: one iteration, an answer that is a
    script tag, two pairs dropped as truncated, one evaluation prompt M_1 gained and one it lost."""
    d0, d1 = root / "iter_00", root / "iter_01"
    d0.mkdir(parents=True)
    d1.mkdir()
    pairs = [
        _pair("a", "Name a colour.", "Blue."),
        _pair("b", "Write a tag.", SCRIPT),
        _pair("c", "Describe rain.", "Rain falls and", constraint={"kind": "word_range", "hi": 50}),
        _pair("d", "Describe snow.", "Snow is"),
        _pair("e", "Count to three.", "One, two, three."),
    ]
    write_jsonl(d1 / "responses.jsonl", pairs)
    write_jsonl(d1 / "scored.jsonl", [{**p, "score": s} for p, s in zip(pairs, (7.5, 6.0, 3.0, 2.5, 5.0))])
    write_jsonl(d1 / "kept.jsonl", [{"id": i, "messages": [], "score": 1} for i in ("a", "b")])
    write_jsonl(
        d1 / "rejected.jsonl",
        [{**pairs[2], "reason": "truncated"}, {**pairs[3], "reason": "truncated"}, {**pairs[4], "reason": "below_top_fraction"}],
    )
    write_jsonl(d1 / "instructions_rejected.jsonl", [{"id": "z", "instruction": "As an AI, chat.", "input": "", "reason": "chatter"}])
    write_jsonl(
        d1 / "preferences.jsonl",
        [{"id": "a", "prompt": [{"role": "user", "content": "Name a colour."}], "chosen": "Blue.", "rejected": "Hmm", "margin": 2}],
    )
    evals = [("1000", "Write in lowercase.", "ok", "OK"), ("1001", "No commas.", "a, b", "a b"), ("1002", "End with 'Bye.'", "Bye.", "bye")]
    write_jsonl(
        d0 / "eval_answers.jsonl",
        [{"set": "ifeval", "id": k, "prompt": p, "answer": a, "passed": int(k != "1001")} for k, p, a, _ in evals],
    )
    write_jsonl(
        d1 / "eval_answers.jsonl",
        [{"set": "ifeval", "id": k, "prompt": p, "answer": b, "passed": int(k != "1002")} for k, p, _, b in evals],
    )
    done = {"status": "done", "seconds": 3.0}
    its = {
        "0": {"base": {**done, "gguf": "m0.gguf", "hf": "hf"}, "eval": {**done, "prompts": 1, "stop_rate": 1.0, "samples": []}},
        "1": {
            "instructions": {**done, "prompts": 2, "instructions": 5, "rejected": 1, "rejected_by_reason": {"chatter": 1}},
            "responses": {**done, "responses": 5, "tokens": 45, "finished": 5},
            "filter": {**done, "kept": 2, "rejected": 3, "kept_ratio": 0.4, "rejected_by_reason": {"truncated": 2}},
            "promote": {**done, "against": 0, "compared": True, "worse": False, "best": 1, "reason": "at least as good on ifeval"},
        },
    }
    (root / "manifest.json").write_text(json.dumps({"iterations": its, "best": {"iteration": 1, "gguf": "m1.gguf"}}))
    return root


@pytest.mark.slow  # a real browser: Chromium starts for each
def test_the_page_filters_sorts_and_shows_both_models_answers(tmp_path: Path) -> None:
    run = handmade_run(tmp_path / "run")
    html = report.write_report(run).parent / run_page.PAGE
    check_page(html, tmp_path, "truncated")
    with open_page(html) as (page, requests, dialogs):
        page.click("nav button[data-tab=pairs]")
        page.select_option("#p-reason", "truncated")
        assert sorted(r[1] for r in shown_rows(page, "p-table")) == ["Describe rain.", "Describe snow."]
        page.select_option("#p-reason", "")
        page.select_option("#p-kind", "word_range")
        assert [r[1] for r in shown_rows(page, "p-table")] == ["Describe rain."]
        page.select_option("#p-kind", "")
        page.fill("#p-search", "chat")
        assert [(r[1], r[6]) for r in shown_rows(page, "p-table")] == [("As an AI, chat.", "chatter")], (
            "dropped instructions are listed too"
        )
        page.click("nav button[data-tab=evals]")
        page.select_option("#e-show", "gained")
        assert [r[0] for r in shown_rows(page, "e-table")] == ["No commas."]
        page.select_option("#e-show", "lost")
        assert [(r[0], r[2], r[4]) for r in shown_rows(page, "e-table")] == [("End with 'Bye.'", "pass", "fail")]


@pytest.mark.slow
def test_a_model_answer_that_is_a_script_tag_is_shown_as_text_and_runs_nothing(tmp_path: Path) -> None:
    run = handmade_run(tmp_path / "run")
    html = report.write_report(run).parent / run_page.PAGE
    assert SCRIPT not in html.read_text(encoding="utf-8"), "model text is escaped inside the page's JSON"
    with open_page(html) as (page, requests, dialogs):
        page.click("nav button[data-tab=pairs]")
        cells = page.eval_on_selector_all("#p-table td", "tds => tds.map(td => td.textContent)")
        assert SCRIPT in cells, "the answer is shown, character for character"
        assert page.eval_on_selector_all("#p-table script", "s => s.length") == 0
        assert not dialogs and all(u.startswith("file://") for u in requests)


def test_page_data_lists_every_answered_and_dropped_instruction(tmp_path: Path) -> None:
    from isheep_lite.rundir.manifest import Manifest

    data = run_page.page_data(Manifest.read(handmade_run(tmp_path / "run")))
    assert len(data["pairs"]) == 6 and sum(p["status"] == "kept" for p in data["pairs"]) == 2
    assert [e["id"] for e in data["evals"]] == ["1000", "1001", "1002"]
    assert data["evals"][1]["m0"]["passed"] == 0 and data["evals"][1]["mt"]["passed"] == 1
