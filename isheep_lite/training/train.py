"""Training in a child process: the job written to a file, one process (or one per rank with
torch.distributed) started on `training.fit`, and its summary read back.

Why a child process: when it exits, every byte it held (RAM, and VRAM on a GPU) is returned before
generation starts again — the usual complaint about running Unsloth/TRL and inference in one process.
It dies with the run (process.die_with_parent); a death by signal is raised as `TrainingKilled`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from isheep_lite.config import TrainConfig
from isheep_lite.process import die_with_parent
from isheep_lite.recipe import UserError
from isheep_lite.training.fit import job_key, last_checkpoint


class TrainingKilled(RuntimeError):
    """The training child died by a signal (the kernel's OOM killer, a crash in a CUDA kernel):
    `isheep run` turns it into the same one line as a death of the run itself (process.death_report)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"the training process died by signal {signum}")
        self.signum = signum


def train(
    conversations: list[list[dict[str, str]]],
    hf_dir: Path,
    gguf_path: Path,
    out_dir: Path,
    cfg: TrainConfig,
    seed: int,
    python: str = sys.executable,
    preferences: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run `run_training` in a fresh Python process (`python`: e.g. a venv with the gpu extra) and return its summary.
    `preferences` ({"prompt", "chosen", "rejected"}) are what train.objective dpo and sft+dpo learn from."""
    out_dir.mkdir(parents=True, exist_ok=True)
    job_path = out_dir / "train_job.json"
    result_path = out_dir / "train_result.json"
    result_path.unlink(missing_ok=True)
    job = {
        "conversations": conversations,
        "hf_dir": str(hf_dir),
        "gguf": str(gguf_path),
        "out_dir": str(out_dir),
        "cfg": asdict(cfg),
        "seed": seed,
    }
    if preferences:
        job["preferences"] = preferences
    job_path.write_text(json.dumps(job))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    argv = [python, "-m", "isheep_lite.training.fit", str(job_path)]
    if cfg.processes == 1:
        code = subprocess.run(argv, env=env, preexec_fn=die_with_parent()).returncode
    else:
        for d in ("checkpoints", "checkpoints-dpo"):  # cleaned once here; the processes only read them
            last_checkpoint(out_dir / d, job_key(job))
        code = _run_ranks(argv, env, cfg.processes)
    if code == 2:
        raise UserError("training refused its input (see the line above)")
    if code < 0:
        raise TrainingKilled(-code)
    if code != 0 or not result_path.exists():
        raise RuntimeError(f"training process failed with exit code {code}")
    return json.loads(result_path.read_text())


def _run_ranks(argv: list[str], env: dict[str, str], world: int) -> int:
    """`world` training processes joined by torch.distributed's env:// rendezvous on this machine (as
    `torchrun --standalone` starts them). If one fails the others are stopped (they would wait for it
    forever); the first failure's exit code is returned."""
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world)}
    procs = [
        subprocess.Popen(argv, env={**env, **dist, "RANK": str(r), "LOCAL_RANK": str(r)}, preexec_fn=die_with_parent())
        for r in range(world)
    ]
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [c for c in codes if c not in (None, 0)]
            if failed or all(c == 0 for c in codes):
                return failed[0] if failed else 0
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
