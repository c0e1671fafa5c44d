"""A model as it is served (a GGUF plus GGUF LoRA adapters), the engine that serves it, and the
one-model-at-a-time rule.

Why a pool of one: an iteration generates with the best model so far, grades with it (or M_0),
trains, evaluates M_t and judges it with M_0. Two 8B models at the planned context do not fit a
24 GB card together, and a resident engine during training or export takes the memory those need.
`Engines` keeps at most one engine loaded, reuses it while consecutive stages serve the same model,
and releases it before a stage that needs the memory.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from isheep_lite.config import Recipe
from isheep_lite.engines.base import EngineBase
from isheep_lite.engines.llamacpp import Engine
from isheep_lite.process import note_status
from isheep_lite.recipe import UserError


@dataclass(frozen=True)
class Served:
    """A model as it is generated from: a GGUF, plus GGUF LoRA adapters llama.cpp applies at load
    time (export.mode=adapter: M_t = served base + Δ_t, or + every Δ of its chain with train_from=previous)."""

    gguf: Path
    adapters: tuple[Path, ...] = ()

    def __str__(self) -> str:
        return " + ".join(str(p) for p in (self.gguf, *self.adapters))

    @property
    def name(self) -> str:
        """The folder of the file that makes this model what it is (its last adapter, else its GGUF): `iter_01`."""
        return (self.adapters or (self.gguf,))[-1].parent.name

    def to_dict(self) -> dict[str, Any]:
        return {"gguf": str(self.gguf), "adapters": [str(a) for a in self.adapters]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Served":
        return cls(Path(d["gguf"]), tuple(Path(a) for a in d.get("adapters", [])))


def open_engine(model: Served, r: Recipe, backend: str | None = None) -> EngineBase:
    """The recipe's backend (or `backend`) serving `model` (openai: the server at model.base_url serves it).

    Every engine the toolkit opens is made here."""
    m, backend, gguf = r.model, backend or r.model.backend, model.gguf
    if model.adapters and backend != "llama_cpp" and not (backend == "openai" and r.model.serve_lora):
        raise UserError(
            f"GGUF LoRA adapters (export.mode=adapter) are applied by llama.cpp: use model.backend=llama_cpp, "
            f"or export.mode=merged with model.backend={backend}"
        )
    if backend == "transformers":
        from isheep_lite.engines.hf import HFEngine

        return HFEngine(gguf, m.n_parallel, m.n_threads)
    if backend == "openai":
        return _open_server(model, r)
    return Engine(gguf, m.n_ctx, m.n_threads, m.n_parallel, m.kv_budget_gb, adapters=model.adapters)


def _open_server(model: Served, r: Recipe) -> EngineBase:
    """The HTTP engine on the server at model.base_url: the one the loop starts on `model` with
    model.serve_command; one the user runs that loads `model`'s LoRA adapter at run time
    (model.serve_lora); else one the user runs, which must serve `model`. A loop's server is checked
    up front for what its self-assessment mode reads."""
    from isheep_lite.engines.openai_compat import OpenAIEngine
    from isheep_lite.engines.server import ServerProcess

    m = r.model
    server = ServerProcess(m.serve_command, model.gguf, str(m.base_url), m.serve_timeout_s) if m.serve_command else None
    # runtime LoRA: M_t = M_0 + Δ_t, the PEFT adapter training wrote beside the GGUF one (iter_NN/adapter/)
    lora = (f"{r.name}-{model.name}", model.adapters[-1].parent / "adapter") if m.serve_lora and model.adapters else None
    try:
        if server is not None:
            server.start()
        engine = OpenAIEngine(str(m.base_url), model.gguf, m.n_parallel, m.served_name, retry_s=m.retry_s, server=server, lora=lora)
    except BaseException:
        if server is not None:
            server.close()
        raise
    if (server is not None or m.serve_lora) and r.assess.enabled:
        with contextlib.ExitStack() as undo:
            undo.callback(engine.close)
            engine.require(logprobs=r.assess.mode == "logprob", grammar=r.assess.mode == "grammar")
            undo.pop_all()
    return engine


class Engines:
    """At most one loaded engine: `get` returns the engine serving `model`, loading it (and closing
    any other first) only when it is not the one already loaded; `release` frees it."""

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self._key: tuple[Served, str] | None = None
        self._engine: EngineBase | None = None
        self._stack = contextlib.ExitStack()

    def get(self, model: Served, backend: str | None = None) -> EngineBase:
        key = (model, backend or self.recipe.model.backend)
        if key != self._key or self._engine is None:
            self.release()
            # a supervised child notes which GGUF it serves (and while it loads), so a crash inside
            # llama.cpp is reported with its file (process.death_report)
            note_status(model=str(model.gguf), adapters=[str(a) for a in model.adapters], backend=key[1], loading=True)
            self._stack.callback(note_status, model=None, adapters=[], backend=None, loading=False)
            self._engine = self._stack.enter_context(open_engine(model, self.recipe, backend))
            note_status(loading=False)
            self._key = key
        return self._engine

    def release(self) -> None:
        self._key, self._engine = None, None
        self._stack.close()
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "Engines":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
