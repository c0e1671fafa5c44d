"""A child that dies by a signal (llama.cpp segfaulting on a quantised GGUF) costs one line naming
the signal, the stage and the model, exit code 1 — not a silent death; Ctrl-C and SIGTERM still stop
a run cleanly, and the child never outlives its supervisor.

The crash is real: a `sitecustomize.py` on PYTHONPATH makes the child (only: it has $ISHEEP_STATUS)
kill itself with SIGSEGV where llama.cpp would, or sleep there so the test can signal it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import NO_DECISION_SETS

from isheep_lite import cli, process
from isheep_lite.gguf import header

REPO = Path(__file__).resolve().parents[1]

SITECUSTOMIZE = """
import os, signal, time
from pathlib import Path

def _hit(*args, **kwargs):
    Path(os.environ["CRASH_MARK"]).write_text(str(os.getpid()))
    if os.environ["CRASH_HOW"] == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(120)

if os.environ.get("ISHEEP_STATUS") and os.environ.get("CRASH_AT"):
    if os.environ["CRASH_AT"] == "instructions":
        import isheep_lite.selfalign.synth
        isheep_lite.selfalign.synth.generate_instructions = _hit
    else:
        import isheep_lite.engines.llamacpp
        isheep_lite.engines.llamacpp.Engine.__init__ = _hit
