"""The decision sets of one model, answered greedily on its GGUF: what promotion compares.

IFEval (evals/ifeval.py, lm-evaluation-harness's checker) is the instruction-following benchmark; the
second set (data/if_heldout.jsonl) is the toolkit's own, several constraints a prompt; the knowledge
probe catches forgetting; the stop rate guards the most common failure of self-training exports, a
tuned model that no longer emits its end-of-turn token. The suite (evals/suite.py) is a quick check
that promotion does not read. The pairwise judge compares M_t's and M_0's answers to the stop-rate
prompts (no extra generation). Prompts are held out: they are not seeds and not generation prompts.

Held out by kind, not only by wording: a prompt carrying a constraint kind that training sees
(`constraints.trained_kinds`) is marked `trained`, and promotion decides on the untrained prompts
of each set — a model that learned the trained rules gains on those whether or not it follows
instructions better.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any, Callable, Sequence

from isheep_lite.config import Recipe
from isheep_lite.engines.base import Completion, EngineBase, Sampling
from isheep_lite.engines.serving import Engines, Served
from isheep_lite.evals import ifeval
from isheep_lite.evals import suite
from isheep_lite.gguf import chat
from isheep_lite.progress import progress_bar
from isheep_lite.selfalign import constraints


Progress = Callable[[int], None]  # called with how many more prompts are done


def stop_prompts(n: int) -> list[dict[str, str]]:
    text = resources.files("isheep_lite").joinpath("data/stop_prompts.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()][:n]


def greedy_answers(engine: EngineBase, prompts: list[str], max_tokens: int, progress: Callable[[int], None]) -> list[Completion]:
    """One greedy single-turn chat answer per prompt, batched."""
    greedy = Sampling(temperature=0.0, max_tokens=max_tokens)
    return engine.chat_many([[{"role": "user", "content": p}] for p in prompts], [greedy] * len(prompts), lambda i, c: progress(1))


def stop_rate(engine: EngineBase, n_prompts: int, max_tokens: int, progress: Callable[[int], None] = lambda n: None) -> dict[str, Any]:
    """Fraction of greedy answers that end with the end-of-turn token within `max_tokens`."""
    prompts = stop_prompts(n_prompts)
    outs = greedy_answers(engine, [p["prompt"] for p in prompts], max_tokens, progress)
    stopped = sum(c.finish_reason == "stop" for c in outs)
    tokens = sum(c.n_tokens for c in outs)
    samples = [
        {"id": p["id"], "prompt": p["prompt"], "finish": c.finish_reason, "tokens": c.n_tokens, "text": c.text}
        for p, c in zip(prompts, outs)
    ]
    n = len(prompts)
    return {
        "prompts": n,
        "stop_rate": round(stopped / n, 4) if n else None,
        "mean_tokens": round(tokens / n, 1) if n else None,
        "samples": samples,
    }


def instruction_following(
    engine: EngineBase, n_prompts: int, max_tokens: int, progress: Callable[[int], None] = lambda n: None
) -> dict[str, Any]:
    """Greedy answers to `n_prompts` suite prompts (balanced over constraint kinds), checked strictly and loosely."""
    items = suite.subset(n_prompts)
    outs = greedy_answers(engine, [it.prompt for it in items], max_tokens, progress)
    result = suite.score(items, [c.text for c in outs])
    result["strict_ci95"] = bootstrap_ci(result["strict_pass"])
    result["tokens"] = sum(c.n_tokens for c in outs)
    result["answers"] = [  # ids by position: a kind has several topics
        {"id": f"{it.kind}-{i}", "prompt": it.prompt, "answer": c.text, "passed": p, "kinds": [it.kind]}
        for i, (it, c, p) in enumerate(zip(items, outs, result["strict_pass"]))
    ]
    return result


def ifeval_following(engine: EngineBase, n_prompts: int, max_tokens: int, trained: frozenset[str], progress: Progress) -> dict[str, Any]:
    """Greedy answers to IFEval (all of it, or a stratified subset of `n_prompts`), scored by the
    official checker: prompt- and instruction-level accuracy, strict and loose, with intervals; per
    prompt, the loose outcome promotion compares and whether the prompt carries a trained kind."""
    items = ifeval.prompts(None if n_prompts >= ifeval.N_PROMPTS else n_prompts)
    outs = greedy_answers(engine, [p.prompt for p in items], max_tokens, progress)
    scored = [ifeval.score(p, o.text) for p, o in zip(items, outs)]
    result = dict(ifeval.summarise(scored))
    marks = trained_marks([p.instruction_id_list for p in items], trained)
    result.update(
        prompt_loose_ci95=bootstrap_ci(result["per_prompt_loose"]),
        prompt_strict_ci95=bootstrap_ci(result["per_prompt_strict"]),
        trained=marks,
        untrained=_part(result["per_prompt_loose"], marks, 0),
        trained_part=_part(result["per_prompt_loose"], marks, 1),
        tokens=sum(o.n_tokens for o in outs),
        answers=[
            {"id": p.key, "prompt": p.prompt, "answer": o.text, "passed": x, "kinds": p.instruction_id_list}
            for p, o, x in zip(items, outs, result["per_prompt_loose"])
        ],
    )
    return result


def trained_marks(kinds: Sequence[Sequence[str]], trained: frozenset[str]) -> list[int]:
    """Per prompt (given its constraint kinds), 1 where training sees one of them: promotion leaves it out."""
    return [int(bool(set(k) & trained)) for k in kinds]


def _part(outcomes: Sequence[float], marks: Sequence[int], mark: int) -> dict[str, Any]:
    """The share of one part of a set's prompts (trained or untrained kinds) that passed, with its interval."""
    xs = [x for x, m in zip(outcomes, marks) if m == mark]
    return {"prompts": len(xs), "mean": round(sum(xs) / len(xs), 4) if xs else None, "ci95": bootstrap_ci(xs)}


