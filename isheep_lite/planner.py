"""Memory planner: peak training memory from a model's config, and the micro-batch that fits.

Peak memory of LoRA / QLoRA SFT is the sum of five parts (bytes):

    weights      linear layers: NF4 with double-quantised scales, 0.5 + 1/64 B/param (4-bit), or
                 2 B/param (16-bit) — a multimodal checkpoint's vision/audio towers too (loaded,
                 never adapted); embeddings and lm_head stay 16-bit (neither bitsandbytes nor
                 Unsloth quantises them)
    lora         adapter params × 16 B (fp32 weight 4 + fp32 grad 4 + Adam m and v 8);
                 params = r × (d_in + d_out) per target matrix per layer
    activations  with gradient checkpointing one layer is recomputed at a time, b·s·(8h + 3i)·2 B
                 (attention projections, MLP gate/up/act), and each layer keeps its input, b·s·h·2 B
                 — on the GPU with transformers, offloaded to CPU RAM by Unsloth
    logits       b·s·V × 6 B with transformers (16-bit logits + the fp32 copy the loss takes);
                 × 2 B with Unsloth, whose fused cross-entropy never makes the fp32 copy — the
                 largest part for small models with big vocabularies
    overhead     CUDA context, cuBLAS workspace, allocator fragmentation: 0.75 GB

Checked against published figures in tests/test_planner.py. `plan_llama` sizes llama.cpp on a GPU
the same way: the GGUF's weights (its file size, adapters included), the KV cache
((n_parallel + 2) × n_ctx cells × models.kv_bytes_per_cell) and a compute buffer must fit the free VRAM.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GB = 1e9
OVERHEAD = 0.75 * GB
# target module → (d_in, d_out, which layers have it); dims in units of Shape.dims(). Attention
# projections are in the full-attention layers, Qwen3.5's gated-delta-net projections in its
# linear-attention layers, the MLP in every layer.
TARGET_SHAPES = {
    "q_proj": ("h", "q_out", "attention"),
    "k_proj": ("h", "kv", "attention"),
    "v_proj": ("h", "kv", "attention"),
    "o_proj": ("q", "h", "attention"),
    "in_proj_qkv": ("h", "lin_qkv", "linear_attention"),
    "in_proj_z": ("h", "lin_v", "linear_attention"),
    "in_proj_b": ("h", "lin_heads", "linear_attention"),
    "in_proj_a": ("h", "lin_heads", "linear_attention"),
    "out_proj": ("lin_v", "h", "linear_attention"),
    "gate_proj": ("h", "i", "all"),
    "up_proj": ("h", "i", "all"),
    "down_proj": ("i", "h", "all"),
}
TOWER_CONFIGS = ("vision_config", "audio_config")


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    per_layer_embedding: int = 0  # Gemma 4's per-layer input embeddings: width per layer (embedding_length_per_layer_input)
    # Qwen3.5's hybrid: this many layers are gated-delta-net linear attention instead of full attention,
    # with key width (heads × head size, for q and k), value width and value heads; its full-attention
    # query projection is twice as wide (the output gate)
    linear_attention_layers: int = 0
    linear_key: int = 0
    linear_value: int = 0
    linear_heads: int = 0
    gated_query: bool = False
    tower_params: int = 0  # a multimodal checkpoint's vision/audio towers (their blocks), loaded but not adapted

    @classmethod
    def from_gguf(cls, info: Any) -> "Shape":
        """From a GGUF header (models.GgufInfo): what preflight knows before any HF weights exist
        (the architectures whose GGUF alone is enough to train: no hybrid layers, no towers)."""
        return cls(
            layers=info.n_layers,
            hidden=info.n_embd,
            intermediate=info.n_ff,
            heads=info.n_head,
            kv_heads=info.n_head_kv,
            head_dim=info.head_dim,
            vocab=info.n_vocab,
            tied=info.tied,
            per_layer_embedding=info.n_embd_per_layer,
        )

    @classmethod
    def from_config(cls, c: dict[str, Any]) -> "Shape":
        """From an HF config.json: its text config, and the blocks of its vision/audio towers."""
        towers = sum(_tower_params(c[k]) for k in TOWER_CONFIGS if isinstance(c.get(k), dict))
        t = c.get("text_config", c)
        tied = c.get("tie_word_embeddings", t.get("tie_word_embeddings", False))  # a composite model's own key governs
        heads = t["num_attention_heads"]
        linear = sum(1 for kind in t.get("layer_types") or [] if kind == "linear_attention")
        return cls(
            layers=t["num_hidden_layers"],
            hidden=t["hidden_size"],
            intermediate=t["intermediate_size"],
            heads=heads,
            kv_heads=t.get("num_key_value_heads") or heads,
            head_dim=t.get("head_dim") or t["hidden_size"] // heads,
            vocab=t["vocab_size"],
            tied=bool(tied),
            per_layer_embedding=t.get("hidden_size_per_layer_input") or 0,
            linear_attention_layers=linear,
            linear_key=linear and t["linear_num_key_heads"] * t["linear_key_head_dim"],
            linear_value=linear and t["linear_num_value_heads"] * t["linear_value_head_dim"],
            linear_heads=linear and t["linear_num_value_heads"],
            gated_query=bool(t.get("attn_output_gate", linear > 0)),  # transformers' hybrids always gate
            tower_params=towers,
        )

    @classmethod
    def from_hf_dir(cls, hf_dir: Path) -> "Shape":
        """From the config.json of an HF model directory (`from_config`)."""
        return cls.from_config(json.loads((hf_dir / "config.json").read_text(encoding="utf-8")))

    def dims(self) -> dict[str, int]:
        q = self.heads * self.head_dim
        return {
            "h": self.hidden,
            "q": q,
            "q_out": q * (2 if self.gated_query else 1),
            "kv": self.kv_heads * self.head_dim,
            "i": self.intermediate,
            "lin_qkv": 2 * self.linear_key + self.linear_value,
            "lin_v": self.linear_value,
            "lin_heads": self.linear_heads,
        }

    def layers_with(self, kind: str) -> int:
        """How many layers have a projection of this kind (TARGET_SHAPES' third column)."""
        return {"attention": self.layers - self.linear_attention_layers, "linear_attention": self.linear_attention_layers}.get(
            kind, self.layers
        )

    def linear_params(self) -> int:
        """Parameters of the transformer blocks' linear layers, and of the towers (what 4-bit quantises)."""
        d = self.dims()
        return self.tower_params + sum(self.layers_with(kind) * d[a] * d[b] for a, b, kind in TARGET_SHAPES.values())

    def embedding_params(self) -> int:
        """Token embeddings and output layer; with Gemma 4's per-layer input embeddings, a second
        table of vocabulary × layers × their width (most of an E2B/E4B model's parameters)."""
        return self.vocab * (self.hidden * (1 if self.tied else 2) + self.layers * self.per_layer_embedding)

    def params(self) -> int:
        return self.linear_params() + self.embedding_params()


def _tower_params(c: dict[str, Any]) -> int:
    """A vision or audio tower's parameters, counted as its transformer blocks (attention 4·h², MLP
    2·h·i per layer): SigLIP-so400m's 27 × 1152-wide blocks, 411 M of its 428 M."""
    layers = c.get("depth") or c.get("num_hidden_layers") or 0
    h, i = c.get("hidden_size") or 0, c.get("intermediate_size") or 0
    return int(layers * (4 * h * h + 2 * h * i))


def lora_params(s: Shape, r: int, targets: list[str]) -> int:
    d = s.dims()
    return sum(s.layers_with(kind) * r * (d[a] + d[b]) for t, (a, b, kind) in TARGET_SHAPES.items() if t in targets)


def estimate(
    s: Shape, *, bits: int, r: int, targets: list[str], batch: int, seq_len: int, backend: str = "hf", gradient_checkpointing: bool = True
) -> dict[str, float]:
    """Peak training memory in bytes, by part (see the module docstring), and its total."""
    per_linear = 0.5 + 1 / 64 if bits == 4 else 2.0
    tokens = batch * seq_len
    layer = tokens * (8 * s.hidden + 3 * s.intermediate) * 2  # one layer's recomputed activations
    if not gradient_checkpointing:
        act = s.layers * layer
    else:
        act = layer + (0 if backend == "unsloth" else s.layers * tokens * s.hidden * 2)
    parts = {
        "weights": s.linear_params() * per_linear + s.embedding_params() * 2,
        "lora": lora_params(s, r, targets) * 16.0,
        "activations": float(act),
        "logits": tokens * s.vocab * (2.0 if backend == "unsloth" else 6.0),
        "overhead": OVERHEAD,
    }
    parts["total"] = sum(parts.values())
    return parts


def plan_batches(
    s: Shape,
    free_bytes: float,
    *,
    bits: int,
    r: int,
    targets: list[str],
    seq_len: int,
    effective_batch: int,
    backend: str = "hf",
    headroom: float = 0.9,
    gradient_checkpointing: bool = True,
) -> dict[str, Any]:
    """The largest power-of-two micro-batch ≤ effective_batch whose estimate fits headroom × free
    memory, and the gradient accumulation that keeps the effective batch. Raises when even a
    micro-batch of 1 does not fit."""
    micro = 1 << max(0, effective_batch.bit_length() - 1)
    while micro >= 1:
        est = estimate(
            s, bits=bits, r=r, targets=targets, batch=micro, seq_len=seq_len, backend=backend, gradient_checkpointing=gradient_checkpointing
        )
        if est["total"] <= headroom * free_bytes:
            return {"micro_batch": micro, "grad_accum": -(-effective_batch // micro), "estimate_gb": round(est["total"] / GB, 2)}
        micro //= 2
    need = estimate(
        s, bits=bits, r=r, targets=targets, batch=1, seq_len=seq_len, backend=backend, gradient_checkpointing=gradient_checkpointing
    )
    raise MemoryError(
        f"even one sequence of {seq_len} tokens needs ~{need['total'] / GB:.1f} GB; "
        f"{free_bytes / GB:.1f} GB free (try 4-bit, a lower train.max_seq_len or a smaller model)"
    )


def plan_llama(
    *,
    weights_bytes: int,
    n_layers: int,
    kv_bytes_per_cell: int,
    n_vocab: int,
    free_bytes: float,
    n_ctx: int,
    n_parallel: int,
    n_ctx_train: int = 0,
    headroom: float = 0.9,
    min_parallel: int = 4,
) -> dict[str, Any]:
    """n_gpu_layers, n_ctx and n_parallel for llama.cpp on a GPU with `free_bytes` of VRAM.

    VRAM = weights + KV + compute buffer must stay under headroom × free, where KV is
    (n_parallel + 2) · n_ctx · kv_bytes_per_cell (the batched context's stream per sequence and
    one for the shared prompt prefix, plus the engine's single-sequence context) and the compute
    buffer is a 512-token micro-batch of logits (512 · n_vocab · 4 B) plus 0.5 GB of activations and
    CUDA context. In order: n_ctx is capped at the trained context (cells past it are never
    useful); all layers with the asked n_parallel; all layers with fewer sequences (halving, down to
    `min_parallel`) — a sequence less costs less than a layer left on the CPU; else as many layers
    as fit, each taking its share of weights and of KV, the rest on the CPU (n_gpu_layers 0 when not
    even one fits).
    """
    n_ctx = min(n_ctx, n_ctx_train) if n_ctx_train else n_ctx
    fixed = 0.5 * GB + 512 * n_vocab * 4
    budget = headroom * free_bytes - fixed
    parallel = n_parallel
    while True:
        kv = (parallel + 2) * n_ctx * kv_bytes_per_cell
        if weights_bytes + kv <= budget:
            return {"n_gpu_layers": -1, "n_ctx": n_ctx, "n_parallel": parallel, "vram_gb": round((weights_bytes + kv + fixed) / GB, 2)}
        if parallel <= min_parallel:
            break
        parallel = max(min_parallel, parallel // 2)
    per_layer = weights_bytes / (n_layers + 1) + kv / max(n_layers, 1)  # + 1: embeddings and output stay on the CPU
    layers = max(0, min(n_layers, int(budget // per_layer))) if budget > 0 else 0
    return {
        "n_gpu_layers": layers,
        "n_ctx": n_ctx,
        "n_parallel": parallel,
        "vram_gb": round((layers * per_layer + fixed) / GB, 2) if layers else 0.0,
    }


# Peak RSS of a merged export (merge, then llama.cpp's converter), fitted over bench/bench_export.py's
# runs (bench/results/export-ram.json: 0.57 B and 1.21 B bf16 models, 1 GB and one-file shards):
# GiB = a + b · weights on disk (GiB) + c · largest input shard (GiB). The shard term is the input's
# memory-mapped pages (the kernel can drop them under pressure); the rest is the output shard being
# assembled and one tensor's merge.
EXPORT_RAM_FIT = (0.742, 0.388, 0.941)
GIB = 2**30


def export_ram_bytes(weights_bytes: float, largest_shard_bytes: float) -> float:
    """Peak host RAM of a merged export of HF weights of this size on disk, in these shards."""
    a, b, c = EXPORT_RAM_FIT
    return (a + b * weights_bytes / GIB + c * largest_shard_bytes / GIB) * GIB


def run_plan(
    shape: Shape,
    *,
    gguf_bytes: int,
    kv_bytes_per_cell: int,
    n_ctx: int,
    n_parallel: int,
    n_ctx_train: int,
    bits: int,
    r: int,
    targets: list[str],
    batch: int,
    seq_len: int,
    backend: str,
    hf_bytes: float,
    hf_largest_shard: float,
    disk_bytes: float,
) -> dict[str, float]:
    """What a run will need, by phase, in GB (RAM in GiB): printed when it starts and kept in its
    manifest. One model is resident at a time (training runs in a child after generation closed
    its model; the pairwise judge and the M_0 assessor open after the generator closes), so the
    peak is the largest phase, not their sum. On a CPU the two GPU figures are host RAM instead."""
    train = estimate(shape, bits=bits, r=r, targets=targets, batch=batch, seq_len=seq_len, backend=backend)["total"]
    gen = plan_llama(
        weights_bytes=gguf_bytes,
        n_layers=shape.layers,
        kv_bytes_per_cell=kv_bytes_per_cell,
        n_vocab=shape.vocab,
        free_bytes=float("inf"),
        n_ctx=n_ctx,
        n_parallel=n_parallel,
        n_ctx_train=n_ctx_train,
    )["vram_gb"]
    return {
        "training_gb": round(train / GB, 1),
        "generation_gb": round(gen, 1),
        "export_ram_gib": round(export_ram_bytes(hf_bytes, hf_largest_shard) / GIB, 1),
        "disk_gb": round(disk_bytes / GB, 1),
    }


def describe_plan(plan: dict[str, float]) -> str:
    """The one line `isheep run` prints before its first stage."""
    return (
        f"memory plan: training ≈ {plan['training_gb']} GB, generation ≈ {plan['generation_gb']} GB "
        f"(GPU memory on CUDA, else RAM) · export ≈ {plan['export_ram_gib']} GiB of RAM · "
        f"≈ {plan['disk_gb']} GB of disk for this run's files"
    )


def gpu_free_bytes() -> float | None:
    """Free memory of GPU 0 from nvidia-smi (no CUDA context is made in this process), or None."""
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=memory.free", "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
        return float(out.split()[0]) * 2**20
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def kv_bytes_per_cell(meta: dict[str, Any], arch: str) -> int:
    """KV-cache bytes one token of context costs: 2 (K and V) × layers × KV heads × head size × 2 bytes (F16).

    Read from the GGUF's `<arch>.*` keys; head size is `attention.key_length` where given, else
    embedding_length / head_count. SmolLM2-135M: 2 × 30 × 3 × 64 × 2 = 23 040 bytes (22.5 KiB).
    A hybrid (Qwen3.5: `full_attention_interval`) keeps KV in every interval-th layer only; its
    linear-attention layers hold a fixed recurrent state per sequence instead, not per cell.
    """

    def get(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    layers, heads = get("block_count", 0), get("attention.head_count", 0)
    kv_heads = get("attention.head_count_kv", heads)
    if isinstance(kv_heads, list):  # per-layer counts (some architectures)
        kv_heads = max(kv_heads)
    if not layers or not heads:
        return 0
    interval = get("full_attention_interval", 0)
    if interval:  # llama.cpp: layer i is recurrent unless (i + 1) % interval == 0
        layers //= interval
    k_len = get("attention.key_length", get("embedding_length", 0) // heads)
    v_len = get("attention.value_length", k_len)
    return int(layers * kv_heads * (k_len + v_len) * 2)


def fit_parallel(n_parallel: int, n_ctx: int, bytes_per_cell: int, budget_bytes: int) -> int:
    """The most sequences (≤ n_parallel, ≥ 1) whose KV cache of n_ctx cells each fits the budget,
    with one more stream of n_ctx cells for the prompt prefix they share (engine.Engine.batched_context)."""
    if bytes_per_cell <= 0:
        return n_parallel
    return max(1, min(n_parallel, budget_bytes // (n_ctx * bytes_per_cell) - 1))