"""


def _env(tmp: Path, at: str, how: str) -> dict[str, str]:
    site = tmp / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{REPO}", "CRASH_AT": at, "CRASH_HOW": how, "CRASH_MARK": str(tmp / "mark")}


def _tiny_run(tiny: dict[str, Path], tmp: Path) -> list[str]:
    return [
        "run",
        f"model.gguf={tiny['gguf']}",
        f"model.hf={tiny['hf']}",
        "model.serve_base=original",
        "name=crash",
        f"runs_dir={tmp / 'runs'}",
        "model.n_parallel=2",
        "model.n_ctx=1024",
        "eval.stop_prompts=0",
        "eval.ifeval_prompts=0",
        "eval.suite_prompts=0",
        "eval.heldout_prompts=0",
        "eval.knowledge_questions=0",
    ]


def _eval(gguf: Path) -> list[str]:
    return ["eval", str(gguf), "--stop-prompts", "2", "--suite-prompts", "0", *NO_DECISION_SETS, "--parallel", "2"]


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.mark.slow
def test_run_crash_in_a_llama_stage_is_one_line(tiny: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "tmpdir").mkdir()
    env = {**_env(tmp_path, "instructions", "segv"), "TMPDIR": str(tmp_path / "tmpdir")}
    p = subprocess.run(
        [sys.executable, "-m", "isheep_lite", *_tiny_run(tiny, tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 1, (p.returncode, p.stderr[-3000:])
    line = _one_line(p.stderr)
    assert "llama.cpp crashed (SIGSEGV)" in line and "stage 'instructions' of iteration 1" in line, line
    assert f"on model {tiny['gguf']}" in line and "rerun the same command to resume" in line, line
    assert not list((tmp_path / "tmpdir").iterdir()), "the status file is removed"


def test_eval_crash_on_a_quantised_gguf_names_the_f16_fix(smol_gguf: Path, tmp_path: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "isheep_lite", *_eval(smol_gguf)],
        cwd=tmp_path,
        env=_env(tmp_path, "engine", "segv"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 1, (p.returncode, p.stderr[-3000:])
    line = _one_line(p.stderr)
    assert f"llama.cpp crashed (SIGSEGV) loading model {smol_gguf}" in line, line
    assert "quantised GGUF" in line and "F16" in line and "--backend transformers" in line, line
    assert p.stdout == ""


def _wait_for_mark(proc: subprocess.Popen, mark: Path) -> int:
    deadline = time.time() + 120
    while not mark.exists() or not mark.read_text():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline, "the child never reached the engine"
        time.sleep(0.05)
    return int(mark.read_text())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _start_sleeping_eval(tiny: dict[str, Path], tmp: Path) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "isheep_lite", *_eval(tiny["gguf"])],
        cwd=tmp,
        env=_env(tmp, "engine", "sleep"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # Ctrl-C as at a terminal: a test run started in the background (`cmd &` in a script, nohup)
        # inherits SIGINT ignored, and an ignored SIGINT stays ignored in both processes by design
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    child = _wait_for_mark(proc, tmp / "mark")
    assert child != proc.pid, "the work must run in a child process"
    return proc, child


def test_ctrl_c_reaches_the_child_and_the_parent_waits(tiny: dict[str, Path], tmp_path: Path) -> None:
    proc, child = _start_sleeping_eval(tiny, tmp_path)
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does: the whole foreground process group
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert _one_line(stderr).startswith("interrupted"), stderr
    assert not _alive(child)


def test_sigterm_to_the_parent_is_passed_on(tiny: dict[str, Path], tmp_path: Path) -> None:
    proc, child = _start_sleeping_eval(tiny, tmp_path)
    proc.send_signal(signal.SIGTERM)  # `kill PID`, `timeout`, a scheduler: the parent alone
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    line = _one_line(stderr)
    assert "was stopped (SIGTERM)" in line and f"loading model {tiny['gguf']}" in line, line
    assert not _alive(child)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_child_dies_with_its_supervisor(tiny: dict[str, Path], tmp_path: Path) -> None:
    proc, child = _start_sleeping_eval(tiny, tmp_path)
    proc.kill()
    proc.communicate(timeout=60)
    deadline = time.time() + 10
    while _alive(child):
        assert time.time() < deadline, "the child outlived its supervisor"
        time.sleep(0.05)


def test_death_report_lines() -> None:
    run_status = {"stage": "train", "iteration": 2, "run_model": "embedded:smollm2-135m-instruct"}
    line, code = process.death_report(signal.SIGKILL, run_status, "run")
    assert code == 1 and "was killed (SIGKILL) in stage 'train' of iteration 2" in line and "out of memory" in line
    line, code = process.death_report(signal.SIGBUS, run_status, "run")
    assert code == 1 and line.startswith("error: isheep run crashed (SIGBUS) in stage 'train'"), line
    quantised = str(header.resolve_gguf("embedded:smollm2-135m-instruct"))
    status = {"stage": "responses", "iteration": 1, "model": quantised, "adapters": [], "backend": "llama_cpp"}
    line, code = process.death_report(signal.SIGSEGV, status, "run")
    assert code == 1 and f"in stage 'responses' of iteration 1 on model {quantised};" in line, line
    assert "model.serve_base=export" in line and "model.converter" in line and "model.backend=transformers" in line, line
    line, _ = process.death_report(signal.SIGSEGV, {**status, "backend": "transformers"}, "run")
    assert line.startswith("error: isheep run crashed (SIGSEGV)"), line
    line, code = process.death_report(signal.SIGSEGV, {}, "run")
    assert code == 1 and "before its first stage" in line
    assert "\n" not in line


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["/venv/bin/isheep", "run", "a=1"], ["/venv/bin/isheep", "run", "a=1"]),
        (["/x/isheep_lite/__main__.py", "eval", "m.gguf"], ["-m", "isheep_lite", "eval", "m.gguf"]),
    ],
)
def test_the_child_runs_the_same_command_line(argv: list[str], expected: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    orig = ["python3", *(["-m", "isheep_lite"] if argv[0].endswith("__main__.py") else [argv[0]]), *argv[1:]]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(sys, "orig_argv", orig)
    assert process._child_argv() == [sys.executable, *expected]


def test_a_training_child_killed_by_a_signal_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The training child killed (the OOM killer's SIGKILL) ends `isheep run` in one line naming the
    stage and the likely cause, exit 1 — not a RuntimeError traceback."""
    from isheep_lite import process
    from isheep_lite.config import TrainConfig
    from isheep_lite.training import train

    python = tmp_path / "python"  # an interpreter that is killed as soon as it starts
    python.write_text("#!/bin/sh\nkill -KILL $$\n")
    python.chmod(0o755)
    with pytest.raises(train.TrainingKilled) as killed:
        train.train(
            [[{"role": "user", "content": "hi"}]],
            tmp_path,
            tmp_path / "m.gguf",
            tmp_path / "out",
            TrainConfig(),
            seed=0,
            python=str(python),
        )
    assert killed.value.signum == signal.SIGKILL

    status = tmp_path / "status.json"
    monkeypatch.setenv(process.STATUS_ENV, str(status))
    process.note_status(stage="train", iteration=3, run_model="embedded:smollm2-135m-instruct")

    def app() -> None:
        raise train.TrainingKilled(signal.SIGKILL)

    monkeypatch.setattr(cli, "app", app)
    monkeypatch.setattr(sys, "argv", ["isheep", "run"])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("error: the training process was killed (SIGKILL) in stage 'train' of iteration 3"), line
    assert "out of memory" in line and "train.batch_size" in line and "rerun the same command to resume" in line, line
