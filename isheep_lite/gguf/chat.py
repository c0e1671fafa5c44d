"""Chat templates as the GGUF ships them, rendered one way for generation, scoring and training."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from isheep_lite.gguf.header import GgufInfo
from isheep_lite.recipe import UserError


# ---- chat template ------------------------------------------------------------------------------
@lru_cache(maxsize=8)
def _compile(template: str) -> Any:
    """The template in the environment transformers renders chat templates in: its two globals
    (`raise_exception`, `strftime_now`, which SmolLM3's header uses for today's date) and its
    `{% generation %}` block (which marks the assistant's text; rendered as its content)."""
    from datetime import datetime

    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_content"), [], [], body).set_lineno(lineno)

        def _content(self, caller: Any) -> str:
            return caller()

    def raise_exception(message: str) -> None:
        raise UserError(f"chat template error: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation])
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def render_chat(info: GgufInfo, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    """The model's own chat template, rendered as transformers and llama.cpp render it.

    Always through the template's no-think path (`enable_thinking=False`, which Qwen3, Qwen3.5,
    SmolLM3 and Gemma 4 read; other templates ignore it): instructions, answers and grades are written without
    a reasoning block, and the training text is what the template makes of an answer without one.
    """
    if not info.chat_template:
        raise UserError("this GGUF has no chat template (tokenizer.chat_template); use a chat/instruct model")
    return _compile(info.chat_template).render(
        messages=messages,
        add_generation_prompt=add_generation_prompt,
        enable_thinking=False,
        bos_token=info.bos or "",
        eos_token=info.eos or "",
    )


def split_prompt_completion(info: GgufInfo, messages: list[dict[str, str]]) -> tuple[str, str]:
    """A (user…, assistant) conversation → (prompt text, completion text).

    The completion is everything the template emits for the final assistant turn, its end-of-turn
    token included: the loss covers it, so the tuned model keeps learning when to stop.
    """
    prompt = render_chat(info, messages[:-1], add_generation_prompt=True)
    full = render_chat(info, messages, add_generation_prompt=False)
    if not full.startswith(prompt):
        raise UserError("chat template renders the prompt differently with and without the answer; cannot split it")
    return prompt, full[len(prompt) :]
