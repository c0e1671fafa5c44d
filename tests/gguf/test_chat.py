"""Chat templates render as transformers renders them (isheep_lite/gguf/chat.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from chat_templates import FAMILIES

from isheep_lite.gguf import chat, header

CHATS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_renders_as_transformers_renders_it(name: str, smol_gguf: Path) -> None:
    """Through the no-think path, with and without the generation prompt: the same text as
    transformers' renderer (the one apply_chat_template calls; its globals, e.g. SmolLM3's dated
    header, and its `{% generation %}` block included)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    fam = FAMILIES[name]
    info = dataclasses.replace(header.gguf_info(smol_gguf), chat_template=fam.template, bos=fam.bos, eos=fam.eos)
    for messages in CHATS:
        for generation in (True, False):
            if generation and messages[-1]["role"] == "assistant":
                continue
            try:
                (want,), _ = render_jinja_template(
                    [messages],
                    chat_template=fam.template,
                    add_generation_prompt=generation,
                    enable_thinking=False,
                    bos_token=fam.bos,
                    eos_token=fam.eos,
                )
            except Exception:  # a template that refuses this chat (Gemma: no system role) refuses it here too
                with pytest.raises(Exception):
                    chat.render_chat(info, messages, generation)
                continue
            assert chat.render_chat(info, messages, generation) == want, (name, messages, generation)
