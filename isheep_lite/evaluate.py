"""Per-iteration checks of a model, run on its GGUF in llama.cpp.

The stop-rate check guards the most common failure of self-training exports (METHOD.md, "What
users of the peers trip over"): a tuned model that no longer emits its end-of-turn token and
babbles to the length limit. Prompts are held out: they are not seeds and not generation prompts.
"""
from __future__ import annotations

import json
from importlib import resources
from typing import Any, Callable

from . import ifeval
from .engine import Completion, Engine, Sampling


def stop_prompts(n: int) -> list[dict[str, str]]:
    text = resources.files("isheep_lite").joinpath("data/stop_prompts.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()][:n]


def greedy_answers(
    engine: Engine, prompts: list[str], max_tokens: int, progress: Callable[[int], None]
) -> list[Completion]:
    """One greedy single-turn chat answer per prompt, batched."""
    greedy = Sampling(temperature=0.0, max_tokens=max_tokens)
    return engine.chat_many([[{"role": "user", "content": p}] for p in prompts], [greedy] * len(prompts),
                            lambda i, c: progress(1))


def stop_rate(
    engine: Engine, n_prompts: int, max_tokens: int, progress: Callable[[int], None] = lambda n: None
) -> dict[str, Any]:
    """Fraction of greedy answers that end with the end-of-turn token within `max_tokens`."""
    prompts = stop_prompts(n_prompts)
    outs = greedy_answers(engine, [p["prompt"] for p in prompts], max_tokens, progress)
    stopped = sum(c.finish_reason == "stop" for c in outs)
    tokens = sum(c.n_tokens for c in outs)
    samples = [{"id": p["id"], "finish": c.finish_reason, "tokens": c.n_tokens, "text": c.text[:400]} for p, c in zip(prompts, outs)]
    n = len(prompts)
    return {"prompts": n, "stop_rate": round(stopped / n, 4) if n else None,
            "mean_tokens": round(tokens / n, 1) if n else None, "samples": samples}


def instruction_following(
    engine: Engine, n_prompts: int, max_tokens: int, progress: Callable[[int], None] = lambda n: None
) -> dict[str, Any]:
    """Greedy answers to `n_prompts` suite prompts (balanced over constraint kinds), checked strictly and loosely."""
    items = ifeval.subset(n_prompts)
    outs = greedy_answers(engine, [it.prompt for it in items], max_tokens, progress)
    result = ifeval.score(items, [c.text for c in outs])
    result["strict_ci95"] = bootstrap_ci(result["strict_pass"])
    return result


def bootstrap_ci(passes: list[int], n_boot: int = 2000, seed: int = 0) -> list[float]:
    """Percentile bootstrap 95 % interval of a pass rate."""
    import random

    if not passes:
        return [0.0, 0.0]
    rng = random.Random(seed)
    n = len(passes)
    means = sorted(sum(rng.choices(passes, k=n)) / n for _ in range(n_boot))
    return [round(means[int(0.025 * n_boot)], 4), round(means[int(0.975 * n_boot) - 1], 4)]
