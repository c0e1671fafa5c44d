"""OpenAI-compatible HTTP engine: generation on a llama-server, llama-cpp-python or vLLM deployment.

For a user who has outgrown one machine: the same interface as the llama.cpp engine, with the
work sent to `<base_url>/completions`, `n_parallel` requests in flight at a time (the server
batches them). Prompts are rendered here with the chat template of the GGUF the server serves,
so every backend sees the same text — the assessment prompts end inside the assistant turn
("Score: "), which a chat endpoint could not express. Tokenization (for `token_id`) uses that
GGUF's vocabulary, loaded without weights. A server tokenizes the text itself and adds the model's
BOS where the model says so (llama-server, llama-cpp-python and vLLM all do): a BOS the template
printed is taken off the text sent (`wire_prompt`), so the server sees one BOS, as the local engine.

Each request carries its own temperature, top-p, seed, stop strings, token budget and (for
llama.cpp servers) GBNF grammar; top-k, min-p and repetition penalty are switched off so the
sampler matches the local engine's. Scores read the server's top-20 next-token log-probs
(`logprobs: 20`, which llama.cpp servers and vLLM return); a scale token outside the top 20 is
given the 20th log-prob, an upper bound. Per-token log-probs of a given completion (IFD) are not
offered: a server tokenizes prompt and completion together, unlike training.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Sequence

from . import models
from .engine import Completion, EngineBase, Sampling
from .recipe import UserError
from .tokens import prompt_ids

TOP_LOGPROBS = 20


class OpenAIEngine(EngineBase):
    def __init__(
        self,
        base_url: str,
        gguf_path: Path,
        n_parallel: int = 8,
        model: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 600.0,
    ):
        import llama_cpp as lc
        from llama_cpp import Llama

        self.base_url = base_url.rstrip("/")
        self.info = models.gguf_info(Path(gguf_path))
        self.n_parallel = max(1, n_parallel)
        self.model, self.api_key, self.timeout_s = model, api_key, timeout_s
        self.vocab: Any = Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
        self.adds_bos = bool(lc.llama_vocab_get_add_bos(lc.llama_model_get_vocab(self.vocab.model)))  # as a server reads the GGUF

    def close(self) -> None:
        if self.vocab is not None:
            self.vocab.close()
            self.vocab = None

    def tokenize(self, text: str) -> list[int]:
        """As the llama.cpp engine tokenizes a prompt (tokens.prompt_ids: one BOS)."""
        return prompt_ids(self.vocab, text)

    def encode(self, text: str) -> list[int]:
        return self.vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def wire_prompt(self, prompt: str) -> str:
        """The text sent: without the template's BOS where the server adds one (see the module doc)."""
        bos = self.info.bos
        return prompt[len(bos) :] if self.adds_bos and bos and prompt.startswith(bos) else prompt

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.model:
            body = {"model": self.model, **body}
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(f"{self.base_url}/completions", json.dumps(body).encode(), headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise UserError(f"{self.base_url}/completions answered {e.code}: {e.read()[:300]!r}") from None
        except (urllib.error.URLError, OSError) as e:
            raise UserError(f"cannot reach {self.base_url} ({getattr(e, 'reason', e)})") from None

    def _complete(self, prompt: str, s: Sampling) -> Completion:
        body: dict[str, Any] = {
            "prompt": self.wire_prompt(prompt),
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "seed": s.seed,
            "stop": list(s.stop),
            "top_k": 0,
            "min_p": 0.0,
            "repeat_penalty": 1.0,
        }
        if s.grammar:
            body["grammar"] = s.grammar
        choice = (r := self._post(body))["choices"][0]
        return Completion(
            choice["text"],
            int(r.get("usage", {}).get("completion_tokens", 0)),
            "length" if choice.get("finish_reason") == "length" else "stop",
        )

    def generate(
        self, prompts: Sequence[str], samplings: Sequence[Sampling], on_result: Callable[[int, Completion], None] = lambda i, c: None
    ) -> list[Completion]:
        results: list[Completion | None] = [None] * len(prompts)
        with ThreadPoolExecutor(self.n_parallel) as pool:
            futures = {pool.submit(self._complete, p, s): i for i, (p, s) in enumerate(zip(prompts, samplings))}
            for f in as_completed(futures):
                i = futures[f]
                results[i] = f.result()
                on_result(i, results[i])
        return [r for r in results if r is not None]

    def _score(self, prompt: str, token_ids: Sequence[int]) -> list[float]:
        r = self._post({"prompt": self.wire_prompt(prompt), "max_tokens": 1, "temperature": 0.0, "logprobs": TOP_LOGPROBS})
        top: dict[str, float] = r["choices"][0]["logprobs"]["top_logprobs"][0]
        floor = min(top.values())
        texts = [self.vocab.detokenize([t]).decode("utf-8", "ignore") for t in token_ids]
        return [top.get(text, floor) for text in texts]

    def score_many(self, prompts: Sequence[str], token_ids: Sequence[int]) -> list[list[float]]:
        with ThreadPoolExecutor(self.n_parallel) as pool:
            return list(pool.map(lambda p: self._score(p, token_ids), prompts))

    def completion_logprobs(self, prompts: Sequence[str], completions: Sequence[str]) -> list[tuple[float, int]]:
        raise UserError(
            "IFD needs per-token log-probs of a given completion, which the HTTP backend does not offer; "
            "set assess.ifd=false or use model.backend=llama_cpp"
        )
