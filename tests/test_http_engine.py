"""http_engine.py: the OpenAI-compatible HTTP backend, tested against llama-cpp-python's own
OpenAI-compatible server, started on 127.0.0.1 inside the test."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import REQUESTS, conversations, same_texts

from isheep_lite.engine import Engine, Sampling


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny: dict[str, Path]):
    """llama-cpp-python's OpenAI-compatible server on the tiny GGUF (the `server` extra of the test deps)."""
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(tiny["gguf"]),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "1024",
        "--n_threads",
        "2",
        "--verbose",
        "false",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited: {proc.stderr.read()[-2000:]}")
            try:
                urllib.request.urlopen(f"{url}/models", timeout=1).read()
                break
            except OSError:
                time.sleep(0.25)
        else:
            raise RuntimeError("llama_cpp.server did not start in 60 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def http_engine(server: str, tiny: dict[str, Path]):
    from isheep_lite.http_engine import OpenAIEngine

    with OpenAIEngine(server, tiny["gguf"], n_parallel=4) as e:
        yield e


def test_http_greedy_matches_the_local_engine(tiny_engine: Engine, http_engine) -> None:
    greedy = [Sampling(max_tokens=24)] * len(REQUESTS)
    remote, local = http_engine.chat_many(conversations(), greedy), tiny_engine.chat_many(conversations(), greedy)
    assert all(c.n_tokens > 0 for c in remote)
    assert same_texts(remote, local) >= 0.9 * len(REQUESTS), [(a.text, b.text) for a, b in zip(remote, local)]


def test_http_sampling_seeds_limits_stops_and_grammar(http_engine) -> None:
    samplings = [Sampling(temperature=1.0, top_p=0.9, max_tokens=n, seed=s) for s, n in zip(range(8), [3, 9, 5, 12, 1, 7, 4, 10])]
    first = http_engine.chat_many(conversations(), samplings)
    assert [c.text for c in first] == [c.text for c in http_engine.chat_many(conversations(), samplings)]
    for c, s in zip(first, samplings):
        assert c.n_tokens <= s.max_tokens and (c.finish_reason == "stop" or c.n_tokens == s.max_tokens)
    long = http_engine.chat(conversations()[3], Sampling(temperature=1.0, max_tokens=12, seed=3))
    cut = long.text[4:6]
    stopped = http_engine.chat(conversations()[3], Sampling(temperature=1.0, max_tokens=12, seed=3, stop=(cut,)))
    assert cut not in stopped.text and long.text.startswith(stopped.text)
    digit = http_engine.complete("Score: ", Sampling(max_tokens=1, grammar="root ::= [1-9]"))
    assert digit.text in list("123456789")


def test_http_scores_read_the_servers_top_logprobs(tiny_engine: Engine, http_engine) -> None:
    import numpy as np

    prompt = "Question: why is the sky blue?\nScore: "
    every = list(range(tiny_engine.llm.n_vocab()))
    local = np.array(tiny_engine.score_many([prompt], every)[0])
    top = [int(t) for t in np.argsort(-local)[:3]]
    remote = http_engine.score_many([prompt], top + [int(np.argmin(local))])[0]
    assert max(abs(a - b) for a, b in zip(remote[:3], local[top])) < 1e-3
    assert remote[3] >= local.min(), "a token outside the top 20 gets the 20th log-prob, an upper bound"
    with pytest.raises(Exception, match="IFD"):
        http_engine.completion_logprobs([prompt], ["x"])


@pytest.mark.slow
def test_isheep_eval_runs_on_a_server(server: str, tiny: dict[str, Path]) -> None:
    def run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "isheep_lite", "eval", str(tiny["gguf"]), "--stop-prompts", "4", "--suite-prompts", "6", *extra],
            capture_output=True,
            text=True,
            timeout=600,
        )

    out = run("--server", server, "--parallel", "4")
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["prompts"] == 4 and result["mean_tokens"] > 0 and result["ifeval"]["prompts"] == 6
    assert 0 <= result["ifeval"]["strict"] <= result["ifeval"]["loose"] <= 1
    # The answers really come from the server: with none listening, the same command fails in one line.
    dead = run("--server", f"http://127.0.0.1:{_free_port()}/v1")
    assert dead.returncode == 2 and "cannot reach" in dead.stderr and "Traceback" not in dead.stderr


def test_the_loop_refuses_the_http_backend(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "isheep_lite",
            "run",
            "model.backend=openai",
            "model.base_url=http://127.0.0.1:9/v1",
            f"runs_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "isheep eval" in out.stderr and "Traceback" not in out.stderr
    assert not any(tmp_path.iterdir())
