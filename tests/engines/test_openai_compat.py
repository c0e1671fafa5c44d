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
from helpers import NO_DECISION_SETS, REQUESTS, cli, conversations, same_texts

from isheep_lite.engines.base import Sampling
from isheep_lite.engines.llamacpp import Engine
from isheep_lite.engines.server import answers


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
    from isheep_lite.engines.openai_compat import OpenAIEngine

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
            [
                sys.executable,
                "-m",
                "isheep_lite",
                "eval",
                str(tiny["gguf"]),
                "--stop-prompts",
                "4",
                "--suite-prompts",
                "6",
                *NO_DECISION_SETS,
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )

    out = run("--server", server, "--parallel", "4")
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["prompts"] == 4 and result["mean_tokens"] > 0 and result["suite"]["prompts"] == 6
    assert 0 <= result["suite"]["strict"] <= result["suite"]["loose"] <= 1
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


@pytest.mark.slow
def test_the_loop_runs_on_a_server_it_starts_and_a_killed_server_loses_nothing(smol_hf: Path, tmp_path: Path) -> None:
    """Two iterations with model.backend=openai: the loop starts llama-cpp-python's server on each
    model it serves; the server is killed (SIGKILL) in the middle of iteration 1's responses, the
    loop starts it again and the stage ends with every instruction answered exactly once."""
    import os
    import signal

    from isheep_lite.engines import server as srv

    url = f"http://127.0.0.1:{_free_port()}/v1"
    port = url.split(":")[2].split("/")[0]
    serve = (
        f"{sys.executable} -m llama_cpp.server --model {{gguf}} --host 127.0.0.1 --port {port} --n_ctx 2048 --n_threads 2 --verbose false"
    )
    args = [
        f"runs_dir={tmp_path}",
        "name=served",
        "model.backend=openai",
        f"model.base_url={url}",
        f"model.serve_command={serve}",
        "model.serve_base=original",
        f"model.hf={smol_hf}",
        "model.n_parallel=2",
        "loop.iterations=2",
        "loop.promote=latest",
        "synth.num_instructions=4",
        "synth.verifiable_fraction=0",  # a handful of answers: a broken constraint could leave none to train on
        "synth.max_tokens=96",
        "synth.response_max_tokens=96",
        "train.epochs=1",
        "eval.stop_prompts=2",
        "eval.ifeval_prompts=0",
        "eval.suite_prompts=2",
        "eval.heldout_prompts=0",
        "eval.knowledge_questions=0",
        "eval.max_tokens=64",
        "eval.suite_max_tokens=64",
        "eval.pairwise=false",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:  # a file, not a pipe: nothing blocks the run while the test polls
        run = subprocess.Popen([sys.executable, "-m", "isheep_lite", "run", *args], env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    responses = tmp_path / "served" / "iter_01" / "responses.jsonl"
    try:
        deadline = time.time() + 600
        while not (responses.exists() and responses.read_text().count("\n") >= 1):
            assert run.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        os.kill(int(srv.pidfile(url).read_text()), signal.SIGKILL)
        run.wait(timeout=900)
        err = log.read_text()
    finally:
        run.kill()
        if srv.pidfile(url).exists():  # a failed test leaves no server behind
            with __import__("contextlib").suppress(OSError):
                os.kill(int(srv.pidfile(url).read_text()), signal.SIGKILL)
    assert run.returncode == 0, err[-3000:]
    assert "exited (code -9); starting it again" in err and err.count("top-20 log-probs: yes") == 1, err[-3000:]
    manifest = json.loads((tmp_path / "served" / "manifest.json").read_text())
    assert [manifest["iterations"][t]["promote"]["status"] for t in ("1", "2")] == ["done", "done"]
    answered = [json.loads(x)["id"] for x in responses.read_text().splitlines()]
    asked = [json.loads(x)["id"] for x in (tmp_path / "served" / "iter_01" / "instructions.jsonl").read_text().splitlines()]
    assert sorted(answered) == sorted(asked) and len(asked) == 4, "every instruction answered once: none lost, none twice"
    assert manifest["iterations"]["1"]["responses"]["responses"] == 4
    assert not srv.pidfile(url).exists() and not srv.answers(url), "the loop stops the server it started"


def test_a_server_that_serves_another_model_is_refused_in_one_line(server: str, smol_gguf: Path) -> None:
    def eval_on_server(*extra: str) -> subprocess.CompletedProcess:
        argv = ["eval", str(smol_gguf), "--server", server, *extra, "--stop-prompts", "1", "--suite-prompts", "0", *NO_DECISION_SETS]
        return subprocess.run([sys.executable, "-m", "isheep_lite", *argv], capture_output=True, text=True, timeout=300)

    out = eval_on_server()
    assert out.returncode == 2 and "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert f"not {smol_gguf.name}" in out.stderr and "--served-name" in out.stderr
    # Under the name it is served by, the same server is accepted.
    served = json.loads(urllib.request.urlopen(f"{server}/models").read())["data"][0]["id"]
    named = eval_on_server("--served-name", served)
    assert named.returncode == 0 and json.loads(named.stdout.strip().splitlines()[-1])["prompts"] == 1, named.stderr[-2000:]


# A stand-in for a server that answers completions but returns no log-probs (and ignores grammars).
NO_LOGPROBS_SERVER = """
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

model, port = sys.argv[1], int(sys.argv[2])

class Handler(BaseHTTPRequestHandler):
    def _send(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send({"object": "list", "data": [{"id": model, "object": "model"}]})

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self._send({"choices": [{"text": "Sure.", "finish_reason": "stop", "logprobs": None}], "usage": {"completion_tokens": 2}})

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def test_a_server_without_log_probs_is_refused_when_the_recipe_reads_them(tiny: dict[str, Path], tmp_path: Path) -> None:
    script = tmp_path / "no_logprobs_server.py"
    script.write_text(NO_LOGPROBS_SERVER)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/v1"

    def run(*extra: str) -> subprocess.CompletedProcess:
        args = [
            f"runs_dir={tmp_path / 'runs'}",
            "model.backend=openai",
            f"model.base_url={url}",
            f"model.serve_command={sys.executable} {script} {{gguf}} {port}",
            f"model.gguf={tiny['gguf']}",
            f"model.hf={tiny['hf']}",
            "model.serve_base=original",
            *extra,
        ]
        return subprocess.run([sys.executable, "-m", "isheep_lite", "run", *args], capture_output=True, text=True, timeout=300)

    out = run()
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "returns no top log-probs, which assess.mode=logprob reads; set assess.mode=generate" in out.stderr.strip().splitlines()[-1]
    assert "top-20 log-probs: no · GBNF grammars: no" in out.stderr
    grammar = run("assess.mode=grammar", "name=grammar")
    assert grammar.returncode == 2 and "does not apply GBNF grammars" in grammar.stderr.strip().splitlines()[-1], grammar.stderr[-2000:]
    from isheep_lite.engines import server as srv

    assert not srv.answers(url) and not srv.pidfile(url).exists(), "a refused run stops the server it started"


# A stand-in for vLLM's runtime-LoRA endpoints (vLLM itself needs a GPU): it serves "base-model",
# loads and unloads adapters by name, and logs every request it gets.
RUNTIME_LORA_SERVER = """
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

port, log = int(sys.argv[1]), Path(sys.argv[2])
models = ["base-model"]

class Handler(BaseHTTPRequestHandler):
    def _send(self, code, body):
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in models]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with log.open("a") as f:
            f.write(json.dumps({"path": self.path, **body}) + "\\n")
        if self.path == "/v1/load_lora_adapter":
            if body["lora_name"] in models:
                return self._send(400, "The lora adapter '%s' has already been loaded." % body["lora_name"])
            if not (Path(body["lora_path"]) / "adapter_config.json").is_file():
                return self._send(400, "no adapter at " + body["lora_path"])
            models.append(body["lora_name"])
            return self._send(200, "Success")
        if self.path == "/v1/unload_lora_adapter":
            models.remove(body["lora_name"])
            return self._send(200, "Success")
        if body.get("model") not in models:
            return self._send(404, "The model %s does not exist." % body.get("model"))
        top = {str(d): -float(d) for d in range(1, 10)}
        self._send(200, {"choices": [{"text": "Fine.", "finish_reason": "stop", "logprobs": {"top_logprobs": [top]}}]})

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def test_runtime_lora_loads_each_models_adapter_and_names_it_in_requests(tiny: dict[str, Path], tmp_path: Path) -> None:
    """model.serve_lora against a stand-in speaking vLLM's wire format (load/unload_lora_adapter,
    the adapter's name as the request's model): what the toolkit sends, not vLLM's answers."""
    from isheep_lite import recipe
    from isheep_lite.engines import serving
    from isheep_lite.recipe import UserError

    script, log, port = tmp_path / "lora_server.py", tmp_path / "requests.jsonl", _free_port()
    script.write_text(RUNTIME_LORA_SERVER)
    proc = subprocess.Popen([sys.executable, str(script), str(port), str(log)])
    url = f"http://127.0.0.1:{port}/v1"
    try:
        while not answers(url):
            assert proc.poll() is None
            time.sleep(0.1)
        lora = ["model.backend=openai", f"model.base_url={url}", "model.serve_lora=true"]
        with pytest.raises(UserError, match="model.served_name"):
            recipe.load(None, lora)
        with pytest.raises(UserError, match="loop.train_from=base"):
            recipe.load(None, [*lora, "model.served_name=base-model", "loop.train_from=previous"])
        r = recipe.load(None, [*lora, "model.served_name=base-model", "name=run"])
        (tmp_path / "iter_01" / "adapter").mkdir(parents=True)
        (tmp_path / "iter_01" / "adapter" / "adapter_config.json").write_text("{}")
        m1 = serving.Served(tiny["gguf"], (tmp_path / "iter_01" / "adapter-f16.gguf",))
        with serving.open_engine(serving.Served(tiny["gguf"]), r) as base:
            assert base.chat([{"role": "user", "content": "Hi"}], Sampling(max_tokens=4)).text == "Fine."
        with serving.open_engine(m1, r) as engine:
            engine.chat([{"role": "user", "content": "Hi"}], Sampling(max_tokens=4))
        # left loaded by a run killed before it could unload: the resumed run uses it as it is
        body = json.dumps({"lora_name": "run-iter_01", "lora_path": str(tmp_path / "iter_01" / "adapter")}).encode()
        urllib.request.urlopen(urllib.request.Request(f"{url}/load_lora_adapter", body, {"Content-Type": "application/json"})).read()
        with serving.open_engine(m1, r):
            pass
        missing = serving.Served(tiny["gguf"], (tmp_path / "iter_02" / "adapter-f16.gguf",))
        with pytest.raises(UserError, match="no adapter at .*LoRA enabled"):
            serving.open_engine(missing, r)
    finally:
        proc.terminate()
        proc.wait()
    sent = [json.loads(x) for x in log.read_text().splitlines()]
    loads = [x for x in sent if x["path"] == "/v1/load_lora_adapter"]
    assert loads[0] == {
        "path": "/v1/load_lora_adapter",
        "lora_name": "run-iter_01",
        "lora_path": str((tmp_path / "iter_01" / "adapter").resolve()),
    }
    asked = [x["model"] for x in sent if x["path"] == "/v1/completions"]
    assert asked[:3] == ["base-model"] * 3 and set(asked[3:]) == {"run-iter_01"}, asked
    assert [x["lora_name"] for x in sent if x["path"] == "/v1/unload_lora_adapter"] == ["run-iter_01"] * 2


def test_serve_commands_that_cannot_serve_are_refused_in_one_line(server: str, tiny: dict[str, Path], tmp_path: Path) -> None:
    from isheep_lite import recipe
    from isheep_lite.engines.server import ServerProcess, command_line
    from isheep_lite.recipe import UserError

    assert command_line("llama-server -m {gguf} --port 8080", Path("/a b/m.gguf")) == [
        "llama-server",
        "-m",
        "/a b/m.gguf",
        "--port",
        "8080",
    ]
    base = ["model.backend=openai", f"model.base_url={server}", f"runs_dir={tmp_path}"]
    for command, words in [
        ("no-such-server -m {gguf}", "no-such-server is not an installed program"),
        ("python -m llama_cpp.server --model m.gguf", "{gguf} in it"),
        ("python -c 'unclosed {gguf}", "cannot be split"),
    ]:
        out = cli("recipe", *base, f"model.serve_command={command}", cwd=tmp_path)
        assert out.returncode == 2 and words in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    # Something already answers on the port: the loop would health-check the wrong server.
    with pytest.raises(UserError, match="something already answers at"):
        ServerProcess(f"{sys.executable} -m llama_cpp.server --model {{gguf}}", tiny["gguf"], server, 10).start()
    # A command that exits before serving: its code and last line.
    dead = ServerProcess(
        f"{sys.executable} -c 'import sys; sys.exit(\"no GPU found {{gguf}}\")'", tiny["gguf"], f"http://127.0.0.1:{_free_port()}/v1", 60
    )
    with pytest.raises(UserError, match=r"exited with code 1 before serving: no GPU found"):
        dead.start()
    dead.close()
    assert recipe.load(None, [*base, "model.serve_command=python -m llama_cpp.server --model {gguf}"]).model.serve_command
