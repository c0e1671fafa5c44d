"""An Ollama Modelfile next to each exported GGUF: FROM, the chat template as a Go template, the
stop tokens, the default system prompt and the recipe's sampling defaults.

Why derived, not looked up: the Go template is read off the model's own chat template (the Jinja in
its GGUF) by rendering probe conversations with marker strings and cutting out what each role adds
before and after its content. The result is then checked — rendered here with Go-template
semantics for several conversations and compared with the Jinja rendering, character for
character — and written only if it matches. Where a template does not decompose into per-role
blocks (Gemma folds the system prompt into the first user turn), the system role is left out and
the check repeated without it; where even that fails, the Modelfile has no TEMPLATE and Ollama
falls back to its own detection from the GGUF. Stop tokens are what ends an assistant turn and
what starts the next one: without them an exported model never stops (the commonest complaint
about models imported into Ollama).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from isheep_lite.config import Recipe
from isheep_lite.gguf.chat import render_chat
from isheep_lite.gguf.header import GgufInfo, gguf_info
from isheep_lite.rundir.files import atomic_write_text

_S, _U, _A = "\x01SYS\x01", "\x01USER\x01", "\x01ASSISTANT\x01"


@dataclass(frozen=True)
class Blocks:
    """What the template writes around each role's content, and where a conversation starts and ends."""

    start: str  # before the first message (a printed BOS)
    user: tuple[str, str]
    assistant: tuple[str, str]
    system: tuple[str, str] | None  # None: no system block of its own
    default_system: str  # the system prompt the template inserts when none is given ("" if none)
    generation: str  # the assistant turn's opening, when generating
    bare_start: str = ""  # what precedes the first user message when no system message is given


def _between(text: str, a: str, b: str) -> str:
    i = text.index(a) + len(a)
    return text[i : text.index(b, i)]


def blocks(info: GgufInfo) -> Blocks | None:
    """The per-role blocks of the model's chat template, or None where it has none this can read."""

    def r(msgs: list[tuple[str, str]], gen: bool = False) -> str:
        return render_chat(info, [{"role": k, "content": v} for k, v in msgs], add_generation_prompt=gen)

    u2 = _U + "2"
    try:
        one_g = r([("user", _U)], gen=True)
        one, two, three = r([("user", _U)]), r([("user", _U), ("assistant", _A)]), r([("user", _U), ("assistant", _A), ("user", u2)])
    except Exception:  # noqa: BLE001 - a template that cannot render the probes has no blocks to read
        return None
    eos = info.eos or ""
    if eos and not one_g.startswith(one) and all(x.endswith(eos) for x in (one, two, three)):
        one, two, three = (x[: len(x) - len(eos)] for x in (one, two, three))  # an EOS closing a finished chat (Phi-3)
    if not (one_g.startswith(one) and three.startswith(two) and two.startswith(one)):
        return None
    user_close = three[three.index(u2) + len(u2) :]
    assistant_close = two[two.index(_A) + len(_A) :]
    between_ua, between_au = _between(three, _U, _A), _between(three, _A, u2)
    if not (between_ua.startswith(user_close) and between_au.startswith(assistant_close)):
        return None
    assistant_open, user_open = between_ua[len(user_close) :], between_au[len(assistant_close) :]
    head = one[: one.index(_U)]
    if not head.endswith(user_open):
        return None
    head = head[: len(head) - len(user_open)]  # a printed BOS, and the default system block if any
    bos = info.bos or ""
    start = bos if bos and head.startswith(bos) and not user_open.startswith(bos) else ""
    system, default = None, ""
    try:
        with_sys = r([("system", _S), ("user", _U)])
        before, after = with_sys[: with_sys.index(_S)], _between(with_sys, _S, _U)
        if before.startswith(start) and after.endswith(user_open):
            opening, close = before[len(start) :], after[: len(after) - len(user_open)]
            if head == start:
                system = (opening, close)
            elif head.startswith(start + opening) and head.endswith(close) and len(head) >= len(start + opening + close):
                system, default = (opening, close), head[len(start + opening) : len(head) - len(close)]
    except Exception:  # noqa: BLE001 - a template that refuses a system message: no system block
        system = None
    blocks = ((user_open, user_close), (assistant_open, assistant_close))
    return Blocks(start if system else head, *blocks, system, default, one_g[len(one) :], bare_start=head)


