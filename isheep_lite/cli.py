"""`isheep` command line. Every user error is one line on stderr and exit code 2 — no traceback.

`isheep run` and `isheep eval` do their work in a child process (this same command line again, run
under $ISHEEP_STATUS): llama.cpp can die by a signal (SIGSEGV decoding some quantised GGUFs on some
CPUs), which no Python code survives, so the parent waits and turns such a death into one line
naming the signal, the stage and the model, with what to change — exit code 1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer

from isheep_lite.config import EvalConfig
from isheep_lite.process import STATUS_ENV, SUPERVISED, death_report, note_status, read_status, supervise
from isheep_lite.recipe import UserError
from isheep_lite.training.train import TrainingKilled

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
    from isheep_lite import recipe

    path, overrides = _split_args(args or [])
    r = recipe.load(path, overrides)
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
    from isheep_lite import loop, progress

    if json_log:
        os.environ[progress.JSON_LOG_ENV] = str(Path(json_log).resolve())  # the training child writes to it too

    store = loop.run(_supervised_recipe("run", args), force=force)
    typer.echo(f"done: {store.root} (best model: {store.manifest.get('final_model')})")
    typer.echo(f"report: {_report(store.root)} — every instruction, answer, grade and evaluation answer, in a browser")


@app.command()
def data(
    args: Optional[List[str]] = typer.Argument(None, help="[RECIPE.yaml] [section.key=value ...]; no arguments = the default recipe"),
    force: bool = typer.Option(False, "--force", help="continue a run directory made by a different recipe"),
) -> None:
    """The generation half only: instructions, answers, self-assessment and selection — a dataset, no training."""
    from isheep_lite import loop

    store = loop.data(_supervised_recipe("data", args), force=force)
    kept = store.manifest["iterations"]["1"]["filter"]["kept"]
    typer.echo(f"done: {kept} pairs in {store.root / 'iter_01' / 'data'} (messages, ShareGPT, Alpaca JSONL and a dataset card)")


@app.command("eval")
def eval_cmd(
    model: str = typer.Argument(..., help="a GGUF path or embedded:smollm2-135m-instruct"),
    stop_prompts: int = typer.Option(EVAL.stop_prompts, help="held-out prompts for the stop rate (0 = skip)"),
    ifeval_prompts: int = typer.Option(
        EVAL.ifeval_prompts, help="IFEval prompts, lm-evaluation-harness's checker (541 = all; fewer: a stratified subset; 0 = skip)"
    ),
    suite_prompts: int = typer.Option(EVAL.suite_prompts, help="the quick instruction-following suite's prompts (0 = skip; max 160)"),
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
    """Evaluate a GGUF on a run's evaluation sets (stop rate, IFEval, the suite, the second set, the knowledge probe; greedy), optionally a pairwise verdict."""
    import json

    from isheep_lite import recipe
    from isheep_lite.engines.serving import Engines, Served
    from isheep_lite.evals import measure
    from isheep_lite.gguf import header

    note_status(command="eval", run_model=model)
    engine = [f"model.backend={backend}", f"model.n_parallel={parallel}"]
    if server:
        engine = ["model.backend=openai", f"model.base_url={server}", f"model.n_parallel={parallel}"]
        engine += [f"model.served_name={served_name}"] if served_name else []
    sets = [
        f"eval.stop_prompts={stop_prompts}",
        f"eval.ifeval_prompts={ifeval_prompts}",
        f"eval.suite_prompts={suite_prompts}",
        f"eval.heldout_prompts={heldout_prompts}",
        f"eval.knowledge_questions={knowledge}",
    ]
    r = recipe.load(None, [*sets, *engine])
    for named in (model, against, judge):  # each checked before any work: in the matrix (archs.py), with a chat template
        if named:
            header.check_arch(header.resolve_gguf(named))
    served = Served(header.resolve_gguf(model), tuple(header.resolve_gguf(a) for a in lora or []))
    reference = None
    with Engines(r) as engines:
        if against:
            if not stop_prompts:
                raise recipe.UserError("--against judges the answers to the stop-rate prompts: --stop-prompts must be > 0")
            # the reference is only judged against on the stop-rate prompts: nothing else is evaluated on it
            only_stop = ["eval.ifeval_prompts=0", "eval.suite_prompts=0", "eval.heldout_prompts=0", "eval.knowledge_questions=0"]
            rr = recipe.load(None, [f"eval.stop_prompts={stop_prompts}", *only_stop])
            with Engines(rr) as local:
                reference = measure.checks(Served(header.resolve_gguf(against)), rr, local)
        result = measure.checks(served, r, engines, reference, Served(header.resolve_gguf(judge)) if judge else None)
    result.pop("samples", None)
    per_prompt = ("answers", "keys", "trained", "per_prompt_strict", "per_prompt_loose", "strict_pass", "loose_pass")
    for part in result.values():  # the figures; the per-prompt lists are a run's (iter_NN/eval.json)
        for key in (*per_prompt, "constraints_kept", "correct", "verdicts"):
            part.pop(key, None) if isinstance(part, dict) else None
    typer.echo(json.dumps(result))


