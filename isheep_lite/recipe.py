"""A recipe read and checked: YAML and dotted `section.key=value` overrides into the config
dataclasses, every problem one line (`UserError`) before any work starts, and back out as YAML.

The dataclass defaults (config.py) *are* the default recipe (what `isheep run` with no arguments
runs); `recipes/smollm2/135m_lora_cpu.yaml` writes them out with their comments.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any

import yaml

from isheep_lite.config import ASPECTS, EXPORT_TYPES, Recipe, choices, fields


class UserError(Exception):
    """Bad input from the user: the CLI prints the message as one line and exits with code 2."""


def _closest(name: str, options: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp` (as a string, from `from __future__ import annotations`)."""
    tp = str(tp)
    optional = "None" in tp
    if value is None:
        if optional:
            return None
        raise UserError(f"recipe: {where} may not be null")
    base = tp.replace(" | None", "")
    if base.startswith("Literal["):  # the value is checked against the choices by validate()
        base = "str"
    if base == "bool":
        if isinstance(value, bool):
            return value
    elif base == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base == "float":
        if isinstance(value, str):  # YAML 1.1 reads "2e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif base == "str":
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif base == "list[str]":
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    else:  # pragma: no cover - a new annotation kind must be added above
        raise TypeError(f"unsupported annotation {tp}")
    raise UserError(f"recipe: {where} must be {base}, got {value!r}")


