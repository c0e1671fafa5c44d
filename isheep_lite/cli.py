"""`isheep` command line. Every user error is one line on stderr and exit code 2 — no traceback."""
from __future__ import annotations

import sys
from typing import List, Optional

import typer

from .recipe import UserError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=False,
                  help="Iterative self-alignment (I-SHEEP) of small LLMs, on a CPU or one GPU.")


def _split_args(args: list[str]) -> tuple[Optional[str], list[str]]:
    """`[recipe.yaml] [section.key=value ...]` in any order."""
    paths = [a for a in args if "=" not in a]
    if len(paths) > 1:
        raise UserError(f"expected at most one recipe file, got {len(paths)}: {' '.join(paths)}")
    return (paths[0] if paths else None), [a for a in args if "=" in a]


@app.command()
def run(
    args: Optional[List[str]] = typer.Argument(None, help="[RECIPE.yaml] [section.key=value ...]; no arguments = the default recipe"),
    force: bool = typer.Option(False, "--force", help="continue a run directory made by a different recipe"),
) -> None:
    """Run (or resume) the self-alignment loop."""
    from . import loop, recipe

    path, overrides = _split_args(args or [])
    r = recipe.load(path, overrides)
    store = loop.run(r, force=force)
    typer.echo(f"done: {store.root} (best model: {store.manifest.get('final_model')})")


@app.command("eval")
def eval_cmd(
    model: str = typer.Argument(..., help="a GGUF path or embedded:smollm2-135m-instruct"),
    stop_prompts: int = typer.Option(20, help="held-out prompts for the stop rate (0 = skip)"),
    suite_prompts: int = typer.Option(40, help="instruction-following suite prompts (0 = skip; max 160)"),
    against: Optional[str] = typer.Option(None, help="a second GGUF: judge MODEL's answers against its answers, both orders"),
    judge: Optional[str] = typer.Option(None, help="the judge GGUF for --against (default: MODEL itself)"),
    backend: str = typer.Option("llama_cpp", help="llama_cpp | transformers (MODEL dequantised by transformers)"),
    server: Optional[str] = typer.Option(None, help="an OpenAI-compatible server serving MODEL, e.g. http://127.0.0.1:8080/v1: "
                                                   "MODEL's answers are generated there (its chat template is read from MODEL)"),
    parallel: int = typer.Option(16, help="sequences (or, with --server, requests) in flight at a time"),
    lora: Optional[List[str]] = typer.Option(None, "--lora", help="a GGUF LoRA adapter to apply to MODEL (repeatable, in order), "
                                                                  "e.g. runs/NAME/iter_01/adapter-f16.gguf"),
) -> None:
    """Evaluate a GGUF: stop rate, instruction-following accuracy, optionally a pairwise verdict (greedy, held-out prompts)."""
    import json

    from . import loop, models, recipe

    engine = [f"model.backend={backend}", f"model.n_parallel={parallel}"]
    if server:
        engine = ["model.backend=openai", f"model.base_url={server}", f"model.n_parallel={parallel}"]
    r = recipe.load(None, [f"eval.stop_prompts={stop_prompts}", f"eval.suite_prompts={suite_prompts}", *engine])
    served = loop.Served(models.resolve_gguf(model), tuple(models.resolve_gguf(a) for a in lora or []))
    reference = None
    if against:
        if not stop_prompts:
            raise recipe.UserError("--against judges the answers to the stop-rate prompts: --stop-prompts must be > 0")
        rr = recipe.load(None, [f"eval.stop_prompts={stop_prompts}", "eval.suite_prompts=0"])
        reference = loop.checks(loop.Served(models.resolve_gguf(against)), rr)
    result = loop.checks(served, r, reference, loop.Served(models.resolve_gguf(judge)) if judge else None)
    result.pop("samples", None)
    result.get("ifeval", {}).pop("strict_pass", None)
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


@app.command()
def recipe(
    args: Optional[List[str]] = typer.Argument(None, help="[RECIPE.yaml] [section.key=value ...]"),
) -> None:
    """Print the fully resolved recipe (every default written out) after validating it."""
    from . import recipe as rc

    from .loop import check_model

    path, overrides = _split_args(args or [])
    r = rc.load(path, overrides)
    check_model(r)
    typer.echo(rc.dump_yaml(r), nl=False)


def main() -> None:
    try:
        app()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
