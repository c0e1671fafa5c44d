"""Rule filters and score-based selection (pure Python).

Instruction filters follow Self-Instruct / I-SHEEP's instruction filters: word bounds, unusable keywords,
bad first character, leaked list markup, links, near-duplicates by ROUGE-L. We add one a naive run
on SmolLM2 showed is needed: "instructions" that are chatter about the task
("What a fun task! Here's a new one: …") or an assistant greeting. Pair filters follow I-SHEEP's data filtering step.

Every check returns a reason string or None, so rejected records say why they were rejected.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Iterable, Sequence

from isheep_lite.config import FilterConfig
from isheep_lite.selfalign import constraints

UNUSABLE_KEYWORDS = (
    "image",
    "images",
    "graph",
    "graphs",
    "picture",
    "pictures",
    "file",
    "files",
    "map",
    "maps",
    "draw",
    "plot",
    "go to",
    "video",
    "audio",
    "music",
    "flowchart",
    "diagram",
)
_KEYWORD_RE = re.compile(r"\b(" + "|".join(re.escape(k) for k in UNUSABLE_KEYWORDS) + r")\b", re.I)
_MARKUP_RE = re.compile(r"\b(instruction|input|output|response|answer|task\s*\d+)\s*:", re.I)
_LINK_RE = re.compile(r"https?://|www\.", re.I)
# Talk *about* writing tasks, or an assistant's greeting, instead of a task (seen in SmolLM2's output).
_CHATTER_RE = re.compile(
    r"(here'?s|here is|here are) (a|an|another|some|the|my)? ?(new|next|few|list)|"
    r"\b(new|following|diverse) (task|tasks|instructions?)\b|\bwhat a (fun|great|nice)\b|"
    r"\b(i'?m|i am) (ready|happy|glad|here) to\b|\bhow can i (help|assist)\b|\byour task\b|"
    r"\bas an ai\b|\bsure[,!]",
    re.I,
)
_PLACEHOLDER_RE = re.compile(r"\[[^\]]*\]|<[^>]*>|\{[^}]*\}|_{3,}")
# A reasoning block in an answer (Qwen3's and SmolLM3's <think>…</think>, Gemma 4's thought channel
# <|channel>thought…<channel|>): answers are written through the template's no-think path, and a
# model that thinks anyway must not be trained to.
_REASONING_RE = re.compile(r"</?think>|<\|channel>|<channel\|>", re.I)
_TURN_RE = re.compile(r"(^|\n)\s*(user|assistant|human|question|instruction|q)\s*:", re.I)
_CHOICES_RE = re.compile(r"(^|\n)\s*\(?[A-Da-d][).]\s+\S.*(\n\s*\(?[A-Da-d][).]\s+\S.*){2,}")
_REFUSAL_RE = re.compile(r"^\s*(i'?m sorry|i am sorry|sorry,|i cannot|i can'?t|as an ai)", re.I)


def words(text: str) -> list[str]:
    return text.split()


# ---- ROUGE-L ------------------------------------------------------------------------------------
def rouge_tokens(text: str) -> list[str]:
    """ROUGE's default tokenisation (as in `rouge-score` without stemming): lowercase alphanumeric runs."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


class RougeIndex:
    """ROUGE-L F1 of a candidate against every text added so far.

    LCS is computed by rapidfuzz's C++ `LCSseq` over token ids (each distinct token mapped to one
    code point), so ROUGE-L over thousands of instructions stays fast. F1 = 2·LCS / (|a| + |b|).
    """

    def __init__(self, texts: Iterable[str] = ()):
        self._vocab: dict[str, str] = {}
        self._encoded: list[str] = []
        for t in texts:
            self.add(t)

    def _encode(self, text: str) -> str:
        out = []
        for tok in rouge_tokens(text):
            if tok not in self._vocab:
                self._vocab[tok] = chr(0x100 + len(self._vocab))
            out.append(self._vocab[tok])
        return "".join(out)

    def add(self, text: str) -> None:
        self._encoded.append(self._encode(text))

    def max_f1(self, text: str) -> float:
        from rapidfuzz import process
        from rapidfuzz.distance import LCSseq

        enc = self._encode(text)
        if not enc or not self._encoded:
            return 0.0
        lcs = process.cdist([enc], self._encoded, scorer=LCSseq.similarity, workers=1)[0]
        lengths = [len(e) for e in self._encoded]
        return max(2.0 * float(common) / (len(enc) + n) for common, n in zip(lcs, lengths) if len(enc) + n > 0)

    def __len__(self) -> int:
        return len(self._encoded)


