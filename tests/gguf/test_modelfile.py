"""The Ollama Modelfile: its TEMPLATE, rendered with Go-template semantics, gives the model's own chat
template's text for every supported family; its stop tokens end the assistant's turn."""

from __future__ import annotations

from pathlib import Path

import pytest
from chat_templates import FAMILIES

from isheep_lite.gguf import modelfile
from isheep_lite.gguf.chat import render_chat
from isheep_lite.gguf.header import GgufInfo

TWO_TURNS = [
    {"role": "user", "content": "Name three colours."},
    {"role": "assistant", "content": "Red, green and blue."},
    {"role": "user", "content": "And two animals?\nShort, please."},
]


def _info(name: str) -> GgufInfo:
    fam = FAMILIES[name]
    return GgufInfo(arch="llama", chat_template=fam.template, bos=fam.bos, eos=fam.eos, n_params=0, kv_bytes_per_cell=0)


def test_go_template_rendering_follows_go_semantics() -> None:
    """The renderer the check relies on, against outputs worked out by hand from Go's text/template rules."""
    users = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    chatml = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
    assert (
        modelfile.render_go(chatml, users)
        == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>assistant\n"
    )
    trims = "x \n{{- range .Messages }} {{ .Role -}} \n {{ end }}!"  # {{- eats whitespace before, -}} after
    assert modelfile.render_go(trims, users) == "x user assistant!"
    branches = '{{ range .Messages }}{{ if eq .Role "user" }}U:{{ .Content }};{{ else if eq .Role "system" }}S;{{ else }}A:{{ .Content }};{{ end }}{{ end }}'
    assert modelfile.render_go(branches, [{"role": "system", "content": "s"}, *users]) == "S;U:Hi;A:Hello;"
    with pytest.raises(ValueError):
        modelfile.render_go("{{ range .Messages }}open", users)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_template_renders_a_two_turn_chat_as_the_chat_template_does(name: str) -> None:
    info = _info(name)
    b = modelfile.checked_blocks(info)
    # no TEMPLATE where the last answer gets a reasoning block and earlier ones none (Qwen3, Qwen3.5), or
    # where the header prints today's date (Llama 3.2, SmolLM3): Ollama reads the GGUF's own template
    if name in ("qwen3", "qwen3.5") or "strftime_now" in info.chat_template:
        assert b is None
        return
    assert b is not None, f"{name}: no TEMPLATE"
    template = modelfile.go_template(b)
    want = render_chat(info, TWO_TURNS, add_generation_prompt=True)
    # what Ollama hands the template: the Modelfile's SYSTEM first when the request has none
    sent = ([{"role": "system", "content": b.default_system}] if b.default_system else []) + TWO_TURNS
    assert modelfile.render_go(template, sent) == want
    if b.system is not None:  # a system prompt of the user's own
        own = [{"role": "system", "content": "You are terse."}, *TWO_TURNS]
        assert modelfile.render_go(template, own) == render_chat(info, own, add_generation_prompt=True)
    # the stop tokens: the first one the model would write after its answer is among them
    answered = render_chat(info, TWO_TURNS[:2], add_generation_prompt=False)
    after = answered[answered.rindex("Red, green and blue.") + len("Red, green and blue.") :]
    stops = modelfile.stop_tokens(info, b)
    assert after.strip() and any(after.lstrip().startswith(s) for s in stops), (after, stops)
    assert any(s in b.user[0] for s in stops), "the start of a new user turn stops generation too"


def test_the_modelfile_names_its_gguf_and_the_sampling_defaults(tmp_path: Path) -> None:
    info = _info("smollm2")
    gguf = tmp_path / "model-f16.gguf"
    gguf.write_bytes(b"")
    text = modelfile.write(gguf, info, 0.7, 0.95, 2048).read_text()
    assert text.startswith("FROM ./model-f16.gguf\n") and (tmp_path / "model-f16.Modelfile").is_file()
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in text
    assert 'PARAMETER stop "<|im_end|>"' in text and 'PARAMETER stop "<|im_start|>"' in text
    assert "PARAMETER temperature 0.7" in text and "PARAMETER num_ctx 2048" in text
    template = text[text.index('TEMPLATE """') + 12 : text.index('"""', text.index('TEMPLATE """') + 12)]
    assert template == modelfile.go_template(modelfile.checked_blocks(info))


def test_a_template_without_per_role_blocks_gets_stop_tokens_and_no_template(tmp_path: Path) -> None:
    odd = "{% for m in messages %}{{ m['content'] | upper }}{% endfor %}"  # no markers to cut a role's block out of
    info = GgufInfo(arch="llama", chat_template=odd, bos="<s>", eos="</s>", n_params=0, kv_bytes_per_cell=0)
    assert modelfile.checked_blocks(info) is None
    text = modelfile.modelfile(tmp_path / "m.gguf", info, 0.7, 0.95, 2048)
    assert "TEMPLATE" not in text and 'PARAMETER stop "</s>"' in text
