"""`isheep` command line. Every user error is one line on stderr and exit code 2 — no traceback.

`isheep run` and `isheep eval` do their work in a child process (this same command line again, run
under $ISHEEP_STATUS): llama.cpp can die by a signal (SIGSEGV decoding some quantised GGUFs on some
CPUs), which no Python code survives, so the parent waits and turns such a death into one line
naming the signal, the stage and the model, with what to change — exit code 1.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer

from .recipe import EvalConfig, UserError
from .store import STATUS_ENV, note_status, read_status
from .train import TrainingKilled

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=False,
    help="Iterative self-alignment (I-SHEEP) of small LLMs, on a CPU or one GPU.",
)
# `isheep eval` measures a model on the sets a run decides with, so its numbers compare with a run's.
EVAL = EvalConfig()


def _split_args(args: list[str]) -> tuple[Optional[str], list[str]]:
    """`[recipe.yaml] [section.key=value ...]` in any order."""
    paths = [a for a in args if "=" not in a]
    if len(paths) > 1:
        raise UserError(f"expected at most one recipe file, got {len(paths)}: {' '.join(paths)}")
    return (paths[0] if paths else None), [a for a in args if "=" in a]


def _supervised_recipe(command: str, args: Optional[List[str]]) -> Any:
    """The recipe of `isheep run`/`isheep data`, with the model noted for the supervisor's crash line."""
    from . import recipe

    path, overrides = _split_args(args or [])
    r = recipe.load(path, overrides)
    _note_engines()
    note_status(command=command, run_model=r.model.gguf if not r.model.converter else r.model.hf)
    return r


@app.command()
def run(
    args: Optional[List[str]] = typer.Argument(None, help="[RECIPE.yaml] [section.key=value ...]; no arguments = the default recipe"),
    force: bool = typer.Option(False, "--force", help="continue a run directory made by a different recipe"),
    json_log: Optional[str] = typer.Option(
        None, "--json-log", help="also write every event (stages, progress) as one JSON object per line to this file"
    ),
) -> None:
    """Run (or resume) the self-alignment loop."""
    from . import loop, progress

    if json_log:
        os.environ[progress.JSON_LOG_ENV] = str(Path(json_log).resolve())  # the training child writes to it too

    store = loop.run(_supervised_recipe("run", args), force=force)
    typer.echo(f"done: {store.root} (best model: {store.manifest.get('final_model')})")


@app.command()
def data(
    args: Optional[List[str]] = typer.Argument(None, help="[RECIPE.yaml] [section.key=value ...]; no arguments = the default recipe"),
    force: bool = typer.Option(False, "--force", help="continue a run directory made by a different recipe"),
) -> None:
    """The generation half only: instructions, answers, self-assessment and selection — a dataset, no training."""
    from . import loop

    store = loop.data(_supervised_recipe("data", args), force=force)
    kept = store.manifest["iterations"]["1"]["filter"]["kept"]
    typer.echo(f"done: {kept} pairs in {store.root / 'iter_01' / 'data'} (messages, ShareGPT, Alpaca JSONL and a dataset card)")


