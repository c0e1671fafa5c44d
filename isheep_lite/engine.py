"""llama.cpp engine: completions, chat completions and next-token log-probabilities.

One interface for every stage (synthesis, assessment, evaluation). Each request carries its own
seed, so a record's sample depends only on (run seed, iteration, record), never on what ran before
it: a resumed run reproduces an uninterrupted one.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from . import models


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int = 0


@dataclass(frozen=True)
class Completion:
    text: str
    n_tokens: int
    finish_reason: str  # "stop" (end-of-turn token or stop string) | "length"


class Engine:
    """A GGUF loaded in llama.cpp (CPU, or GPU where llama-cpp-python was built with CUDA)."""

    def __init__(self, gguf_path: Path, n_ctx: int = 2048, n_threads: int = 0):
        from llama_cpp import Llama

        self.path = Path(gguf_path)
        self.info = models.gguf_info(self.path)
        self.n_ctx = n_ctx
        self.llm: Any = Llama(
            model_path=str(self.path),
            n_ctx=n_ctx,
            n_threads=n_threads or os.cpu_count() or 1,
            n_batch=512,
            n_gpu_layers=-1,
            logits_all=False,
            verbose=False,
        )

    def close(self) -> None:
        """Free the model now (llama.cpp's own finaliser fails noisily at interpreter exit)."""
        if self.llm is not None:
            self.llm.close()
            self.llm = None

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def tokenize(self, text: str) -> list[int]:
        """Exactly as llama.cpp tokenizes a prompt: special tokens parsed, BOS per the model's metadata."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)

    def complete(self, prompt: str, s: Sampling) -> Completion:
        n_prompt = len(self.tokenize(prompt))
        budget = min(s.max_tokens, self.n_ctx - n_prompt)
        if budget <= 0:
            return Completion("", 0, "length")
        out = self.llm.create_completion(
            prompt,
            max_tokens=budget,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=0,
            min_p=0.0,
            repeat_penalty=1.0,
            stop=list(s.stop) or None,
            seed=s.seed,
        )
        choice = out["choices"][0]
        finish = choice.get("finish_reason") or "length"
        if finish == "stop" and budget < s.max_tokens and out["usage"]["completion_tokens"] >= budget:
            finish = "length"
        return Completion(choice["text"], int(out["usage"]["completion_tokens"]), finish)

    def chat(self, messages: list[dict[str, str]], s: Sampling) -> Completion:
        return self.complete(models.render_chat(self.info, messages, add_generation_prompt=True), s)

    def next_token_logprobs(self, prompt: str, token_ids: Sequence[int]) -> list[float]:
        """log P(next token = t | prompt) for each t, renormalised over the whole vocabulary.

        Reuses the KV cache for the longest prefix shared with the previous call, so scoring the
        same pair on several aspects pays for the shared part once.
        """
        tokens = self.tokenize(prompt)
        if len(tokens) >= self.n_ctx:
            raise ValueError(f"prompt of {len(tokens)} tokens does not fit n_ctx={self.n_ctx}")
        llm = self.llm
        cached = list(llm.input_ids[: llm.n_tokens])
        shared = 0
        for a, b in zip(cached, tokens):
            if a != b:
                break
            shared += 1
        shared = min(shared, len(tokens) - 1)  # always evaluate ≥ 1 token, to get fresh logits
        llm.n_tokens = shared
        llm.eval(tokens[shared:])
        import numpy as np

        # eval() keeps only the last position's logits (logits_all=False): read them from the context.
        n_vocab = llm.n_vocab()
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,)).astype(np.float64)
        top = logits.max()
        log_z = top + math.log(float(np.exp(logits - top).sum()))
        return [float(logits[t]) - log_z for t in token_ids]

    def token_id(self, text: str) -> int:
        """The single token that spells `text` (no BOS); raises if it takes several tokens."""
        ids = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        if len(ids) != 1:
            raise ValueError(f"{text!r} is {len(ids)} tokens for this model, not one")
        return ids[0]
