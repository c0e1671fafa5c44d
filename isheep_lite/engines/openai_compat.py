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

import contextlib
import http.client
import json
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Sequence

from isheep_lite.engines.base import Completion, EngineBase, Sampling
from isheep_lite.engines.server import ServerProcess
from isheep_lite.engines.tokens import prompt_ids
from isheep_lite.gguf import header
from isheep_lite.recipe import UserError

TOP_LOGPROBS = 20
_REPORTED: set[str] = set()  # the capability lines already printed


class OpenAIEngine(EngineBase):
    def __init__(
        self,
        base_url: str,
        gguf_path: Path,
        n_parallel: int = 8,
        model: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 600.0,
        retry_s: float = 300.0,
        server: ServerProcess | None = None,
        lora: tuple[str, Path] | None = None,
    ):
        import llama_cpp as lc
        from llama_cpp import Llama

        self.base_url = base_url.rstrip("/")
        self.info = header.gguf_info(Path(gguf_path))
        self.gguf = Path(gguf_path)
        self.n_parallel = max(1, n_parallel)
        self.model, self.api_key, self.timeout_s, self.retry_s, self.server = model, api_key, timeout_s, retry_s, server
        self.vocab: Any = None
        self.served = self._check_served()
        self.lora = lora
        if lora is not None:
            self.served = self._load_lora(*lora)
        self.vocab = Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
        self.adds_bos = bool(lc.llama_vocab_get_add_bos(lc.llama_model_get_vocab(self.vocab.model)))  # as a server reads the GGUF
        self.logprobs, self.grammar = self._probe()

    def close(self) -> None:
        if self.lora is not None:  # the server keeps running: leave it as it was
            with contextlib.suppress(UserError):
                self._admin("/unload_lora_adapter", {"lora_name": self.lora[0]})
            self.lora = None
        if self.vocab is not None:
            self.vocab.close()
            self.vocab = None
        if self.server is not None:
            self.server.close()
            self.server = None

    def _check_served(self) -> str:
        """The name the server serves the model under; refuses a server that cannot be reached (no
        retry: a wrong URL is reported at once) or that serves another model."""
        try:
            with urllib.request.urlopen(self._request("/models"), timeout=30) as r:
                listed = [str(m.get("id")) for m in json.loads(r.read()).get("data", [])]
        except urllib.error.HTTPError as e:
            raise UserError(f"{self.base_url}/models answered {e.code}: is this an OpenAI-compatible root (…/v1)?") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise UserError(f"cannot reach {self.base_url} ({getattr(e, 'reason', e)})") from None
        name = served_name(listed, self.gguf, self.model)
        if name is None:
            want = self.model or self.gguf.name
            raise UserError(
                f"the server at {self.base_url} serves {', '.join(listed) or 'no model'}, not {want} "
                "(if it serves that model under another name, set model.served_name, or isheep eval --served-name)"
            )
        return name

    def _admin(self, path: str, body: dict[str, Any]) -> str:
        """A POST to one of the server's management endpoints; its text answer."""
        try:
            with urllib.request.urlopen(self._request(path, body), timeout=self.timeout_s) as r:
                return r.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            raise UserError(f"{self.base_url}{path} answered {e.code}: {e.read()[:300].decode('utf-8', 'replace')}") from None
        except (urllib.error.URLError, OSError) as e:
            raise UserError(f"cannot reach {self.base_url} ({getattr(e, 'reason', e)})") from None

    def _load_lora(self, name: str, path: Path) -> str:
        """Load M_t's PEFT adapter into a server with runtime LoRA (vLLM: --enable-lora and
        VLLM_ALLOW_RUNTIME_LORA_UPDATING=True); requests then name it as their model."""
        try:
            self._admin("/load_lora_adapter", {"lora_name": name, "lora_path": str(path.resolve())})
        except UserError as e:
            if "already" not in str(e):  # loaded by an earlier stage of this run
                raise UserError(
                    f"{e} (model.serve_lora: is the server started with LoRA enabled and a max LoRA rank ≥ train.lora_r?)"
                ) from None
        return name

    def _probe(self) -> tuple[bool, bool]:
        """What the server offers beyond plain completions: top log-probs (assess.mode=logprob) and
        GBNF grammars (assess.mode=grammar). Asked once, reported in one line."""
        got = self._post({"prompt": "The", "max_tokens": 1, "temperature": 0.0, "logprobs": TOP_LOGPROBS})
        top = ((got["choices"][0].get("logprobs") or {}).get("top_logprobs") or [None])[0]
        logprobs = isinstance(top, dict) and len(top) > 1
        try:
            forced = self._post({"prompt": "The", "max_tokens": 4, "temperature": 0.0, "grammar": 'root ::= "zq"'})
            grammar = forced["choices"][0]["text"] == "zq"
        except UserError:  # a server that rejects the field
            grammar = False
        line = f"server {self.base_url} · top-{TOP_LOGPROBS} log-probs: {'yes' if logprobs else 'no'} · GBNF grammars: {'yes' if grammar else 'no'}"
        if line not in _REPORTED:  # once per run, not at every model the loop serves
            _REPORTED.add(line)
            print(f"{line} (serving {self.served})", file=sys.stderr, flush=True)
        return logprobs, grammar

    def require(self, logprobs: bool = False, grammar: bool = False) -> None:
        """Refuse, before any work, a server without what the recipe's self-assessment mode reads."""
        if logprobs and not self.logprobs:
            raise UserError(
                f"the server at {self.base_url} returns no top log-probs, which assess.mode=logprob reads; "
                f"set assess.mode=generate{' or grammar' if self.grammar else ''}"
            )
        if grammar and not self.grammar:
            raise UserError(f"the server at {self.base_url} does not apply GBNF grammars (assess.mode=grammar); set assess.mode=generate")

    def tokenize(self, text: str) -> list[int]:
        """As the llama.cpp engine tokenizes a prompt (tokens.prompt_ids: one BOS)."""
        return prompt_ids(self.vocab, text)

    def encode(self, text: str) -> list[int]:
        return self.vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def wire_prompt(self, prompt: str) -> str:
        """The text sent: without the template's BOS where the server adds one (see the module doc)."""
        bos = self.info.bos
        return prompt[len(bos) :] if self.adds_bos and bos and prompt.startswith(bos) else prompt

    def _request(self, path: str, body: dict[str, Any] | None = None) -> urllib.request.Request:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode()
        return urllib.request.Request(f"{self.base_url}{path}", data, headers)

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        """One answer to one request. Connection errors, 5xx and cut-off answers are retried with
        backoff for model.retry_s (a server the loop runs is started again if it exited); a request
        is sent again only when no answer came back, so no record is made twice."""
        if self.served:
            body = {"model": self.served, **body}
        deadline, delay = time.monotonic() + self.retry_s, 0.5
        while True:
            try:
                with urllib.request.urlopen(self._request("/completions", body), timeout=self.timeout_s) as r:
                    return json.loads(r.read())
            except urllib.error.HTTPError as e:
                if e.code < 500:
                    raise UserError(f"{self.base_url}/completions answered {e.code}: {e.read()[:300]!r}") from None
                problem = f"answered {e.code}"
            except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
                problem = str(getattr(e, "reason", e))
            if time.monotonic() > deadline:
                raise UserError(f"{self.base_url} has not answered for {self.retry_s:.0f} s (model.retry_s): {problem}")
            if self.server is not None:
                self.server.ensure_running()
            time.sleep(delay)
            delay = min(2 * delay, 8.0)

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


def served_name(listed: list[str], gguf: Path, name: str | None) -> str | None:
    """Which of the server's model ids is this model: `name` if given (a server started with an
    alias), else the id whose file name is the GGUF's (llama-server, llama-cpp-python's server and
    vLLM list a GGUF by the path they loaded). None: the server serves something else."""
    if name:
        return name if name in listed else None
    return next((i for i in listed if Path(i).name == gguf.name), None)