@app.command()
def report(
    run_dir: str = typer.Argument(..., help="a run directory (runs/<name>)"),
    out: Optional[str] = typer.Option(None, help="output folder (default: RUN_DIR/report)"),
    open_: bool = typer.Option(False, "--open", help="open the run page in the default browser"),
) -> None:
    """Write report.md, PNG plots and the run page (index.html: every instruction, answer, grade and
    evaluation answer, to filter, sort and compare) of a run."""
    page = _report(Path(run_dir), Path(out) if out else None)
    typer.echo(f"wrote {page.parent / 'report.md'} and {page}")
    if open_:
        import webbrowser

        if not webbrowser.open(page.resolve().as_uri()):
            typer.echo(f"no browser found: open {page} yourself")


def _report(run_dir: Path, out: Optional[Path] = None) -> Path:
    """The run's report written (report.md, plots, index.html); the run page's path."""
    from isheep_lite.rundir import page, report as rp

    return rp.write_report(run_dir, out).parent / page.PAGE


@app.command("export")
def export_cmd(
    run_dir: str = typer.Argument(..., help="a run directory (runs/<name>)"),
    quant: List[str] = typer.Option(..., "--quant", help="q8_0, q4_0, q4_k_m, q5_k_m or q6_k (repeatable)"),
    iteration: Optional[int] = typer.Option(None, help="which iteration's model (default: the run's best)"),
) -> None:
    """Quantise a finished run's model into more types, each with its Ollama Modelfile beside it."""
    from isheep_lite.gguf.reexport import reexport

    for q, path in reexport(Path(run_dir), iteration, quant).items():
        typer.echo(f"{q}: {path}")


@app.command()
def doctor(
    runs_dir: str = typer.Option("runs", help="where runs will be written (its free disk space is checked)"),
) -> None:
    """Check that a run can start here and say what it will run on: each finding with its fix (exit 2 if one is missing)."""
    from isheep_lite import doctor as dr

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
    from isheep_lite import recipe as rc
    from isheep_lite.preflight import check_recipe

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
    from isheep_lite.gguf import header
    from isheep_lite.rundir import files

    folders = [Path(p) for p in paths] if paths else [p for p in [Path("runs")] if p.is_dir()]
    runs: list[Path] = []
    for folder in folders:
        if files.is_run_dir(folder):
            runs.append(folder)
        elif folder.is_dir():
            runs += sorted(d for d in folder.iterdir() if d.is_dir() and files.is_run_dir(d))
        else:
            raise UserError(f"{folder} is not a run directory or a folder of run directories")
    verb = "would remove" if dry_run else "removed"
    removed = files.reclaim_cache(header.cache_root(), dry_run)
    for run_dir in runs:
        found = files.reclaim_run_dir(run_dir, dry_run)
        if found is None:
            typer.echo(f"skipped {run_dir}: a run is using it")
        removed += found or []
    for path, size in removed:
        typer.echo(f"{verb} {path} ({files.human_bytes(size)})")
    total = sum(size for _, size in removed)
    n = f"{len(removed)} temporar{'y' if len(removed) == 1 else 'ies'}"
    if not removed:
        typer.echo("nothing to clean")
    elif dry_run:
        typer.echo(f"would reclaim {files.human_bytes(total)} ({total} bytes) in {n}; nothing removed (--dry-run)")
    else:
        typer.echo(f"reclaimed {files.human_bytes(total)} ({total} bytes) in {n}")


def main() -> None:
    if not sys.stdout.isatty():  # piped: plain lines, no third-party progress bars
        from isheep_lite.progress import quiet_third_party

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