def _data(name: str) -> list[dict[str, Any]]:
    text = resources.files("isheep_lite").joinpath(f"data/{name}").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def heldout_items(n: int) -> list[dict[str, Any]]:
    """The first `n` prompts of the second instruction-following set (data/if_heldout.jsonl: 80
    prompts, 20 topics of its own, two or three constraints each, phrased apart from the suite's)."""
    return _data("if_heldout.jsonl")[:n]


def heldout_following(
    engine: EngineBase,
    n_prompts: int,
    max_tokens: int,
    *,
    trained: frozenset[str] = frozenset(),
    progress: Callable[[int], None] = lambda n: None,
) -> dict[str, Any]:
    """Greedy answers to the second set, checked by rule: a prompt passes only if every one of its
    constraints holds (strict: the answer as given; loose: suite.loose_variants); also the share of
    single constraints kept (instruction level)."""
    items = heldout_items(n_prompts)
    outs = greedy_answers(engine, [it["prompt"] for it in items], max_tokens, progress)
    kept = [[constraints.check(c, o.text) for c in it["constraints"]] for it, o in zip(items, outs)]
    strict = [int(all(k)) for k in kept]
    loose = [
        int(any(all(constraints.check(c, v) for c in it["constraints"]) for v in suite.loose_variants(o.text)))
        for it, o in zip(items, outs)
    ]
    flat = [x for k in kept for x in k]
    n = len(items)
    marks = trained_marks([[c["kind"] for c in it["constraints"]] for it in items], trained)
    shares = [round(sum(k) / len(k), 4) for k in kept]
    return {
        "prompts": n,
        "strict": round(sum(strict) / n, 4) if n else None,
        "loose": round(sum(loose) / n, 4) if n else None,
        "instruction_strict": round(sum(flat) / len(flat), 4) if flat else None,
        "strict_pass": strict,
        "strict_ci95": bootstrap_ci(strict),
        # per prompt, the share of its constraints kept: finer-grained than all-or-nothing, so a
        # small model's gains show before it passes whole prompts
        "constraints_kept": shares,
        "trained": marks,
        "untrained": _part(shares, marks, 0),
        "trained_part": _part(shares, marks, 1),
        "tokens": sum(o.n_tokens for o in outs),
        "answers": [
            {"id": it["id"], "prompt": it["prompt"], "answer": o.text, "passed": x, "kinds": [c["kind"] for c in it["constraints"]]}
            for it, o, x in zip(items, outs, strict)
        ],
    }


KNOWLEDGE_SUFFIX = " Answer in a few words."
ANSWER_WORDS = 30  # an accepted answer counts only within the reply's first line, up to this many words


def _normalise(text: str) -> str:
    return " " + " ".join(re.findall(r"[a-z0-9]+", text.lower())) + " "


def answer_matches(response: str, answers: Sequence[str]) -> bool:
    """Whether an accepted answer appears, as whole words, at the start of the reply (its first
    non-empty line, first ANSWER_WORDS words): "The capital of Japan is Tokyo." matches "tokyo";
    case, punctuation and hyphens are ignored ("yo-yo" = "yo yo", "1,000" = "1 000")."""
    first = next((line for line in response.splitlines() if line.strip()), "")
    head = _normalise(" ".join(first.split()[:ANSWER_WORDS]))
    return any(_normalise(a) in head for a in answers)