@app.command("eval")
def eval_cmd(
    model: str = typer.Argument(..., help="a GGUF path or embedded:smollm2-135m-instruct"),
    stop_prompts: int = typer.Option(EVAL.stop_prompts, help="held-out prompts for the stop rate (0 = skip)"),
    suite_prompts: int = typer.Option(EVAL.suite_prompts, help="instruction-following suite prompts (0 = skip; max 160)"),
    heldout_prompts: int = typer.Option(
        EVAL.heldout_prompts, help="the second instruction-following set, several constraints per prompt (0 = skip; max 80)"
    ),
    knowledge: int = typer.Option(EVAL.knowledge_questions, help="knowledge-probe questions: short factual answers (0 = skip; max 120)"),
    against: Optional[str] = typer.Option(None, help="a second GGUF: judge MODEL's answers against its answers, both orders"),
    judge: Optional[str] = typer.Option(None, help="the judge GGUF for --against (default: MODEL itself)"),
    backend: str = typer.Option("llama_cpp", help="llama_cpp | transformers (MODEL dequantised by transformers)"),
    server: Optional[str] = typer.Option(
        None,
        help="an OpenAI-compatible server serving MODEL, e.g. http://127.0.0.1:8080/v1: "
        "MODEL's answers are generated there (its chat template is read from MODEL)",
    ),
    served_name: Optional[str] = typer.Option(
        None, "--served-name", help="with --server: the model id the server lists, when it is not MODEL's file name (an alias)"
    ),
    parallel: int = typer.Option(16, help="sequences (or, with --server, requests) in flight at a time"),
    lora: Optional[List[str]] = typer.Option(
        None, "--lora", help="a GGUF LoRA adapter to apply to MODEL (repeatable, in order), e.g. runs/NAME/iter_01/adapter-f16.gguf"
    ),
) -> None:
    """Evaluate a GGUF on a run's evaluation sets (stop rate, the suite, the second set, the knowledge probe; greedy), optionally a pairwise verdict."""
    import json

    from . import evaluate, models, recipe
    from .serving import Engines, Served

    _note_engines()
    note_status(command="eval", run_model=model)
    engine = [f"model.backend={backend}", f"model.n_parallel={parallel}"]
    if server:
        engine = ["model.backend=openai", f"model.base_url={server}", f"model.n_parallel={parallel}"]
        engine += [f"model.served_name={served_name}"] if served_name else []
    sets = [
        f"eval.stop_prompts={stop_prompts}",
        f"eval.suite_prompts={suite_prompts}",
        f"eval.heldout_prompts={heldout_prompts}",
        f"eval.knowledge_questions={knowledge}",
    ]
    r = recipe.load(None, [*sets, *engine])
    served = Served(models.resolve_gguf(model), tuple(models.resolve_gguf(a) for a in lora or []))
    reference = None
    with Engines(r) as engines:
        if against:
            if not stop_prompts:
                raise recipe.UserError("--against judges the answers to the stop-rate prompts: --stop-prompts must be > 0")
            # the reference is only judged against on the stop-rate prompts: nothing else is evaluated on it
            only_stop = ["eval.suite_prompts=0", "eval.heldout_prompts=0", "eval.knowledge_questions=0"]
            rr = recipe.load(None, [f"eval.stop_prompts={stop_prompts}", *only_stop])
            with Engines(rr) as local:
                reference = evaluate.checks(Served(models.resolve_gguf(against)), rr, local)
        result = evaluate.checks(served, r, engines, reference, Served(models.resolve_gguf(judge)) if judge else None)
    result.pop("samples", None)
    result.get("ifeval", {}).pop("strict_pass", None)
    result.get("heldout", {}).pop("strict_pass", None)
    result.get("knowledge", {}).pop("correct", None)
    result.get("pairwise", {}).pop("verdicts", None)
    typer.echo(json.dumps(result))


@app.command()
def report(
    run_dir: str = typer.Argument(..., help="a run directory (runs/<name>)"),
    out: Optional[str] = typer.Option(None, help="output folder (default: RUN_DIR/report)"),
) -> None:
    """Write report.md and PNG plots of a run: scores, selection, training loss, evaluation, throughput."""
    from pathlib import Path

    from . import report as rp

    typer.echo(f"wrote {rp.write_report(Path(run_dir), Path(out) if out else None)}")


@app.command("export")
def export_cmd(
    run_dir: str = typer.Argument(..., help="a run directory (runs/<name>)"),
    quant: List[str] = typer.Option(..., "--quant", help="q8_0, q4_0, q4_k_m, q5_k_m or q6_k (repeatable)"),
    iteration: Optional[int] = typer.Option(None, help="which iteration's model (default: the run's best)"),
) -> None:
    """Quantise a finished run's model into more types, each with its Ollama Modelfile beside it."""
    from .reexport import reexport

    for q, path in reexport(Path(run_dir), iteration, quant).items():
        typer.echo(f"{q}: {path}")


@app.command()
def doctor(
    runs_dir: str = typer.Option("runs", help="where runs will be written (its free disk space is checked)"),
) -> None:
    """Check that a run can start here and say what it will run on: each finding with its fix (exit 2 if one is missing)."""
    from . import doctor as dr

    found = dr.findings(Path(runs_dir))
    for f in found:
        typer.echo(f.line())
    code = dr.exit_code(found)
    typer.echo("ready: `isheep run` can start" if code == 0 else "not ready: fix the ✗ lines above", err=code != 0)
    raise typer.Exit(code)


@app.command()
def recipe(
    args: Optional[List[str]] = typer.Argument(None, help="[RECIPE.yaml] [section.key=value ...]"),
    comments: bool = typer.Option(False, "--comments", help="every key with its documentation as a YAML comment"),
) -> None:
    """Print the fully resolved recipe (every default written out) after validating it."""
    from . import recipe as rc

    from .preflight import check_recipe

    path, overrides = _split_args(args or [])
    r = rc.load(path, overrides)
    check_recipe(r)
    typer.echo(rc.commented_yaml(r) if comments else rc.dump_yaml(r), nl=False)


