"""Process supervision: a child dies with its parent, a death by signal becomes one line, and the
child tells its supervisor what it is doing through a status file."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, Optional

from isheep_lite.rundir.files import atomic_write_text

# ---- what the child of a supervised `isheep run`/`isheep eval` is doing -------------------------
# cli.py runs the work in a child process; if the child dies by a signal (llama.cpp segfaulting on
# a quantised GGUF), the parent reads this file to say which stage and which model it died in.
STATUS_ENV = "ISHEEP_STATUS"
_status: dict[str, Any] = {}  # this process's status, as last written


def note_status(**info: Any) -> None:
    """Merge `info` into the status file named by $ISHEEP_STATUS (atomically); no-op without it."""
    path = os.environ.get(STATUS_ENV)
    if not path:
        return
    _status.update(info)
    with contextlib.suppress(OSError):  # a report aid only: never fail the run over it
        atomic_write_text(Path(path), json.dumps(_status))


def read_status(path: str | Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# ---- the supervisor of `isheep run` / `isheep eval` ---------------------------------------------
SUPERVISED = ("run", "eval", "data")


CRASHES = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT}


def die_with_parent() -> Any:
    """The child's preexec function on Linux: the child is killed when the supervisor dies (`kill -9`
    of `isheep run` must not leave an orphan holding the run directory's lock). prctl is looked up
    here, before the fork."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl, parent = ctypes.CDLL(None, use_errno=True).prctl, os.getpid()

    def preexec() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the supervisor died before that: nobody waits for this child
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def _child_argv() -> list[str]:
    """This very command line (interpreter flags, `-m isheep_lite` or the `isheep` script) again."""
    orig = list(getattr(sys, "orig_argv", []))
    if orig and orig[len(orig) - len(sys.argv) + 1 :] == sys.argv[1:]:
        return [sys.executable, *orig[1:]]
    return [sys.executable, "-m", "isheep_lite", *sys.argv[1:]]


def _quantised(gguf_path: str) -> Optional[bool]:
    """Whether the GGUF's `general.file_type` is a quantised one (not all-F32, F16 or BF16); None when
    it cannot be told. Read by skipping through the header (header.header_ints): gguf.GGUFReader
    takes seconds on a large vocabulary, and this runs while the user waits for the crash line."""
    from isheep_lite.gguf.header import header_ints

    file_type = header_ints(Path(gguf_path), ("general.file_type",)).get("general.file_type")
    return None if file_type is None else file_type not in (0, 1, 32)  # ALL_F32, MOSTLY_F16, MOSTLY_BF16


def death_report(signum: int, status: dict[str, Any], command: str, who: str = "") -> tuple[str, int]:
    """(the one line, the exit code) for a child that died by signal `signum`; `status` is what it
    last wrote to its status file (process.note_status); `who` names the process when it is not
    `isheep <command>` itself (the training child)."""
    who = who or f"isheep {command}"
    resumable = command in ("run", "data")  # a run directory: rerunning resumes; its recipe takes overrides
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    where = ""
    if status.get("stage"):
        where = f" in stage '{status['stage']}' of iteration {status.get('iteration')}"
    elif status.get("after"):
        where = f" after stage '{status['after']}' of iteration {status.get('iteration')}"
    elif resumable:
        where = " before its first stage"
    model, adapters = status.get("model"), status.get("adapters") or []
    llama = bool(model) and status.get("backend") == "llama_cpp"
    if model:
        served = model + (f" + {len(adapters)} LoRA adapter{'s' if len(adapters) > 1 else ''}" if adapters else "")
        where = f" loading model {served}{',' if where else ''}{where}" if status.get("loading") else f"{where} on model {served}"
    elif status.get("run_model"):
        where += f" (model {status['run_model']})"
    resume = "rerun the same command to resume" if resumable else "rerun the command"
    if signum in CRASHES:
        if llama and _quantised(model) is not False:  # unknown: the likeliest cause still
            fix = (
                "serve an F16 conversion instead (model.serve_base=export serves M_0 re-exported to F16; "
                "model.converter=/path/to/llama.cpp/convert_hf_to_gguf.py with model.hf makes an F16 GGUF to generate with; "
                "an F16 eval.judge), or set model.backend=transformers"
                if resumable
                else "evaluate an F16 conversion of it (llama.cpp's convert_hf_to_gguf.py --outtype f16, or a run's "
                "iter_00/model-f16.gguf), or add --backend transformers"
            )
            hint = f"a quantised GGUF can crash llama.cpp on some CPUs: {fix}; then {resume}"
        elif llama:
            alt = "model.backend=transformers" if resumable else "--backend transformers"
            hint = f"{resume}; if it crashes at the same point again, try {alt}"
        else:
            hint = resume
        what = "llama.cpp crashed" if llama else f"{who} crashed"
        return f"error: {what} ({name}){where}; {hint}", 1
    if signum == signal.SIGKILL:
        hint = (
            "if it ran out of memory (the kernel's OOM killer sends SIGKILL; see `dmesg`), lower model.n_parallel, "
            f"model.n_ctx or train.batch_size, then {resume}"
        )
        return f"error: {who} was killed ({name}){where}; {hint}", 1
    return f"error: {who} was stopped ({name}){where}; {resume}", 128 + signum


def supervise(command: str) -> int:
    """Run this command line in a child process that inherits stdin/stdout/stderr (progress bars
    draw on the terminal as before) and wait for it: its exit code passes through (0; 2 after its
    one-line error; 130 after Ctrl-C); a death by signal becomes one line from `death_report`.

    Ctrl-C reaches the child by itself (the terminal signals the whole foreground process group):
    the parent ignores it and waits while the child stops cleanly. SIGTERM and SIGHUP, which are
    sent to the parent alone, are passed on. The child dies with the parent (`die_with_parent`).
    """
    import subprocess
    import tempfile

    fd, status = tempfile.mkstemp(prefix="isheep-status-", suffix=".json")
    os.close(fd)
    proc: Optional[subprocess.Popen] = None
    pending: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        if proc is None:
            pending.append(signum)
        else:
            proc.send_signal(signum)

    handlers = {signal.SIGINT: lambda signum, frame: None, signal.SIGTERM: forward, signal.SIGHUP: forward}
    try:
        # a signal ignored here (`nohup`, a background job) stays ignored, and so in the child too
        previous = {s: signal.signal(s, h) for s, h in handlers.items() if signal.getsignal(s) is not signal.SIG_IGN}
        try:
            proc = subprocess.Popen(_child_argv(), env={**os.environ, STATUS_ENV: status}, preexec_fn=die_with_parent())
            for signum in pending:
                proc.send_signal(signum)
            code = proc.wait()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        if code >= 0:
            return code
        line, code = death_report(-code, read_status(status), command)
        print(line, file=sys.stderr)
        return code
    finally:
        for path in (status, status + ".tmp"):
            Path(path).unlink(missing_ok=True)