def knowledge_questions(n: int) -> list[dict[str, Any]]:
    """The first `n` of the knowledge probe's questions (data/knowledge.jsonl: 120 short-answer
    facts with their accepted answers, held out from every generation prompt)."""
    return _data("knowledge.jsonl")[:n]


def knowledge(
    engine: EngineBase, n_questions: int, max_tokens: int = 48, progress: Callable[[int], None] = lambda n: None
) -> dict[str, Any]:
    """Accuracy on the knowledge probe (greedy short answers): what self-training must not make the model forget."""
    qs = knowledge_questions(n_questions)
    outs = greedy_answers(engine, [q["question"] + KNOWLEDGE_SUFFIX for q in qs], max_tokens, progress)
    correct = [int(answer_matches(o.text, q["answers"])) for q, o in zip(qs, outs)]
    n = len(qs)
    return {
        "prompts": n,
        "accuracy": round(sum(correct) / n, 4) if n else None,
        "correct": correct,
        "accuracy_ci95": bootstrap_ci(correct),
        "tokens": sum(o.n_tokens for o in outs),
    }


# ---- pairwise judge -----------------------------------------------------------------------------
JUDGE_PROMPT = (
    "Two assistants answered the same request. Compare their responses.\n\n### Request\n{request}\n\n"
    "### Response A\n{a}\n\n### Response B\n{b}\n\n### Question\nWhich response is better: correct, "
    "complete, following every instruction in the request, and ending when it is done? Reply with A or B only."
)
JUDGE_PREFILL = "Better response:"
JUDGE_CHARS = 1500  # each answer is cut to this in the judge's prompt (a babbling answer is visible by then)


def judge_prompt(engine: EngineBase, request: str, a: str, b: str) -> str:
    content = JUDGE_PROMPT.format(request=request, a=a[:JUDGE_CHARS], b=b[:JUDGE_CHARS])
    return chat.render_chat(engine.info, [{"role": "user", "content": content}], add_generation_prompt=True) + JUDGE_PREFILL


def empty_rule(new: str, old: str) -> float | None:
    """The verdict for `new` when either answer is empty (loss, win or tie); None when the judge must decide."""
    n, o = bool(new.strip()), bool(old.strip())
    return None if n and o else 0.5 + 0.5 * (n - o)


def pairwise(
    judge: EngineBase, requests: list[str], new: list[str], old: list[str], progress: Callable[[int], None] = lambda n: None
) -> dict[str, Any]:
    """Win/tie/loss of `new` against `old`, each pair judged in both orders to cancel position bias.

    In each order the judge's preference is read from its next-token probabilities of " A" and " B"
    (no parsing). A pair is a win when `new` is preferred in both orders, a loss when `old` is, and a
    tie when the orders disagree — the usual verdict of a position-biased judge. An empty answer is
    decided by rule, not by the judge: it loses to any non-empty one and ties with another empty one
    (a development probe: against 8 good answers the embedded 135M judge's summed log-odds favoured
    the empty answer 7 times, and the both-orders rule called all 8 ties; its position bias and
    chance-level accuracy are in bench/results/assess-quality.json). The score (wins + ties/2)/n is
    0.5 for "no difference"; its 95 % interval is a bootstrap over prompts.
    """
    k = len(requests)
    verdicts = [empty_rule(n, o) for n, o in zip(new, old)]
    judged = [i for i in range(k) if verdicts[i] is None]
    labels = [judge.token_id(" A"), judge.token_id(" B")]
    prompts = [judge_prompt(judge, requests[i], new[i], old[i]) for i in judged]  # new is A
    prompts += [judge_prompt(judge, requests[i], old[i], new[i]) for i in judged]  # new is B
    lps = judge.score_many(prompts, labels) if judged else []
    progress(k)
    m = len(judged)
    log_odds: list[float | None] = [None] * k  # for new, both orders summed: the position bias cancels
    for j, i in enumerate(judged):
        new_first = lps[j][0] > lps[j][1]
        new_second = lps[m + j][1] > lps[m + j][0]
        verdicts[i] = 1.0 if new_first and new_second else 0.0 if not (new_first or new_second) else 0.5
        log_odds[i] = round((lps[j][0] - lps[j][1]) + (lps[m + j][1] - lps[m + j][0]), 4)
    wins, losses = verdicts.count(1.0), verdicts.count(0.0)
    a_first = sum(lp[0] > lp[1] for lp in lps)
    return {
        "prompts": k,
        "win": wins,
        "tie": k - wins - losses,
        "loss": losses,
        "judged": m,
        "score": round(sum(verdicts) / k, 4) if k else None,
        "score_ci95": bootstrap_ci(verdicts),
        "judge_prefers_a": round(a_first / (2 * m), 4) if m else None,
        "verdicts": verdicts,
        "log_odds": log_odds,
    }


