"""HF weights for a GGUF: the user's folder or HF cache, llama.cpp's converter, or the GGUF dequantised once into a cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from isheep_lite.gguf.header import GgufInfo, _gguf_key, cache_root, check_gguf, gguf_info, joined_gguf
from isheep_lite.gguf import archs, rope
from isheep_lite.recipe import UserError


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


def hf_params(hf_dir: Path) -> int | None:
    """The parameters of an HF directory's text model, from its safetensors headers (nothing is
    read beyond them), or None where it has no safetensors. A multimodal tower (archs.TOWERS) and
    Qwen3.5's multi-token-prediction layers (`mtp.`) are left out, as the converter leaves them out."""
    from safetensors import safe_open

    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        with safe_open(str(f), framework="np") as st:
            for name in st.keys():
                if not (archs.in_tower(name) or name.startswith("mtp.")):
                    n = 1
                    for d in st.get_slice(name).get_shape():
                        n *= d
                    total += n
    return total


def check_same_model(info: GgufInfo, gguf_path: Path, hf_dir: Path) -> None:
    """Refuse a GGUF (generation) and an HF directory (training) of different models — e.g. model.hf
    set to the user's model while model.gguf is still the embedded default. Compared by parameter
    count (±10 %), from the GGUF's tensors (every shard's, for a split GGUF: gguf_info) and the HF
    weights' safetensors headers (hf_params), else its config (planner.Shape); an HF config the
    planner cannot read is not checked."""
    from isheep_lite.planner import Shape

    params = hf_params(hf_dir)
    if params is None:
        try:
            params = Shape.from_hf_dir(hf_dir).params()
        except (KeyError, TypeError, ValueError):
            return
    if params and not 0.9 <= info.n_params / params <= 1.1:
        raise UserError(
            f"model.gguf ({gguf_path.name}, {info.n_params / 1e6:,.0f}M parameters) and model.hf "
            f"({hf_dir.name}, {params / 1e6:,.0f}M) are not the same model; give the GGUF of the "
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
    from isheep_lite.rundir.files import cached

    def convert(tmp: Path) -> None:
        cmd = [sys.executable, str(script), str(hf_dir), "--outfile", str(tmp), "--outtype", "f16"]
        returncode, last = _run_with_status(cmd, f"converting {hf_dir.name} to GGUF (llama.cpp's converter)")
        if returncode != 0 or not tmp.is_file() or tmp.stat().st_size == 0:
            raise UserError(f"llama.cpp's converter failed on {hf_dir} (exit {returncode}): {last or 'no output'}")
        check_gguf(tmp)

    return cached(cache_root() / "gguf" / f"{hf_dir.name}-{h.hexdigest()[:16]}.f16.gguf", convert)


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
# plain copy it is saved from (docs/measurements.md has the peak measured on SmolLM2-135M).
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
    """Refuse, before any work, a GGUF-only model that cannot be dequantised into HF weights: an
    architecture transformers' GGUF reader does not know (archs.py's `from_gguf`), or one this machine
    has too little RAM for (the reader needs about DEQUANTISE_BYTES_PER_PARAM bytes per parameter)."""
    info = gguf_info(gguf_path)
    if not archs.for_gguf(info.arch, gguf_path.name).from_gguf:
        raise UserError(
            f"{gguf_path.name}: transformers cannot read a {info.arch} GGUF back into weights to train; "
            "give the model's HF weights as model.hf (a local directory or an HF-cache id)"
        )
    if 0 < info.rope_dims < info.head_dim:
        raise UserError(
            f"{gguf_path.name}: its rotary embedding covers {info.rope_dims} of each head's {info.head_dim} dimensions, "
            "which transformers' GGUF reader drops; give the model's HF weights as model.hf (a local directory or an HF-cache id)"
        )
    if (dequantised_dir(gguf_path) / "config.json").is_file():
        return
    need = int(DEQUANTISE_BYTES_PER_PARAM * info.n_params + 0.5e9)
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


DEQUANTISED_SHARD_BYTES = 10**9  # gguf_to_hf's safetensors shards (1 GB)


def gguf_to_hf(gguf_path: Path, out: Path) -> None:
    """Dequantise a GGUF into a plain float32 HF directory (weights + tokenizer), atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from isheep_lite.rundir.files import atomic_path, reclaim_temporaries

    # `<out>.tmp<pid>`: a killed run's leftover is reclaimed (here, by the next run's preflight and by
    # `isheep clean`) once its pid is gone; the flock keeps it from being taken for a leftover meanwhile.
    reclaim_temporaries(out.parent, recursive=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, shared=True, directory=True) as tmp:
        gguf_path = joined_gguf(gguf_path)  # transformers reads one file: a split GGUF's shards joined
        kw = dict(gguf_file=gguf_path.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kw)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        rope.restore_config(config, gguf_path)
        # `save_pretrained` refuses a model loaded from GGUF: rebuild a plain one from its config.
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(loaded.state_dict())
        # small shards: the export maps one input shard at a time, so its memory follows the shard
        plain.save_pretrained(tmp, max_shard_size=DEQUANTISED_SHARD_BYTES)
        AutoTokenizer.from_pretrained(str(gguf_path.parent), **kw).save_pretrained(tmp)
