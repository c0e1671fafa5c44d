"""llama.cpp engine: completions, chat completions and next-token log-probabilities.

One interface for every stage (synthesis, assessment, evaluation). Each request carries its own
seed, so a record's sample depends on (run seed, iteration, record), not on what ran before it.

Prompts of one call that start alike (the few-shot meta-prompt, the assessment preamble, the chat
template's system turn) share that prefix: it is evaluated once into a sequence of its own and
each new sequence starts from a copy of its KV stream (`llama_memory_seq_cp`, a buffer copy), so
only the rest of each prompt is evaluated.

`generate` and `score_many` are the fast paths: continuous batching through llama-cpp-python's
low-level API. Up to `n_parallel` sequences advance in one `llama_decode` call; each has its own
sampler chain (temperature, top-p, seed), stop strings and token budget; a finished sequence's KV
cells are cleared and its slot is refilled from the queue. One sequence decoding at a time reads
every weight once per token; sixteen read them once per sixteen tokens, which is where the
speed-up on a CPU (and a GPU) comes from. The high-level API has no batched generation.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import Any, Callable, Sequence

from isheep_lite import planner
from isheep_lite.engines.base import Completion, EngineBase, Sampling
from isheep_lite.engines.batch import Slot, add_token, log_softmax_at, shared_prefix
from isheep_lite.engines.tokens import prompt_ids
from isheep_lite.gguf import header
from isheep_lite.recipe import UserError


class Engine(EngineBase):
    """A GGUF loaded in llama.cpp (CPU, or GPU where llama-cpp-python was built with CUDA)."""

    def __init__(
        self,
        gguf_path: Path,
        n_ctx: int = 2048,
        n_threads: int = 0,
        n_parallel: int = 16,
        kv_budget_gb: float = 4.0,
        adapters: Sequence[Path] = (),
        n_gpu_layers: int = -1,
    ):
        """`adapters`: GGUF LoRA adapters (export.write_lora_gguf) applied on top of the weights at
        load time, in order, each at scale 1 — M_t = base + Δ_1 + … (one per iteration trained on
        top of the previous one), with no merged copy of the model on disk."""
        import llama_cpp as lc
        from llama_cpp import Llama

        self.path = Path(gguf_path)
        self.info = header.gguf_info(self.path)
        for a in adapters:
            header.check_gguf(Path(a))
        self.n_ctx = n_ctx
        # Fewer sequences rather than an out-of-memory failure: the KV cache of the batched context
        # ((n_parallel + 1) × n_ctx cells, bytes per cell from the GGUF metadata) must fit kv_budget_gb.
        self.n_parallel = planner.fit_parallel(n_parallel, n_ctx, self.info.kv_bytes_per_cell, int(kv_budget_gb * 2**30))
        self.n_threads = n_threads or os.cpu_count() or 1
        self.gpu_plan: dict[str, Any] | None = None
        if n_gpu_layers == -1 and lc.llama_supports_gpu_offload():
            n_gpu_layers = self._plan_gpu(adapters)
            n_ctx = self.n_ctx
        self._batch_ctx: Any = None
        self.llm: Any = Llama(
            model_path=str(self.path),
            n_ctx=n_ctx,
            n_threads=self.n_threads,
            n_batch=512,
            n_gpu_layers=n_gpu_layers,
            logits_all=False,
            verbose=False,
        )
        self._adapters: list[Any] = []
        for a in adapters:
            handle = lc.llama_adapter_lora_init(self.llm._model.model, str(a).encode())
            if not handle:
                self.close()
                raise UserError(f"llama.cpp could not load the LoRA adapter {a} (made for another model?)")
            self._adapters.append(handle)
        self._apply_adapters(self.llm._ctx.ctx)

    def _plan_gpu(self, adapters: Sequence[Path]) -> int:
        """On a GPU build: layers, context and sequences that fit the free VRAM (planner.plan_llama)."""
        free = planner.gpu_free_bytes()
        if free is None:  # no NVIDIA tool to ask: every layer, as llama.cpp would
            return -1
        weights = self.path.stat().st_size + sum(Path(a).stat().st_size for a in adapters)
        self.gpu_plan = planner.plan_llama(
            weights_bytes=weights,
            n_layers=self.info.n_layers,
            kv_bytes_per_cell=self.info.kv_bytes_per_cell,
            n_vocab=self.info.n_vocab,
            free_bytes=free,
            n_ctx=self.n_ctx,
            n_parallel=self.n_parallel,
            n_ctx_train=self.info.n_ctx_train,
        )
        self.n_ctx, self.n_parallel = self.gpu_plan["n_ctx"], self.gpu_plan["n_parallel"]
        return int(self.gpu_plan["n_gpu_layers"])

    def _apply_adapters(self, ctx: Any) -> None:
        """Every loaded adapter, at scale 1, on one llama.cpp context (each context keeps its own list)."""
        if not self._adapters:
            return
        import ctypes

        import llama_cpp as lc

        n = len(self._adapters)
        handles = (lc.llama_adapter_lora_p_ctypes * n)(*self._adapters)
        if lc.llama_set_adapters_lora(ctx, handles, n, (ctypes.c_float * n)(*([1.0] * n))) != 0:
            raise RuntimeError("llama.cpp could not apply the LoRA adapters to a context")

    def close(self) -> None:
        """Free the model now (llama.cpp's own finaliser fails noisily at interpreter exit)."""
        import llama_cpp as lc

        if self._batch_ctx is not None:
            lc.llama_free(self._batch_ctx)
            self._batch_ctx = None
        for handle in getattr(self, "_adapters", []):  # before the model, as llama-cpp-python's Llama does
            lc.llama_adapter_lora_free(handle)
        self._adapters = []
        if self.llm is not None:
            self.llm.close()
            self.llm = None

    def tokenize(self, text: str) -> list[int]:
        """As llama.cpp tokenizes a prompt (special tokens parsed, BOS per the model's metadata), with
        one BOS where the chat template printed it too (tokens.prompt_ids, as training tokenizes)."""
        return prompt_ids(self.llm, text)

    def encode(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    # ---- batched paths -------------------------------------------------------------------------
    def batched_context(self) -> Any:
        """A second llama.cpp context on the same weights, sized for `n_parallel` sequences.

        KV memory = (n_parallel + 1) × n_ctx cells × (2 · n_layers · n_kv_heads · head_dim · 2 bytes).

        Each sequence has a KV stream of its own (`kv_unified = False`): in one shared pool every
        new token's attention scans every live sequence's cells, masked, which costs more per token
        the longer the texts in flight (docs/measurements.md, one KV stream per sequence). llama.cpp then splits a batch into micro-batches of
        consecutive sequence ids, so `generate` adds tokens in id order and fills the lowest free
        ids first.
        """
        if self._batch_ctx is None:
            import llama_cpp as lc

            params = lc.llama_context_default_params()
            params.n_ctx = self.n_ctx * (self.n_parallel + 1)  # n_ctx cells per stream
            params.n_batch = self.n_ctx + self.n_parallel  # any prompt that fits a sequence fits one batch
            params.n_ubatch = 512
            params.n_seq_max = self.n_parallel + 1  # the last sequence id holds a shared prompt prefix
            params.n_threads = params.n_threads_batch = self.n_threads
            params.kv_unified = False
            params.no_perf = True
            self._batch_ctx = lc.llama_init_from_model(self.llm._model.model, params)
            if not self._batch_ctx:
                raise RuntimeError("llama.cpp could not create a batched context (out of memory?)")
            self._apply_adapters(self._batch_ctx)
        return self._batch_ctx

    def _prefill(self, ctx: Any, batch: Any, tokens: Sequence[int]) -> None:
        """Evaluate a shared prefix into sequence id n_parallel (no logits)."""
        import llama_cpp as lc

        batch.n_tokens = 0
        for pos, tok in enumerate(tokens):
            add_token(batch, tok, pos, self.n_parallel, False)
        if lc.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed on the shared prompt prefix")

    def _sampler(self, s: Sampling) -> Any:
        import llama_cpp as lc

        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        if s.grammar:
            vocab = lc.llama_model_get_vocab(self.llm._model.model)
            grammar = lc.llama_sampler_init_grammar(vocab, s.grammar.encode(), b"root")
            if not grammar:
                raise ValueError(f"llama.cpp rejected the grammar {s.grammar!r}")
            lc.llama_sampler_chain_add(chain, grammar)
        if s.temperature <= 0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
        else:
            if s.top_p < 1.0:
                lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(s.top_p, 1))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(s.temperature))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(s.seed))
        return chain

    def generate(
        self,
        prompts: Sequence[str],
        samplings: Sequence[Sampling],
        on_result: Callable[[int, Completion], None] = lambda i, c: None,
    ) -> list[Completion]:
        """Complete every prompt (raw text, as `complete`), up to `n_parallel` at a time."""
        import ctypes

        import llama_cpp as lc

        ctx = self.batched_context()
        vocab = lc.llama_model_get_vocab(self.llm._model.model)
        memory = lc.llama_get_memory(ctx)
        lc.llama_memory_clear(memory, True)
        batch = lc.llama_batch_init(self.n_ctx + self.n_parallel, 0, 1)
        piece = ctypes.create_string_buffer(256)
        encoded = [self.tokenize(p) for p in prompts]
        fits = [t for t in encoded if len(t) < self.n_ctx]
        shared = shared_prefix(fits, [len(t) - 1 for t in fits])
        results: list[Completion | None] = [None] * len(prompts)
        queue = deque(range(len(prompts)))
        free = set(range(self.n_parallel))
        active: dict[int, Slot] = {}

        def finish(seq: int, slot: Slot, text: str, reason: str) -> None:
            c = Completion(text, slot.n_tokens, reason)
            results[slot.index] = c
            lc.llama_memory_seq_rm(memory, seq, -1, -1)
            lc.llama_sampler_free(slot.sampler)
            del active[seq]
            free.add(seq)
            on_result(slot.index, c)

        try:
            if shared:
                self._prefill(ctx, batch, fits[0][:shared])
            while queue or active:
                while not queue and free and active and min(free) < max(active):
                    # draining: move the last sequence into the first gap, so the ids stay consecutive
                    # and a step stays one micro-batch (see batched_context; the copy is one stream's buffer)
                    lo, hi = min(free), max(active)
                    lc.llama_memory_seq_cp(memory, hi, lo, -1, -1)
                    lc.llama_memory_seq_rm(memory, hi, -1, -1)
                    active[lo] = active.pop(hi)
                    free.remove(lo)
                    free.add(hi)
                starting: dict[int, tuple[int, int]] = {}  # sequence id -> (prompt index, token budget)
                n_tokens = len(active)
                while queue and free:  # refill free slots, lowest id first, with whole prompts while they fit
                    i = queue[0]
                    tokens = encoded[i]
                    if n_tokens and n_tokens + len(tokens) - shared > self.n_ctx + self.n_parallel:
                        break
                    queue.popleft()
                    budget = min(samplings[i].max_tokens, self.n_ctx - len(tokens))
                    if budget <= 0:
                        results[i] = Completion("", 0, "length")
                        on_result(i, results[i])
                        continue
                    seq = min(free)
                    free.remove(seq)
                    if shared:  # the prefix's cells, then only the rest of the prompt
                        lc.llama_memory_seq_cp(memory, self.n_parallel, seq, -1, -1)
                    starting[seq] = (i, budget)
                    n_tokens += len(tokens) - shared
                batch.n_tokens = 0
                for seq in sorted([*active, *starting]):  # in id order: see batched_context
                    if seq in starting:
                        i, budget = starting[seq]
                        tokens = encoded[i]
                        for pos in range(shared, len(tokens)):
                            row = add_token(batch, tokens[pos], pos, seq, pos == len(tokens) - 1)
                        active[seq] = Slot(i, self._sampler(samplings[i]), len(tokens), row, budget, samplings[i].stop)
                    else:  # one new token per running sequence
                        slot = active[seq]
                        slot.logit_row = add_token(batch, slot.next_token, slot.pos, seq, True)
                        slot.pos += 1
                if batch.n_tokens == 0:
                    continue
                if lc.llama_decode(ctx, batch) != 0:
                    raise RuntimeError("llama_decode failed (KV cache full?)")
                for seq, slot in list(active.items()):
                    tok = lc.llama_sampler_sample(slot.sampler, ctx, slot.logit_row)
                    if lc.llama_vocab_is_eog(vocab, tok):
                        finish(seq, slot, slot.data.decode("utf-8", "ignore"), "stop")
                        continue
                    n = lc.llama_token_to_piece(vocab, tok, piece, len(piece), 0, False)
                    slot.data += piece.raw[: max(n, 0)]
                    slot.n_tokens += 1
                    # decode the text so far only when a stop string must be looked for, or at the end
                    text = slot.data.decode("utf-8", "ignore") if slot.stop else ""
                    hits = [text.index(x) for x in slot.stop if x in text]
                    if hits:
                        finish(seq, slot, text[: min(hits)], "stop")
                    elif slot.n_tokens >= slot.max_tokens:
                        finish(seq, slot, slot.data.decode("utf-8", "ignore"), "length")
                    else:
                        slot.next_token = tok
        finally:
            for slot in active.values():
                lc.llama_sampler_free(slot.sampler)
            lc.llama_batch_free(batch)
            lc.llama_memory_clear(memory, True)
        return [r for r in results if r is not None]

    def score_many(self, prompts: Sequence[str], token_ids: Sequence[int]) -> list[list[float]]:
        """`next_token_logprobs` for many prompts, evaluated together (up to `n_parallel` per decode)."""
        seqs = [self.tokenize(p) for p in prompts]
        return self._decode_packed(seqs, [len(t) - 1 for t in seqs], lambda i, logprobs: logprobs(0, token_ids))

    def completion_logprobs(self, prompts: Sequence[str], completions: Sequence[str]) -> list[tuple[float, int]]:
        """(sum of log P(token | everything before it), token count) of each completion after its prompt.

        The completion is tokenized on its own (no BOS) and appended to the prompt's tokens, as in
        training. Used for IFD (assess.ifd). Pairs are packed into one decode per batch.
        """
        pairs = [
            (self.tokenize(p), self.llm.tokenize(c.encode("utf-8"), add_bos=False, special=True)) for p, c in zip(prompts, completions)
        ]
        if any(not p or not c for p, c in pairs):
            raise ValueError("completion_logprobs needs a non-empty prompt and completion")

        def read(i: int, logprobs: Callable[[int, Sequence[int]], list[float]]) -> tuple[float, int]:
            completion = pairs[i][1]
            return sum(logprobs(k, [tok])[0] for k, tok in enumerate(completion)), len(completion)

        return self._decode_packed([p + c for p, c in pairs], [len(p) - 1 for p, _ in pairs], read)

    def _decode_packed(
        self, seqs: list[list[int]], first_read: list[int], read: Callable[[int, Callable[[int, Sequence[int]], list[float]]], Any]
    ) -> list[Any]:
        """Evaluate token sequences packed up to `n_parallel` per llama_decode (their cells cleared
        between packs; a prefix common to all is evaluated once and kept).

        Logits are kept from position `first_read[i]` to the second-to-last token (or just that
        position, when it is the last); `read(i, logprobs)` is called once per sequence, in order,
        with logprobs(k, ids) = log P(each of ids) at the k-th kept position.
        """
        import llama_cpp as lc

        ctx = self.batched_context()
        memory = lc.llama_get_memory(ctx)
        n_vocab = self.llm.n_vocab()
        batch = lc.llama_batch_init(self.n_ctx + self.n_parallel, 0, 1)
        out: list[Any] = []
        too_long = next((t for t in seqs if len(t) >= self.n_ctx), None)
        if too_long is not None:
            raise ValueError(f"a sequence of {len(too_long)} tokens does not fit n_ctx={self.n_ctx}")
        try:
            lc.llama_memory_clear(memory, True)
            shared = shared_prefix(seqs, first_read)
            if shared:
                self._prefill(ctx, batch, seqs[0][:shared])
            i = 0
            while i < len(seqs):
                for seq in range(self.n_parallel):  # the last pack's cells; the shared prefix stays
                    lc.llama_memory_seq_rm(memory, seq, -1, -1)
                batch.n_tokens, jobs = 0, []
                while i < len(seqs) and len(jobs) < self.n_parallel:
                    tokens, lo = seqs[i], first_read[i]
                    hi = max(lo, len(tokens) - 2)
                    if jobs and batch.n_tokens + len(tokens) - shared > self.n_ctx + self.n_parallel:
                        break
                    if shared:
                        lc.llama_memory_seq_cp(memory, self.n_parallel, len(jobs), -1, -1)
                    rows = {pos: add_token(batch, tokens[pos], pos, len(jobs), lo <= pos <= hi) for pos in range(shared, len(tokens))}
                    jobs.append([rows[pos] for pos in range(lo, hi + 1)])
                    i += 1
                if lc.llama_decode(ctx, batch) != 0:
                    raise RuntimeError("llama_decode failed (KV cache full?)")
                for rows in jobs:
                    out.append(read(len(out), lambda k, ids: log_softmax_at(lc.llama_get_logits_ith(ctx, rows[k]), n_vocab, ids)))
        finally:
            lc.llama_batch_free(batch)
            lc.llama_memory_clear(memory, True)
        return out