# ---- comparing two models on the same prompts ---------------------------------------------------
def stopped(entry: dict[str, Any]) -> list[float]:
    """Per stop-rate prompt of an eval entry, 1.0 where the answer ended (its end-of-turn token)."""
    return [float(s["finish"] == "stop") for s in entry.get("samples") or []]


def paired_bootstrap(old: list[float], new: list[float], n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Mean of new − old over the same prompts, its 95 % interval, and P(new is worse) under resampling."""
    import random

    if len(old) != len(new) or not old:
        raise ValueError("paired comparison needs the same, non-empty prompt set")
    diffs = [b - a for a, b in zip(old, new)]
    rng, n = random.Random(seed), len(diffs)
    means = sorted(sum(rng.choices(diffs, k=n)) / n for _ in range(n_boot))
    return {
        "delta": round(sum(diffs) / n, 4),
        "ci95": [round(means[int(0.025 * n_boot)], 4), round(means[int(0.975 * n_boot) - 1], 4)],
        "p_worse": round(sum(m < 0 for m in means) / n_boot, 4),
    }


def bootstrap_ci(passes: Sequence[float], n_boot: int = 2000, seed: int = 0) -> list[float]:
    """Percentile bootstrap 95 % interval of a pass rate."""
    import random

    if not passes:
        return [0.0, 0.0]
    rng = random.Random(seed)
    n = len(passes)
    means = sorted(sum(rng.choices(passes, k=n)) / n for _ in range(n_boot))
    return [round(means[int(0.025 * n_boot)], 4), round(means[int(0.975 * n_boot) - 1], 4)]


# ---- every check of one model -------------------------------------------------------------------
def checks(
    model: Served, r: Recipe, engines: Engines, reference: dict[str, Any] | None = None, judge: Served | None = None
) -> dict[str, Any]:
    """Stop rate, instruction-following accuracy and (given M_0's eval entry) the pairwise verdict
    of one model: greedy answers to held-out prompts (`isheep eval`, and the loop's eval stage).

    The judge is loaded only after the model under evaluation is released (`engines` holds one
    model at a time): two 8B models at the planned context would not fit a 24 GB card together.
    """
    out: dict[str, Any] = {}
    engine = engines.get(model)
    trained = constraints.trained_kinds(r.synth.verifiable_fraction)
    if r.eval.stop_prompts:
        with progress_bar("eval: stop rate", r.eval.stop_prompts) as bar:
            out.update(stop_rate(engine, r.eval.stop_prompts, r.eval.max_tokens, bar))
    if r.eval.ifeval_prompts:
        n = min(r.eval.ifeval_prompts, ifeval.N_PROMPTS)
        with progress_bar("eval: IFEval", n) as bar:
            out["ifeval"] = ifeval_following(engine, n, r.eval.suite_max_tokens, trained, bar)
    if r.eval.suite_prompts:
        with progress_bar("eval: instruction suite", r.eval.suite_prompts) as bar:
            out["suite"] = instruction_following(engine, r.eval.suite_prompts, r.eval.suite_max_tokens, bar)
    if r.eval.heldout_prompts:
        with progress_bar("eval: held-out set", r.eval.heldout_prompts) as bar:
            out["heldout"] = heldout_following(engine, r.eval.heldout_prompts, r.eval.suite_max_tokens, trained=trained, progress=bar)
    if r.eval.knowledge_questions:
        with progress_bar("eval: knowledge probe", r.eval.knowledge_questions) as bar:
            out["knowledge"] = knowledge(engine, r.eval.knowledge_questions, progress=bar)
    if reference and r.eval.pairwise and out.get("samples"):
        old = {x["id"]: x["text"] for x in reference.get("samples") or []}
        rows = [x for x in out["samples"] if x["id"] in old]
        # a judge GGUF of its own runs here: the server serves the model under evaluation only
        local = "llama_cpp" if r.model.backend == "openai" and judge is not None else None
        j = engines.get(judge or model, local)
        with progress_bar("eval: pairwise judge", len(rows)) as bar:
            out["pairwise"] = pairwise(j, [x["prompt"] for x in rows], [x["text"] for x in rows], [old[x["id"]] for x in rows], bar)
        out["pairwise"]["judge"] = str(judge or model)
    return out