@app.command()
def clean(
    paths: Optional[List[str]] = typer.Argument(None, help="run directories, or folders of them (default: ./runs)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list what would be removed; remove nothing"),
) -> None:
    """Remove what killed runs left behind: half-written temporaries in the model cache (their
    process gone) and in run directories no run is using."""
    from . import models, store

    folders = [Path(p) for p in paths] if paths else [p for p in [Path("runs")] if p.is_dir()]
    runs: list[Path] = []
    for folder in folders:
        if store.is_run_dir(folder):
            runs.append(folder)
        elif folder.is_dir():
            runs += sorted(d for d in folder.iterdir() if d.is_dir() and store.is_run_dir(d))
        else:
            raise UserError(f"{folder} is not a run directory or a folder of run directories")
    verb = "would remove" if dry_run else "removed"
    removed = store.reclaim_cache(models.cache_root(), dry_run)
    for run_dir in runs:
        found = store.reclaim_run_dir(run_dir, dry_run)
        if found is None:
            typer.echo(f"skipped {run_dir}: a run is using it")
        removed += found or []
    for path, size in removed:
        typer.echo(f"{verb} {path} ({store.human_bytes(size)})")
    total = sum(size for _, size in removed)
    n = f"{len(removed)} temporar{'y' if len(removed) == 1 else 'ies'}"
    if not removed:
        typer.echo("nothing to clean")
    elif dry_run:
        typer.echo(f"would reclaim {store.human_bytes(total)} ({total} bytes) in {n}; nothing removed (--dry-run)")
    else:
        typer.echo(f"reclaimed {store.human_bytes(total)} ({total} bytes) in {n}")


# ---- the supervisor of `isheep run` / `isheep eval` ---------------------------------------------
SUPERVISED = ("run", "eval", "data")
CRASHES = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT}


def _note_engines() -> None:
    """In a supervised child, note in the status file which model each engine serves (and while it
    loads), so a crash inside llama.cpp can be reported with its GGUF. serving.open_engine is wrapped
    here rather than edited: every engine the loop and `isheep eval` open goes through it."""
    import contextlib

    from . import serving

    opener = serving.open_engine
    if not os.environ.get(STATUS_ENV) or getattr(opener, "notes_status", False):
        return

    @contextlib.contextmanager
    def noting(model: Any, r: Any, backend: Optional[str] = None) -> Any:
        note_status(model=str(model.gguf), adapters=[str(a) for a in model.adapters], backend=backend or r.model.backend, loading=True)
        try:
            with opener(model, r, backend) as engine:
                note_status(loading=False)
                yield engine
        finally:
            note_status(model=None, adapters=[], backend=None, loading=False)

    noting.notes_status = True  # type: ignore[attr-defined]
    serving.open_engine = noting  # type: ignore[assignment]


def _die_with_parent() -> Any:
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
    it cannot be told. Read by skipping through the header (models.header_ints): gguf.GGUFReader
    takes seconds on a large vocabulary, and this runs while the user waits for the crash line."""
    from .models import header_ints

    file_type = header_ints(Path(gguf_path), ("general.file_type",)).get("general.file_type")
    return None if file_type is None else file_type not in (0, 1, 32)  # ALL_F32, MOSTLY_F16, MOSTLY_BF16


def death_report(signum: int, status: dict[str, Any], command: str, who: str = "") -> tuple[str, int]:
    """(the one line, the exit code) for a child that died by signal `signum`; `status` is what it
    last wrote to its status file (store.note_status); `who` names the process when it is not
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
    sent to the parent alone, are passed on. The child dies with the parent (`_die_with_parent`).
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
            proc = subprocess.Popen(_child_argv(), env={**os.environ, STATUS_ENV: status}, preexec_fn=_die_with_parent())
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


def main() -> None:
    if not sys.stdout.isatty():  # piped: plain lines, no third-party progress bars
        from .progress import quiet_third_party

        quiet_third_party()
    if len(sys.argv) > 1 and sys.argv[1] in SUPERVISED and not os.environ.get(STATUS_ENV):
        sys.exit(supervise(sys.argv[1]))
    try:
        app()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    except TrainingKilled as e:
        status = read_status(os.environ[STATUS_ENV]) if os.environ.get(STATUS_ENV) else {"stage": "train"}
        line, code = death_report(e.signum, status, sys.argv[1], who="the training process")
        print(line, file=sys.stderr)
        sys.exit(code)
    except SystemExit as e:
        if e.code == 130:  # typer turns Ctrl-C (KeyboardInterrupt) into a silent exit 130
            print("interrupted: rerun the same command to resume", file=sys.stderr)
        raise