def _apply(obj: Any, data: dict[str, Any], prefix: str = "") -> None:
    if not isinstance(data, dict):
        raise UserError(f"recipe: '{prefix.rstrip('.') or 'top level'}' must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in fields:
            raise UserError(f"recipe: unknown key '{where}'{_closest(str(key), fields)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _apply(current, value, where + ".")
        else:
            setattr(obj, key, _coerce(value, fields[key].type, where))


def parse_override(text: str) -> dict[str, Any]:
    """`synth.num_instructions=64` → {"synth": {"num_instructions": 64}} (value parsed as YAML)."""
    if "=" not in text:
        raise UserError(f"override '{text}' is not of the form section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"recipe file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"recipe {p}:{line} is not valid YAML ({getattr(e, 'problem', e)})") from None
    except UnicodeDecodeError:
        raise UserError(f"recipe {p} is not UTF-8 text") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"recipe {p} must be a YAML mapping at the top level")
    return data


def load(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Recipe:
    """Defaults, then the YAML file (if any), then each override, then validation."""
    layers = ([load_yaml(path)] if path is not None else []) + [parse_override(t) for t in overrides]
    return from_dict(*layers)


def from_dict(*layers: dict[str, Any]) -> Recipe:
    """Defaults with each mapping applied in turn, validated."""
    recipe = Recipe()
    for data in layers:
        _apply(recipe, data)
    validate(recipe)
    return recipe


def _range_error(value: float, m: dict[str, Any]) -> str | None:
    """The range a value breaks, written as the recipe's errors write it (`> 0`, `in (0, 1]`), else None."""
    lo, lo_open = (m["gt"], True) if m["gt"] is not None else (m["ge"], False)
    hi, hi_open = (m["lt"], True) if m["lt"] is not None else (m["le"], False)
    if (lo is None or value > lo or (value == lo and not lo_open)) and (hi is None or value < hi or (value == hi and not hi_open)):
        return None
    if hi is None:
        return f"{'>' if lo_open else '≥'} {lo:g}"
    return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def _check_fields(r: Recipe) -> None:
    """Every field against its declaration: Literal choices and knob ranges."""
    for section, key, f in fields(r):
        value, dotted = getattr(getattr(r, section) if section else r, key), f"{section}.{key}" if section else key
        options = choices(type(getattr(r, section)) if section else Recipe, key)
        if options is not None and value not in options:
            raise UserError(f"recipe: {dotted} must be one of {sorted(options)}, got '{value}'{_closest(value, options)}")
        if f.metadata and isinstance(value, (int, float)) and not isinstance(value, bool):
            if (broken := _range_error(value, dict(f.metadata))) is not None:
                nullable = " or null" if "None" in str(f.type) else ""
                raise UserError(f"recipe: {dotted} must be {broken}{nullable}, got {value}")


def validate(r: Recipe) -> None:
    """Each field against its declaration, then the rules between fields; raises UserError naming the first problem.

    Checks that need the machine or the model's files (installed backends, the GGUF's architecture,
    free disk) are preflight.check_recipe's, which `isheep recipe` and `isheep run` both call."""
    _check_fields(r)
    targets = r.train.target_modules
    if not (
        targets in ("auto", ["auto"])
        or (isinstance(targets, list) and targets and all(isinstance(t, str) and t and t != "auto" for t in targets))
    ):
        raise UserError(f"recipe: train.target_modules must be auto or a non-empty list of module names, got {targets!r}")
    if not 2 <= r.assess.scale <= 9:
        raise UserError(f"recipe: assess.scale must be 2..9 (one token per score), got {r.assess.scale}")
    if not r.assess.aspects or not set(r.assess.aspects) <= ASPECTS:
        raise UserError(f"recipe: assess.aspects must be a non-empty subset of {sorted(ASPECTS)}, got {r.assess.aspects}")
    if r.filter.min_score is not None and not 1 <= r.filter.min_score <= r.assess.scale:
        raise UserError(f"recipe: filter.min_score must be in 1..assess.scale or null, got {r.filter.min_score}")
    if r.filter.max_ifd is not None and not r.assess.ifd:
        raise UserError("recipe: filter.max_ifd needs assess.ifd: true and a value > 0")
    if r.filter.rank_by != "score" and not r.assess.ifd:
        raise UserError(f"recipe: filter.rank_by={r.filter.rank_by} needs assess.ifd: true")
    # (assess.calibrate only changes how grades are made: with no grades it has nothing to do)
    if not r.assess.enabled and (r.filter.keep_top is not None or r.filter.min_score is not None or r.assess.ifd):
        raise UserError(
            "recipe: assess.enabled: false selects by rule filters alone; set filter.keep_top: null, "
            "filter.min_score: null and assess.ifd: false"
        )
    if r.train.objective != "sft" and r.synth.responses_per_instruction < 2:
        raise UserError(
            f"recipe: train.objective={r.train.objective} learns from two answers to one instruction: "
            "set synth.responses_per_instruction ≥ 2"
        )
    if (r.train.batch_size * r.train.grad_accum) % r.train.processes:
        raise UserError(
            f"recipe: train.processes={r.train.processes} must divide the effective batch "
            f"train.batch_size × train.grad_accum = {r.train.batch_size * r.train.grad_accum}"
        )
    if r.train.processes > 1 and r.train.backend == "unsloth":
        raise UserError("recipe: Unsloth trains in one process; set train.backend=hf (or auto) for train.processes > 1")
    if r.synth.responses_per_instruction > 1 and not r.assess.enabled:
        raise UserError("recipe: synth.responses_per_instruction > 1 picks the best-graded answer: it needs assess.enabled: true")
    if r.model.backend == "openai" and not r.model.base_url:
        raise UserError("recipe: model.backend=openai needs model.base_url (e.g. http://127.0.0.1:8080/v1)")
    if r.model.serve_command is not None and (r.model.backend != "openai" or "{gguf}" not in r.model.serve_command):
        raise UserError(
            "recipe: model.serve_command starts an OpenAI-compatible server on {gguf}: it needs model.backend=openai and {gguf} in it"
        )
    if r.model.serve_lora and (r.model.backend != "openai" or r.model.serve_command or not r.model.served_name):
        raise UserError(
            "recipe: model.serve_lora loads adapters into a server you run: it needs model.backend=openai and "
            "model.served_name (the base model's id there), and no model.serve_command"
        )
    if r.model.serve_lora and (r.loop.train_from != "base" or r.export.mode == "merged"):
        raise UserError(
            "recipe: model.serve_lora serves M_t as M_0 + one adapter: it needs loop.train_from=base and export.mode auto or adapter"
        )
    if r.model.backend == "openai" and r.assess.ifd:
        raise UserError("recipe: assess.ifd needs per-token log-probs, which model.backend=openai does not offer")
    if r.model.backend == "transformers" and r.assess.mode == "grammar":
        raise UserError("recipe: model.backend=transformers has no grammar sampling; use assess.mode logprob or generate")
    if r.filter.min_words > r.filter.max_words:
        raise UserError("recipe: filter.min_words must be ≤ filter.max_words")
    if not r.export.types or r.export.types[0] not in {"f16", "f32"}:
        raise UserError(f"recipe: export.types must start with f16 or f32 (the master export), got {r.export.types}")
    for t in r.export.types:
        if t not in EXPORT_TYPES:
            raise UserError(f"recipe: unknown export type '{t}'{_closest(t, EXPORT_TYPES)}; choose from {sorted(EXPORT_TYPES)}")
    if not r.name or "/" in r.name or r.name.startswith("."):
        raise UserError(f"recipe: name must be a plain directory name, got '{r.name}'")


def dump_yaml(r: Recipe) -> str:
    return yaml.safe_dump(r.to_dict(), sort_keys=False, allow_unicode=True)


COMMENT_COLUMN, LINE_WIDTH = 39, 140


def _scalar(value: Any) -> str:
    """One value as inline YAML (`null`, `[f16, q8_0]`, `1.0e-04`)."""
    if isinstance(value, float) and value != 0 and abs(value) < 1e-3:
        return f"{value:.1e}"
    return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).removesuffix("...\n").strip()


def commented_yaml(r: Recipe | None = None) -> str:
    """The recipe as YAML, each key with its field's doc as a comment (after the value, or above the
    key when the line would pass LINE_WIDTH). The shipped default recipe is this text for the
    defaults under a header comment (a test holds them equal); `isheep recipe --comments` prints it."""
    import textwrap

    r = r or Recipe()
    lines: list[str] = []
    section = ""
    for sec, key, f in fields(r):
        if sec != section:
            lines.append(f"{sec}:")
            section = sec
        indent = "  " if sec else ""
        entry = f"{indent}{key}: {_scalar(getattr(getattr(r, sec) if sec else r, key))}"
        doc = f.metadata.get("doc", "")
        inline = f"{entry.ljust(COMMENT_COLUMN - 1)} # {doc}" if doc else entry
        if len(inline) <= LINE_WIDTH:
            lines.append(inline)
        else:
            lines += textwrap.wrap(doc, LINE_WIDTH - len(indent) - 2, initial_indent=f"{indent}# ", subsequent_indent=f"{indent}# ")
            lines.append(entry)
    return "\n".join(lines) + "\n"