def go_template(b: Blocks) -> str:
    """The blocks as an Ollama (Go text/template) TEMPLATE over .Messages, with no trim markers, so
    every character between the actions is the template's own."""
    roles = [("system", b.system), ("user", b.user), ("assistant", b.assistant)]
    parts = []
    for i, (role, pair) in enumerate(r for r in roles if r[1] is not None):
        kw = "if" if i == 0 else "else if"
        parts.append(f'{{{{ {kw} eq .Role "{role}" }}}}{pair[0]}{{{{ .Content }}}}{pair[1]}')
    return f"{b.start}{{{{ range .Messages }}}}{''.join(parts)}{{{{ end }}}}{{{{ end }}}}{b.generation}"


# ---- Go-template semantics, for the subset go_template writes (and the check that uses it) -------
_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def render_go(template: str, messages: list[dict[str, str]]) -> str:
    """Render `template` as Go's text/template would for {{ range .Messages }}, {{ if/else if eq .Role
    "x" }}, {{ else }}, {{ end }}, {{ .Role }}, {{ .Content }}, with `{{-`/`-}}` whitespace trimming."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    for m in _ACTION.finditer(template):
        text = template[pos : m.start()]
        if m.group(1):
            text = text.rstrip()
        if tokens and tokens[-1][0] == "trim_next":
            tokens.pop()
            text = text.lstrip()
        tokens.append(("text", text))
        tokens.append(("action", m.group(2)))
        if m.group(3):
            tokens.append(("trim_next", ""))
        pos = m.end()
    tail = template[pos:]
    if tokens and tokens[-1][0] == "trim_next":
        tokens.pop()
        tail = tail.lstrip()
    tokens.append(("text", tail))
    tree, rest = _parse(tokens, 0)
    if rest != len(tokens):
        raise ValueError("unbalanced template")
    return _exec(tree, {"Messages": messages})


def _parse(tokens: list[tuple[str, str]], i: int, stop: tuple[str, ...] = ()) -> tuple[list[Any], int]:
    nodes: list[Any] = []
    while i < len(tokens):
        kind, val = tokens[i]
        if kind == "text":
            nodes.append(("text", val))
            i += 1
        elif val == "end" or val == "else" or val.startswith("else if "):
            if val.split()[0] not in stop and val not in stop:
                raise ValueError(f"unexpected {{{{ {val} }}}}")
            return nodes, i
        elif val.startswith("range "):
            body, i = _parse(tokens, i + 1, ("end",))
            nodes.append(("range", val[6:].strip(), body))
            i += 1
        elif val.startswith("if "):
            branches, cond = [], val[3:]
            while True:
                body, i = _parse(tokens, i + 1, ("end", "else"))
                branches.append((cond, body))
                val = tokens[i][1]
                if val == "end":
                    break
                cond = val[8:] if val.startswith("else if ") else "true"
            nodes.append(("if", branches))
            i += 1
        else:
            nodes.append(("value", val))
            i += 1
    return nodes, i


def _value(expr: str, dot: dict[str, Any]) -> Any:
    if expr == "true":
        return True
    if expr.startswith('"') and expr.endswith('"'):
        return expr[1:-1]
    if expr.startswith("."):
        return dot.get(expr[1:].capitalize() if expr[1:] in ("role", "content") else expr[1:], "")
    raise ValueError(f"unsupported expression {expr}")


def _truth(cond: str, dot: dict[str, Any]) -> bool:
    parts = re.findall(r'"[^"]*"|\S+', cond)
    if parts[0] == "eq":
        return _value(parts[1], dot) == _value(parts[2], dot)
    return bool(_value(cond, dot))


def _exec(nodes: list[Any], dot: dict[str, Any]) -> str:
    out = []
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "value":
            out.append(str(_value(node[1], dot)))
        elif node[0] == "range":
            for item in _value(node[1], dot):
                out.append(_exec(node[2], {"Role": item["role"], "Content": item["content"]}))
        else:
            for cond, body in node[1]:
                if _truth(cond, dot):
                    out.append(_exec(body, dot))
                    break
    return "".join(out)


# ---- the check and the file ---------------------------------------------------------------------
PROBES = [
    [("user", "Hi there."), ("assistant", "Hello! How can I help?"), ("user", "Name a fruit.")],
    [("user", "One line:\nand two.")],
]


def _ollama_messages(b: Blocks, convo: list[tuple[str, str]], system: str | None) -> list[dict[str, str]]:
    """What Ollama hands the template: the request's messages, its SYSTEM first when none is given."""
    msgs = [{"role": k, "content": v} for k, v in convo]
    sys_text = system if system is not None else b.default_system
    if sys_text and b.system is not None:
        msgs.insert(0, {"role": "system", "content": sys_text})
    return msgs


