"""A server the loop runs itself: `model.serve_command` on the GGUF of the model being served.

Why: an OpenAI-compatible server (llama-server, llama-cpp-python's server, vLLM) serves one model,
and the loop makes a new one every iteration. With a serve command the loop starts the server on
M_0's GGUF, waits until it answers, stops it before training and export (a resident server holds
the memory those need: the one-model-at-a-time rule of serving.py) and starts it again on M_t. A
server that dies during a stage is started again by the HTTP engine's retry (`ensure_running`), so
the stage goes on with nothing lost: every request is retried until it is answered once.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from isheep_lite.recipe import UserError


def command_line(template: str, gguf: Path) -> list[str]:
    """The serve command for one GGUF: the template split as a shell would, `{gguf}` filled in each
    word (after splitting, so a path with spaces stays one argument)."""
    return [word.replace("{gguf}", str(gguf)) for word in shlex.split(template)]


def check_command(template: str) -> None:
    """Refuse a serve command that cannot be split or whose program is not installed."""
    try:
        argv = command_line(template, Path("model.gguf"))
    except ValueError as e:
        raise UserError(f"model.serve_command cannot be split into words: {e}") from None
    if not argv or shutil.which(argv[0]) is None:
        raise UserError(f"model.serve_command: {argv[0] if argv else '(empty)'} is not an installed program")


def answers(base_url: str, timeout_s: float = 2.0) -> bool:
    """Whether something answers `GET <base_url>/models` (every OpenAI-compatible server has it)."""
    try:
        with urllib.request.urlopen(f"{base_url.rstrip('/')}/models", timeout=timeout_s) as r:
            r.read()
        return True
    except Exception:
        return False


def pidfile(base_url: str) -> Path:
    """Where the process id of the server the loop runs at `base_url` is kept while it runs: a loop
    killed outright (SIGKILL, a lost terminal) leaves its server running, and the resumed run stops it."""
    import hashlib

    return Path(tempfile.gettempdir()) / f"isheep-server-{hashlib.sha1(base_url.encode()).hexdigest()[:12]}.pid"


class ServerProcess:
    """The serve command on one GGUF: `start` runs it and waits until `base_url` answers;
    `ensure_running` starts it again if it has exited; `stop` ends it (and its log)."""

    def __init__(self, template: str, gguf: Path, base_url: str, timeout_s: float) -> None:
        self.argv, self.gguf, self.base_url, self.timeout_s = command_line(template, gguf), gguf, base_url, timeout_s
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self._lock = threading.Lock()
        fd, name = tempfile.mkstemp(prefix="isheep-server-", suffix=".log")
        os.close(fd)
        self.log = Path(name)

    def _last_line(self) -> str:
        lines = [x for x in self.log.read_text(errors="replace").splitlines() if x.strip()]
        return lines[-1].strip()[:300] if lines else "no output"

    @property
    def pidfile(self) -> Path:
        return pidfile(self.base_url)

    def _stop_orphan(self) -> None:
        """Stop the server a killed loop left at this base_url (the process named in the pidfile,
        if it still runs this serve command's program)."""
        try:
            pid = int(self.pidfile.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if Path(self.argv[0]).name.encode() in {Path(os.fsdecode(w)).name.encode() for w in cmdline}:
            os.kill(pid, signal.SIGTERM)
            for _ in range(120):
                if not Path(f"/proc/{pid}").exists() or not answers(self.base_url, 0.5):
                    break
                time.sleep(0.25)
        self.pidfile.unlink(missing_ok=True)

    def start(self) -> None:
        if self.starts == 0:
            self._stop_orphan()
        if self.starts == 0 and answers(self.base_url):
            raise UserError(
                f"something already answers at {self.base_url}, where model.serve_command starts its own server: "
                "stop it, or give the command and model.base_url another port"
            )
        self.starts += 1
        with self.log.open("ab") as out:
            try:
                # its own session: Ctrl-C in the terminal reaches the loop, which stops the server itself
                self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
            except OSError as e:
                raise UserError(f"model.serve_command cannot start: {e}") from None
        self.pidfile.write_text(str(self.proc.pid))
        deadline = time.monotonic() + self.timeout_s
        while not answers(self.base_url, 1.0):
            if self.proc.poll() is not None:
                raise UserError(f"model.serve_command exited with code {self.proc.returncode} before serving: {self._last_line()}")
            if time.monotonic() > deadline:
                self.stop()
                raise UserError(
                    f"model.serve_command did not answer at {self.base_url} within {self.timeout_s:.0f} s (model.serve_timeout_s)"
                )
            time.sleep(0.25)

    def ensure_running(self) -> None:
        """Start the server again if it has exited (called by a request that could not reach it;
        concurrent callers start it once)."""
        with self._lock:
            if self.proc is not None and self.proc.poll() is not None:
                print(
                    f"the server on {self.gguf.name} exited (code {self.proc.returncode}); starting it again", file=sys.stderr, flush=True
                )
                self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self.pidfile.unlink(missing_ok=True)

    def close(self) -> None:
        self.stop()
        self.log.unlink(missing_ok=True)
