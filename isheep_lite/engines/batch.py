"""llama.cpp's continuous batching in pieces: a token into a batch, the prompts' shared prefix, a sequence's slot, log-probabilities from logits."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence


def add_token(batch: Any, token: int, pos: int, seq: int, logits: bool) -> int:
    """Append one token of sequence `seq` to a llama_batch; returns its row."""
    n = batch.n_tokens
    batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, pos, 1
    batch.seq_id[n][0] = seq
    batch.logits[n] = logits
    batch.n_tokens = n + 1
    return n


# Sharing a prefix costs one copy of a KV stream per prompt, about what evaluating a few prompt tokens
# costs: shorter prefixes are evaluated per prompt. Sharing the chat template's system turn is what
# this threshold was set for (docs/measurements.md, the shared prompt prefix). Tests raise it to
# switch sharing off.
MIN_SHARED = 8


def shared_prefix(seqs: Sequence[Sequence[int]], limits: Sequence[int]) -> int:
    """Tokens every sequence starts with, at most `limits[i]` for sequence i (so each keeps the
    positions it needs logits for); 0 when shorter than MIN_SHARED or for a single sequence."""
    if len(seqs) < 2:
        return 0
    n = min(min(len(t) for t in seqs), min(limits))
    first = seqs[0]
    for t in seqs[1:]:
        k = 0
        while k < n and t[k] == first[k]:
            k += 1
        n = k
    return n if n >= MIN_SHARED else 0


def log_softmax_at(logits_ptr: Any, n_vocab: int, token_ids: Sequence[int]) -> list[float]:
    import numpy as np

    logits = np.ctypeslib.as_array(logits_ptr, shape=(n_vocab,)).astype(np.float64)
    top = logits.max()
    log_z = top + math.log(float(np.exp(logits - top).sum()))
    return [float(logits[t]) - log_z for t in token_ids]


@dataclass
class Slot:
    """One in-flight sequence of a batched generation."""

    index: int
    sampler: Any
    pos: int
    logit_row: int
    max_tokens: int
    stop: tuple[str, ...]
    data: bytearray = field(default_factory=bytearray)
    n_tokens: int = 0
    next_token: int | None = None