def rouge_l(a: str, b: str) -> float:
    return RougeIndex([b]).max_f1(a)


# ---- instruction filters ------------------------------------------------------------------------
# the rule checks after the length and first-character ones, in order: (pattern, reason)
_INSTRUCTION_PATTERNS = (
    (_MARKUP_RE, "leaked_markup"),
    (_LINK_RE, "link"),
    (_KEYWORD_RE, "unusable_keyword"),
    (_CHATTER_RE, "chatter"),
    (_PLACEHOLDER_RE, "placeholder"),
)
_PAIR_PATTERNS = (
    (_REASONING_RE, "reasoning_block"),
    (_TURN_RE, "continues_dialogue"),
    (_CHOICES_RE, "multiple_choice"),
    (re.compile(r"\?\Z"), "asks_back"),
    (_REFUSAL_RE, "refusal"),
    (re.compile(r":\Z"), "ends_with_colon"),
)


def _first_match(text: str, patterns: Sequence[tuple[re.Pattern[str], str]]) -> str | None:
    """The reason of the first pattern found in `text`, or None."""
    return next((reason for pattern, reason in patterns if pattern.search(text)), None)


def instruction_reject_reason(text: str, cfg: FilterConfig) -> str | None:
    """Why this generated instruction is unusable, or None if it passes the rule filters."""
    stripped = text.strip()
    if not stripped:
        return "empty"
    n = len(words(stripped))
    if n < cfg.min_words:
        return "too_short"
    if n > cfg.max_words:
        return "too_long"
    first = stripped[0]
    if not first.isascii() or not first.isalnum():
        return "bad_first_char"
    return _first_match(stripped, _INSTRUCTION_PATTERNS)


# ---- pair filters -------------------------------------------------------------------------------
def response_reject_reason(instruction: str, response: str, finish_reason: str, cfg: FilterConfig) -> str | None:
    """Why this (instruction, response) pair must not be trained on, or None."""
    r = response.strip()
    if not r:
        return "empty_response"
    if finish_reason != "stop":
        return "truncated"
    if len(words(r)) > cfg.max_response_words:
        return "response_too_long"
    if reason := _first_match(r, _PAIR_PATTERNS):
        return reason
    if rouge_l(r, instruction) >= 0.9:  # an answer may echo its question ("Paris is the capital of France.")
        return "repeats_instruction"
    return None


def split_pairs(responses: list[dict[str, Any]], cfg: FilterConfig) -> tuple[list[dict], list[dict]]:
    """Answered pairs that could be trained on, and the others with `stage: pair` and their reason.

    Run before the self-assessment, so the judge only grades pairs that could be kept."""
    candidates, rejected = [], []
    for x in responses:
        reason = response_reject_reason(x["instruction"], x["response"], x["gen"]["finish"], cfg)
        if reason is None and "constraint" in x and not constraints.check(x["constraint"], x["response"]):
            reason = "fails_constraint"  # verifiable self-feedback: the rule decides before any grade
        if reason:
            rejected.append({**x, "stage": "pair", "reason": reason})
        else:
            candidates.append(x)
    return candidates, rejected


def count_by(rows: list[dict[str, Any]], key: str) -> dict[str, int]:
    """How many rows have each value of `key` (a rejection reason), most frequent first."""
    return dict(Counter(x[key] for x in rows).most_common())


# ---- selection ----------------------------------------------------------------------------------
def mean_score(record: dict[str, Any], aspects: Sequence[str]) -> float:
    return sum(record["scores"][a] for a in aspects) / len(aspects)


