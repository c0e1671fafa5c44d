"""One BOS: the chat template decides (isheep_lite/engines/tokens.py).

For each supported family's real chat template — ChatML (SmolLM2, Qwen2.5), Llama 3.2, Gemma 2,
Gemma 3, Mistral, Phi-3 — a copy of the embedded SmolLM2 GGUF is written with that template, the
family's BOS/EOS and `add_bos_token`, and the family's control tokens written over SmolLM2's spare
ones (ids 3…); cut to its first 4096 tokens and one transformer block, so it is parsed and loaded
in a moment (tokenization and the decode paths only need the model to run). Generation, scoring
(next-token and completion log-probs), training examples, the HTTP backend and the tokenizer
transformers builds from the GGUF must then all see the same prompt ids: one BOS at position 0
where the model uses a BOS (whether the template prints it or not), none added where it uses none.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import pytest
from chat_templates import FAMILIES, Family, family_tokens, write_family_gguf

from isheep_lite.engines.base import Sampling
from isheep_lite.engines.llamacpp import Engine
from isheep_lite.engines.tokens import hf_prompt_ids, prompt_ids
from isheep_lite.gguf import chat, header
from isheep_lite.training import encode

CONVERSATION = [{"role": "user", "content": "Name three colours."}, {"role": "assistant", "content": "Red, green and blue."}]


# ---- a tiny GGUF per family ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def smol_reader(smol_gguf: Path) -> Any:
    import gguf

    return gguf.GGUFReader(str(smol_gguf))


@pytest.fixture(scope="module")
def family_gguf(tmp_path_factory: pytest.TempPathFactory, smol_reader: Any) -> Callable[[str], Path]:
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = write_family_gguf(smol_reader, FAMILIES[name], tmp_path_factory.mktemp(name) / f"{name}.gguf")
        return made[name]

    return get


def expected_ids(vocab: Any, fam: Family, prompt: str) -> list[int]:
    """The rule, spelled out: the text's own tokens, and a BOS first where the model adds one and
    the text does not already start with it."""
    plain = vocab.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
    bos = vocab.token_bos()
    return [bos, *plain] if fam.add_bos and plain[:1] != [bos] else plain


# ---- the tests -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FAMILIES))
def test_generation_scoring_training_and_backends_see_one_bos(
    name: str,
    family_gguf: Callable[[str], Path],
    smol_reader: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    from isheep_lite.engines.openai_compat import OpenAIEngine

    fam = FAMILIES[name]
    path = family_gguf(name)
    info = header.gguf_info(path)
    assert (info.bos, info.eos, info.chat_template) == (fam.bos, fam.eos, fam.template)
    prompt, completion = chat.split_prompt_completion(info, CONVERSATION)
    assert prompt.startswith(fam.bos) == fam.prints_bos
    if "enable_thinking" in fam.template:  # the template's own no-think path: an empty reasoning block, none trained
        assert re.search(r"<\|im_start\|>assistant\n<think>\n\n</think>\n+$", prompt) and "<think>" not in completion

    vocab = Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        bos = vocab.token_bos()
        assert bos == family_tokens(smol_reader, fam).index(fam.bos)
        want = expected_ids(vocab, fam, prompt)
        c_ids = vocab.tokenize(completion.encode("utf-8"), add_bos=False, special=True)
        if fam.add_bos:  # exactly one BOS, first — printed by the template or added for the model
            assert want[0] == bos and want.count(bos) == 1
        else:  # nothing added: the text's own tokens (ChatML's <|im_start|> is SmolLM2's BOS id)
            assert want == vocab.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        if name == "qwen2.5":
            assert bos not in want
        if fam.add_bos and fam.prints_bos:  # the bug this guards against: llama.cpp's rule on top of the template's BOS
            assert vocab.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)[:2] == [bos, bos]
        assert prompt_ids(vocab, prompt) == want
    finally:
        vocab.close()

    # training: the prompt part of the example (labels -100), then the completion
    (example,), dropped = encode.build_examples([CONVERSATION], path, 4096)
    n_prompt = example["labels"].count(-100)
    assert dropped == 0 and example["input_ids"][:n_prompt] == want and example["input_ids"][n_prompt:] == c_ids

    # generation and scoring on the llama.cpp engine: every sequence it decodes starts with `want`
    with Engine(path, n_ctx=512, n_threads=2, n_parallel=2) as engine:
        assert engine.tokenize(prompt) == want
        assert engine.tokenize(chat.render_chat(info, CONVERSATION[:1], add_generation_prompt=True)) == want
        (out,) = engine.chat_many([CONVERSATION[:1]], [Sampling(max_tokens=2)])
        assert out.n_tokens > 0 or out.finish_reason == "stop"
        decoded: list[list[list[int]]] = []
        real = engine._decode_packed

        def spy(seqs: list[list[int]], first_read: list[int], read: Any) -> list[Any]:
            decoded.append([list(s) for s in seqs])
            return real(seqs, first_read, read)

        monkeypatch.setattr(engine, "_decode_packed", spy)
        engine.score_many([prompt], [c_ids[0]])
        engine.completion_logprobs([prompt], [completion])
        assert decoded == [[want], [want + c_ids]]

        # the HTTP backend: its tokenizer, and what llama-cpp-python's server (the same
        # Llama.create_completion) makes of the text it is sent: one BOS, not two (no server needed:
        # the checks of what a server serves are skipped)
        monkeypatch.setattr(OpenAIEngine, "_check_served", lambda self: path.name)
        monkeypatch.setattr(OpenAIEngine, "_probe", lambda self: (True, True))
        with OpenAIEngine("http://127.0.0.1:9", path) as http:
            assert http.tokenize(prompt) == want
            served = engine.llm.create_completion(http.wire_prompt(prompt), max_tokens=1, temperature=0.0)
            assert served["usage"]["prompt_tokens"] == len(want)

    # the transformers backend's rule, on the tokenizer transformers builds from the same GGUF
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    assert tok.bos_token_id == bos
    assert hf_prompt_ids(tok, prompt) == want


def test_a_bos_the_model_does_not_add_is_never_dropped(smol_gguf: Path) -> None:
    """SmolLM2 adds no BOS (its BOS id is <|im_start|>): text starting with two keeps both."""
    from llama_cpp import Llama

    vocab = Llama(model_path=str(smol_gguf), vocab_only=True, verbose=False)
    try:
        text = "<|im_start|><|im_start|>user\nhi"
        assert prompt_ids(vocab, text) == vocab.tokenize(text.encode(), add_bos=False, special=True)
        assert prompt_ids(vocab, text)[:2] == [vocab.token_bos()] * 2
    finally:
        vocab.close()
