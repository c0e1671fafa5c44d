"""What every engine offers — completions, chat completions, next-token log-probabilities — and the sampling settings they take."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from isheep_lite.gguf import chat, header


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int = 0
    grammar: str | None = None  # a GBNF grammar (rule `root`) the output must match, e.g. 'root ::= [1-9]'


@dataclass(frozen=True)
class Completion:
    text: str
    n_tokens: int
    finish_reason: str  # "stop" (end-of-turn token or stop string) | "length"


class EngineBase:
    """What every stage needs from a backend; a backend implements the five methods that raise here.

    `info` carries the chat template and special tokens (the GGUF's, or the HF tokenizer's), so
    every backend renders exactly the same prompt text.
    """

    info: header.GgufInfo
    n_parallel: int = 1

    def tokenize(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        """`text` as tokens without a BOS (for single plain-text tokens such as the score digits)."""
        raise NotImplementedError

    def token_id(self, text: str) -> int:
        """The single token that spells `text`; raises if it takes several tokens."""
        ids = self.encode(text)
        if len(ids) != 1:
            raise ValueError(f"{text!r} is {len(ids)} tokens for this model, not one")
        return ids[0]

    def generate(
        self, prompts: Sequence[str], samplings: Sequence[Sampling], on_result: Callable[[int, Completion], None] = lambda i, c: None
    ) -> list[Completion]:
        raise NotImplementedError

    def score_many(self, prompts: Sequence[str], token_ids: Sequence[int]) -> list[list[float]]:
        raise NotImplementedError

    def completion_logprobs(self, prompts: Sequence[str], completions: Sequence[str]) -> list[tuple[float, int]]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "EngineBase":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def complete(self, prompt: str, s: Sampling) -> Completion:
        """One raw-text completion (the batched path with one prompt)."""
        return self.generate([prompt], [s])[0]

    def chat(self, messages: list[dict[str, str]], s: Sampling) -> Completion:
        return self.chat_many([messages], [s])[0]

    def chat_many(
        self,
        conversations: Sequence[list[dict[str, str]]],
        samplings: Sequence[Sampling],
        on_result: Callable[[int, Completion], None] = lambda i, c: None,
    ) -> list[Completion]:
        prompts = [chat.render_chat(self.info, m, add_generation_prompt=True) for m in conversations]
        return self.generate(prompts, samplings, on_result)

    def next_token_logprobs(self, prompt: str, token_ids: Sequence[int]) -> list[float]:
        """log P(next token = t | prompt) for each t, normalised over the whole vocabulary."""
        return self.score_many([prompt], token_ids)[0]