def matches(info: GgufInfo, b: Blocks) -> bool:
    """The Go template renders every probe conversation exactly as the model's chat template does."""
    template = go_template(b)
    systems: list[str | None] = [None] + (["You answer briefly."] if b.system is not None else [])
    for convo in PROBES:
        for system in systems:
            jinja_msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": k, "content": v} for k, v in convo]
            want = render_chat(info, jinja_msgs, add_generation_prompt=True)
            if render_go(template, _ollama_messages(b, convo, system)) != want:
                return False
    return True


@lru_cache(maxsize=16)
def checked_blocks(info: GgufInfo) -> Blocks | None:
    """The blocks, verified; without the system role if only that part does not match; else None —
    also for a template that prints today's date (SmolLM3's `strftime_now`): a Go template would
    keep the day it was written. Cached: every exported type of one model shares its template, so
    it is derived once."""
    if "strftime_now" in (info.chat_template or ""):
        return None
    b = blocks(info)
    if b is None:
        return None
    if matches(info, b):
        return b
    if b.system is not None:
        plain = Blocks(b.bare_start, b.user, b.assistant, None, "", b.generation, b.bare_start)
        if matches(info, plain):
            return plain
    return None


def stop_tokens(info: GgufInfo, b: Blocks | None) -> list[str]:
    """The strings that end the assistant's turn or begin another one."""
    found = [info.eos or ""]
    if b is not None:
        opening = b.user[0].strip()
        marker = re.match(r"<[^<>\s]+>|\[[A-Z]+\]", opening)  # <|im_start|>, <start_of_turn>, [INST]
        found += [b.assistant[1].strip(), marker.group(0) if marker else opening.split("\n")[0]]
    out: list[str] = []
    for s in found:
        if s and s not in out:
            out.append(s)
    return out


def modelfile(gguf: Path, info: GgufInfo, temperature: float, top_p: float, num_ctx: int) -> str:
    """The Modelfile text for `gguf` (FROM relative to the Modelfile, which sits beside it)."""
    b = checked_blocks(info)
    lines = [f"FROM ./{gguf.name}", ""]
    if b is not None:
        lines += [f'TEMPLATE """{go_template(b)}"""', ""]
        if b.default_system:
            lines += [f'SYSTEM """{b.default_system}"""', ""]
    else:
        lines += ["# the chat template did not decompose into per-role blocks: Ollama detects it from the GGUF", ""]
    lines += [f'PARAMETER stop "{s}"' for s in stop_tokens(info, b)]
    lines += [f"PARAMETER temperature {temperature}", f"PARAMETER top_p {top_p}", f"PARAMETER num_ctx {num_ctx}", ""]
    return "\n".join(lines)


def write(gguf: Path, info: GgufInfo, temperature: float, top_p: float, num_ctx: int) -> Path:
    """`<gguf stem>.Modelfile` beside the GGUF (`ollama create NAME -f` it), written atomically."""
    out = gguf.with_suffix(".Modelfile")
    atomic_write_text(out, modelfile(gguf, info, temperature, top_p, num_ctx))
    return out


def write_beside(paths: dict[str, str], template: Path, r: Recipe) -> None:
    """A Modelfile beside each exported GGUF model: the chat template and stop tokens of `template`
    (the user's GGUF, whose tokenizer the exports carry), the recipe's answer sampling and context."""
    info = gguf_info(template)
    for path in paths.values():
        if path.endswith(".gguf"):
            write(Path(path), info, r.synth.response_temperature, r.synth.response_top_p, r.model.n_ctx)