def ranks(values: Sequence[float]) -> list[float]:
    """Fractional rank of each value in 0..1 (ties share their mean rank): scale-free, so signals can be averaged."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 / max(1, len(values) - 1)
        i = j + 1
    return out


def rank_keys(records: list[dict[str, Any]], aspects: Sequence[str], rank_by: str) -> list[float]:
    """Higher is better. score: mean self-assessment; ifd: −IFD; score+ifd: the mean of both fractional ranks."""
    by_score = [mean_score(r, aspects) for r in records]
    if rank_by == "score":
        return by_score
    by_ifd = [-r["ifd"] for r in records]
    if rank_by == "ifd":
        return by_ifd
    return [(a + b) / 2 for a, b in zip(ranks(by_score), ranks(by_ifd))]


def best_of_n(records: list[dict[str, Any]], aspects: Sequence[str]) -> tuple[list[dict], list[dict]]:
    """The best-graded answer of each instruction (records grouped by `instruction_id`; ties go to
    the lower sample), with `candidates` (how many competed) and `score_spread` (best minus worst
    mean score) added; the other answers are returned with reason `not_best_of_n`. Unscored
    answers compete below every scored one."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(r.get("instruction_id", r["id"]), []).append(r)

    def key(r: dict[str, Any]) -> tuple[int, float, int]:
        scored = all(r["scores"].get(a) is not None for a in aspects)
        return (int(scored), mean_score(r, aspects) if scored else 0.0, -r.get("sample", 0))

    best, others = [], []
    for group in groups.values():
        ranked = sorted(group, key=key, reverse=True)
        scores = [mean_score(r, aspects) for r in group if all(r["scores"].get(a) is not None for a in aspects)]
        spread = round(max(scores) - min(scores), 4) if scores else None
        best.append({**ranked[0], "candidates": len(group), "score_spread": spread})
        others += [{**r, "reason": "not_best_of_n"} for r in ranked[1:]]
    return best, others


def preference_pairs(kept: list[dict[str, Any]], graded: list[dict[str, Any]], aspects: Sequence[str], margin: float) -> list[dict]:
    """Self-rewarding preference pairs: for each kept answer (its instruction's best-graded), the worst-
    graded answer to the same instruction, when their mean scores differ by at least `margin`."""
    worst: dict[str, dict[str, Any]] = {}
    for r in graded:
        if all(r["scores"].get(a) is not None for a in aspects):
            i = r.get("instruction_id", r["id"])
            if i not in worst or mean_score(r, aspects) < mean_score(worst[i], aspects):
                worst[i] = r
    pairs = []
    for best in kept:
        low = worst.get(best.get("instruction_id", best["id"]))
        if low is not None and low["id"] != best["id"] and mean_score(best, aspects) - mean_score(low, aspects) >= margin:
            pairs.append(
                {
                    "id": best["id"],
                    "chosen": best,
                    "rejected": low,
                    "margin": round(mean_score(best, aspects) - mean_score(low, aspects), 4),
                }
            )
    return pairs


def select(records: list[dict[str, Any]], aspects: Sequence[str], cfg: FilterConfig) -> tuple[list[dict], list[dict]]:
    """IFD ceiling, absolute threshold on every aspect, then the top fraction by `cfg.rank_by`.

    The rank cut exists because a small model is a weak, compressed judge (its expected scores for a
    right and a wrong answer lie close together: docs/measurements.md): a fixed threshold keeps all or
    nothing, a rank keeps its relatively best. Ties keep record order (stable sort), so selection is deterministic.
    With no aspects (assessment switched off) only the rule filters have run and everything is kept.
    """
    kept, rejected = [], []
    for r in records:
        if any(r["scores"][a] is None for a in aspects):
            rejected.append({**r, "reason": "unparsed_score"})
        elif cfg.max_ifd is not None and r.get("ifd") is not None and r["ifd"] >= cfg.max_ifd:
            rejected.append({**r, "reason": "high_ifd"})
        elif cfg.min_score is not None and any(r["scores"][a] < cfg.min_score for a in aspects):
            rejected.append({**r, "reason": "below_min_score"})
        else:
            kept.append(r)
    if cfg.keep_top is not None and kept and aspects:
        keys = rank_keys(kept, aspects, cfg.rank_by)
        order = sorted(range(len(kept)), key=lambda i: -keys[i])
        n_keep = max(1, round(cfg.keep_top * len(kept)))
        top = set(order[:n_keep])
        rejected += [{**kept[i], "reason": "below_top_fraction"} for i in range(len(kept)) if i not in top]
        kept = [kept[i] for i in range(len(kept)) if i in top]
    return kept, rejected
