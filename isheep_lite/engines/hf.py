"""transformers engine: the same interface as the llama.cpp engine, on PyTorch.

For a model llama.cpp cannot run (an architecture or quantisation its build lacks), or to check the
llama.cpp path against a second implementation. Prompts are left-padded and decoded together, up
to `n_parallel` per forward pass, each row with its own sampler settings and `torch.Generator`
seeded from its request, so a record's sample depends on its own seed as with llama.cpp (the two
backends draw different numbers from the same seed; greedy output agrees). Batches are static:
a row that finishes early idles until the longest in its batch ends — the llama.cpp engine
refills slots and is the fast path (bench/bench_generate.py measures both).

The model comes from an HF directory, or from a GGUF that transformers dequantises on load.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, Sequence

from isheep_lite.engines.base import Completion, EngineBase, Sampling
from isheep_lite.engines.tokens import hf_prompt_ids
from isheep_lite.gguf import header


class HFEngine(EngineBase):
    def __init__(self, source: Path, n_parallel: int = 16, n_threads: int = 0, device: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source = Path(source)
        if n_threads:
            torch.set_num_threads(n_threads)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        if source.is_file():  # a GGUF: weights dequantised by transformers, template from the header
            kw: dict[str, Any] = {"gguf_file": source.name}
            folder = str(source.parent)
        else:
            kw, folder = {}, str(source)
        self.tok = AutoTokenizer.from_pretrained(folder, **kw)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kw).to(self.device).eval()
        self.n_parallel = max(1, n_parallel)
        self.info = (
            header.gguf_info(source)
            if source.is_file()
            else header.GgufInfo(
                arch=self.model.config.model_type,
                chat_template=self.tok.chat_template,
                bos=self.tok.bos_token,
                eos=self.tok.eos_token,
                n_params=self.model.num_parameters(),
                kv_bytes_per_cell=0,
            )
        )
        eos = self.model.generation_config.eos_token_id
        self.eos = {self.tok.eos_token_id} | set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.eos.discard(None)
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        # transformers renamed `past_key_values` to `cache` (5.2x); Unsloth pins 5.17, which has the old name
        self.cache_name = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    def close(self) -> None:
        self.model = None

    def tokenize(self, text: str) -> list[int]:
        """A prompt as the llama.cpp engine and training tokenize it: the tokenizer's own add-BOS rule,
        with one BOS where the chat template printed it too (tokens.hf_prompt_ids)."""
        return hf_prompt_ids(self.tok, text)

    def encode(self, text: str) -> list[int]:
        """`text` as tokens, no BOS (completions, single plain-text tokens)."""
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _left_padded(self, seqs: list[list[int]]) -> tuple[Any, Any, Any]:
        import torch

        width = max(len(s) for s in seqs)
        ids = torch.tensor([[self.pad] * (width - len(s)) + s for s in seqs], device=self.device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=self.device)
        return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)

    def generate(
        self, prompts: Sequence[str], samplings: Sequence[Sampling], on_result: Callable[[int, Completion], None] = lambda i, c: None
    ) -> list[Completion]:
        if any(s.grammar for s in samplings):
            raise ValueError("the transformers backend has no grammar-constrained sampling; use assess.mode logprob or generate")
        out: list[Completion] = []
        for start in range(0, len(prompts), self.n_parallel):
            part = range(start, min(start + self.n_parallel, len(prompts)))
            for i, c in zip(part, self._generate_batch([prompts[i] for i in part], [samplings[i] for i in part])):
                out.append(c)
                on_result(i, c)
        return out

    def _generate_batch(self, prompts: list[str], samplings: list[Sampling]) -> list[Completion]:
        import torch

        seqs = [self.tokenize(p) for p in prompts]
        gens = [torch.Generator().manual_seed(s.seed) for s in samplings]
        ids, mask, pos = self._left_padded(seqs)
        new: list[list[int]] = [[] for _ in prompts]
        done: dict[int, Completion] = {}
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
            while True:
                logits = out.logits[:, -1, :].float().cpu()
                step = []
                for r, s in enumerate(samplings):
                    tok = self.pad if r in done else _sample(logits[r], s, gens[r])
                    step.append(tok)
                    if r in done:
                        continue
                    if tok in self.eos:
                        done[r] = Completion(self.tok.decode(new[r], skip_special_tokens=True), len(new[r]), "stop")
                        continue
                    new[r].append(tok)
                    # decode the text so far only when a stop string must be looked for, or at the end
                    text = self.tok.decode(new[r], skip_special_tokens=True) if s.stop else ""
                    hits = [text.index(x) for x in s.stop if x in text]
                    if hits:
                        done[r] = Completion(text[: min(hits)], len(new[r]), "stop")
                    elif len(new[r]) >= s.max_tokens:
                        done[r] = Completion(self.tok.decode(new[r], skip_special_tokens=True), len(new[r]), "length")
                if len(done) == len(prompts):
                    break
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                pos = pos[:, -1:] + 1
                out = self.model(
                    input_ids=torch.tensor(step, device=self.device)[:, None],
                    attention_mask=mask,
                    position_ids=pos,
                    use_cache=True,
                    **{self.cache_name: getattr(out, self.cache_name)},
                )
        return [done[r] for r in range(len(prompts))]

    def _logprobs(self, seqs: list[list[int]]) -> Any:
        """log-softmax over the vocabulary at every position of left-padded `seqs` (one forward pass)."""
        import torch

        ids, mask, pos = self._left_padded(seqs)
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        return torch.log_softmax(logits.float(), dim=-1).cpu()

    def score_many(self, prompts: Sequence[str], token_ids: Sequence[int]) -> list[list[float]]:
        out: list[list[float]] = []
        for start in range(0, len(prompts), self.n_parallel):
            lp = self._logprobs([self.tokenize(p) for p in prompts[start : start + self.n_parallel]])
            out += [[float(lp[r, -1, t]) for t in token_ids] for r in range(lp.shape[0])]
        return out

    def completion_logprobs(self, prompts: Sequence[str], completions: Sequence[str]) -> list[tuple[float, int]]:
        """As the llama.cpp engine: the completion tokenized on its own, appended to the prompt's tokens."""
        pairs = [(self.tokenize(p), self.encode(c)) for p, c in zip(prompts, completions)]
        if any(not p or not c for p, c in pairs):
            raise ValueError("completion_logprobs needs a non-empty prompt and completion")
        out: list[tuple[float, int]] = []
        for start in range(0, len(pairs), self.n_parallel):
            part = pairs[start : start + self.n_parallel]
            seqs = [p + c for p, c in part]
            lp = self._logprobs(seqs)
            width = lp.shape[1]
            for r, (p, c) in enumerate(part):
                first = width - len(seqs[r]) + len(p)  # row of the first completion token (left padding)
                out.append((sum(float(lp[r, first + k - 1, t]) for k, t in enumerate(c)), len(c)))
        return out


def _sample(logits: Any, s: Sampling, gen: Any) -> int:
    """Greedy at temperature 0; else top-p on the model's distribution, then temperature (llama.cpp's order)."""
    import torch

    if s.temperature <= 0:
        return int(logits.argmax())
    if s.top_p < 1.0:
        probs = torch.softmax(logits, -1)
        order = probs.argsort(descending=True)
        cut = int((probs[order].cumsum(0) < s.top_p).sum()) + 1
        keep = order[:cut]
        logits = torch.full_like(logits, float("-inf")).scatter(0, keep, logits[keep])
    probs = torch.softmax(logits / s.temperature, -1)
    return int(torch.multinomial(probs, 1, generator=gen))
