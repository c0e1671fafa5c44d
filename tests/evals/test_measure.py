"""measure.py: the second instruction-following set and the knowledge probe — their data, their
checks, and both run on a real (tiny) engine."""

from __future__ import annotations

import re

from isheep_lite.engines.llamacpp import Engine
from isheep_lite.evals import measure, suite
from isheep_lite.selfalign import constraints, synth
from isheep_lite.selfalign.filters import RougeIndex

STOPWORDS = set(
    "what which who how many much is are was the a an of in on at to for from by with and or do does you called name there".split()
)


def _content(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOPWORDS and len(w) > 2}


def test_heldout_set_is_its_own_and_every_prompt_asks_several_checkable_things() -> None:
    items = measure.heldout_items(1000)
    assert len(items) == 80 and len({it["id"] for it in items}) == 80
    for it in items:
        assert 2 <= len(it["constraints"]) <= 3
        assert all(c["kind"] in constraints.CHECKS for c in it["constraints"])
    # Its own topics: far from the suite's topics, the seeds and the generation prompt (ROUGE-L < 0.5).
    topics = {it["prompt"].split(". ")[0] for it in items}
    assert len(topics) == 20
    index = RougeIndex([s["instruction"] for s in synth.load_seeds("builtin")] + [synth.META_PROMPT, *suite.TOPICS])
    assert max(index.max_f1(t) for t in topics) < 0.5
    # Its own phrasings: no constraint sentence of the suite appears in it.
    suite_phrases = {template.split("{")[0].strip() for template, _, _ in suite.CHECKERS.values()}
    assert not [p for p in suite_phrases if any(p in it["prompt"] for it in items)]


def test_knowledge_probe_is_held_out_and_answerable() -> None:
    qs = measure.knowledge_questions(1000)
    assert len(qs) >= 100 and len({q["question"] for q in qs}) == len(qs)
    assert all(q["answers"] and all(a.strip() for a in q["answers"]) for q in qs)
    # Held out: no question shares half its content words with a seed, a stop-rate prompt or the
    # generation prompt (content words, not ROUGE-L: short questions share the "What is the … of" skeleton).
    others = [s["instruction"] for s in synth.load_seeds("builtin")] + [p["prompt"] for p in measure.stop_prompts(1000)]
    corpus = [_content(t) for t in [*others, synth.META_PROMPT]]
    overlap = max(len(_content(q["question"]) & c) / len(_content(q["question"]) | c) for q in qs for c in corpus if c)
    assert overlap < 0.5, overlap
    # No accepted answer is given away by its own question.
    assert not [q["question"] for q in qs if measure.answer_matches(q["question"], q["answers"])]


def test_answer_matching_takes_whole_words_at_the_start_of_the_reply() -> None:
    assert measure.answer_matches("The capital of Japan is Tokyo.", ["tokyo"])
    assert measure.answer_matches("**Yo-yo**", ["yo-yo"]) and measure.answer_matches("About 1,000 g.", ["1,000"])
    assert not measure.answer_matches("Kyoto is lovely.", ["tokyo"])
    assert not measure.answer_matches("I am not sure.\nTokyo, maybe.", ["tokyo"]), "only the first line counts"
    assert not measure.answer_matches("A bear eats Nairobian food.", ["nairobi"]), "whole words only"
    assert not measure.answer_matches(" ".join(["word"] * 40) + " tokyo", ["tokyo"]), "only the first words count"


def test_both_sets_run_on_an_engine_and_report_per_prompt_outcomes(tiny_engine: Engine) -> None:
    held = measure.heldout_following(tiny_engine, 6, 48)
    assert held["prompts"] == 6 and len(held["strict_pass"]) == 6 and 0 <= held["strict"] <= held["loose"] <= 1
    assert held["strict_ci95"][0] <= held["strict"] <= held["strict_ci95"][1] and held["instruction_strict"] is not None
    kept = held["constraints_kept"]  # per prompt: the share of its constraints kept; 1 exactly where it passes
    assert len(kept) == 6 and all(0 <= k <= 1 for k in kept) and [int(k == 1) for k in kept] == held["strict_pass"]
    assert abs(sum(kept) / 6 - held["instruction_strict"]) < 0.2  # per prompt vs per constraint: close, not equal
    know = measure.knowledge(tiny_engine, 5, max_tokens=16)
    assert know["prompts"] == 5 and set(know["correct"]) <= {0, 1} and know["accuracy"] == sum(know["correct"]) / 5


def test_ifeval_runs_on_an_engine_and_marks_the_prompts_whose_kinds_training_sees(tiny_engine: Engine) -> None:
    trained = constraints.trained_kinds(0.5)
    out = measure.ifeval_following(tiny_engine, 12, 32, trained, lambda n: None)
    n = out["n_prompts"]
    assert n == 12 and len(out["per_prompt_loose"]) == len(out["trained"]) == len(out["answers"]) == n
    assert 0 <= out["prompt_strict"] <= out["prompt_loose"] <= 1 and out["prompt_loose_ci95"][0] <= out["prompt_loose"]
    for a, mark in zip(out["answers"], out["trained"]):
        assert mark == int(bool(set(a["kinds"]) & trained)), a["kinds"]
    assert out["untrained"]["prompts"] + out["trained_part"]["prompts"] == n and 0 < out["untrained"]["prompts"] < n
    # with no verifiable training, no prompt is a trained one
    assert not any(measure.ifeval_following(tiny_engine, 3, 8, frozenset(), lambda n: None)["trained"])


def test_training_constraints_name_the_ifeval_kinds_they_train() -> None:
    from isheep_lite.evals import ifeval

    assert set(constraints.IFEVAL_IDS) == set(constraints.CHECKS), "every rule kind says which IFEval kinds it trains"
    assert {i for ids in constraints.IFEVAL_IDS.values() for i in ids} <= set(ifeval.KINDS)
    assert constraints.trained_kinds(0) == frozenset()
    trained = constraints.trained_kinds(0.5)
    assert {rule["kind"] for _, rule in constraints.TRAINING} <= trained
    assert "punctuation:no_comma" in trained and "combination:repeat_prompt" not in trained
