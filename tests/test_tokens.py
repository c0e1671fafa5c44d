"""One BOS: the chat template decides (isheep_lite/tokens.py).

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

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from isheep_lite import models, train
from isheep_lite.engine import Engine, Sampling
from isheep_lite.tokens import hf_prompt_ids, prompt_ids

# ---- the families' chat templates, as their tokenizer_config.json ships them ----------------------
SMOLLM2 = (  # HuggingFaceTB/SmolLM2-135M-Instruct (also the embedded GGUF's)
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + "
    "message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)

QWEN25 = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

LLAMA32 = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

GEMMA2 = (  # google/gemma-2-2b-it
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception("
    "'Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == "
    "'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + "
    "role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{'<start_of_turn>model\n'}}{% endif %}"
)

GEMMA3 = r"""{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

MISTRAL = (  # mistralai/Mistral-7B-Instruct-v0.2 ([INST] is plain text in its vocabulary)
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == "
    "'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are "
    "supported!') }}{% endif %}{% endfor %}"
)

PHI3 = (  # microsoft/Phi-3-mini-4k-instruct: no BOS in the template, but its GGUFs add one
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif "
    "message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)


@dataclass(frozen=True)
class Family:
    template: str
    specials: tuple[str, ...] = ()  # control tokens SmolLM2 lacks, written over its spare ones (ids 3, 4, …)
    bos: str = "<|im_start|>"  # SmolLM2's own metadata: BOS id 1, never added
    eos: str = "<|im_end|>"
    add_bos: bool = False  # tokenizer.ggml.add_bos_token
    prints_bos: bool = False  # the rendered prompt starts with the BOS token's text


GEMMA_SPECIALS = ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>")
FAMILIES = {
    "smollm2": Family(SMOLLM2, prints_bos=True),  # its BOS id is <|im_start|>, which starts every ChatML turn
    "qwen2.5": Family(QWEN25, bos="<|endoftext|>"),
    "llama3.2": Family(
        LLAMA32,
        ("<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"),
        "<|begin_of_text|>",
        "<|eot_id|>",
        add_bos=True,
        prints_bos=True,
    ),
    "gemma2": Family(GEMMA2, GEMMA_SPECIALS, "<bos>", "<eos>", add_bos=True, prints_bos=True),
    "gemma3": Family(GEMMA3, GEMMA_SPECIALS, "<bos>", "<eos>", add_bos=True, prints_bos=True),
    "mistral": Family(MISTRAL, ("<s>", "</s>"), "<s>", "</s>", add_bos=True, prints_bos=True),
    "phi3": Family(PHI3, ("<s>", "<|user|>", "<|assistant|>", "<|end|>", "<|system|>"), "<s>", "<|endoftext|>", add_bos=True),
}
CONVERSATION = [{"role": "user", "content": "Name three colours."}, {"role": "assistant", "content": "Red, green and blue."}]


# ---- a tiny GGUF per family ---------------------------------------------------------------------
N_VOCAB = 4096  # SmolLM2's first 4096 tokens and the merges among them: a BPE vocabulary quick to parse


@pytest.fixture(scope="module")
def smol_reader(smol_gguf: Path) -> Any:
    import gguf

    return gguf.GGUFReader(str(smol_gguf))


def family_tokens(reader: Any, fam: Family) -> list[str]:
    """SmolLM2's first N_VOCAB tokens, the family's control tokens written over its spare ones (ids 3…)."""
    tokens = list(reader.fields["tokenizer.ggml.tokens"].contents())[:N_VOCAB]
    assert not set(fam.specials) & set(tokens), "a family token SmolLM2 already has"
    tokens[3 : 3 + len(fam.specials)] = fam.specials
    return tokens


def write_family_gguf(reader: Any, fam: Family, out: Path) -> Path:
    """The SmolLM2 GGUF cut to N_VOCAB tokens and its first block, with the family's template, special
    tokens, BOS/EOS and add_bos_token (gguf-py directly, as its gguf_new_metadata.py copies a GGUF)."""
    import gguf

    tokens = family_tokens(reader, fam)
    kept = set(tokens)

    def merge_kept(merge: str) -> bool:
        a, b = merge.split(" ", 1)
        return a in kept and b in kept and a + b in kept

    new: dict[str, Any] = {
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": list(reader.fields["tokenizer.ggml.token_type"].contents())[:N_VOCAB],
        "tokenizer.ggml.merges": [m for m in reader.fields["tokenizer.ggml.merges"].contents() if merge_kept(m)],
        "tokenizer.chat_template": fam.template,
        "tokenizer.ggml.add_bos_token": fam.add_bos,
        "tokenizer.ggml.bos_token_id": tokens.index(fam.bos),
        "tokenizer.ggml.eos_token_id": tokens.index(fam.eos),
        "llama.vocab_size": N_VOCAB,
        "llama.block_count": 1,
    }
    writer = gguf.GGUFWriter(str(out), "llama")
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, new.get(field.name, field.contents()), vtype, sub_type=sub)
    kept_tensors = [
        (t, t.data[:N_VOCAB] if t.name == "token_embd.weight" else t.data)  # rows = tokens (tied output)
        for t in reader.tensors
        if not t.name.startswith("blk.") or t.name.startswith("blk.0.")
    ]
    for t, data in kept_tensors:
        writer.add_tensor_info(t.name, data.shape, data.dtype, data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, data in kept_tensors:
        writer.write_tensor_data(data, tensor_endianess=reader.endianess)
    writer.close()
    return out


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

    from isheep_lite.http_engine import OpenAIEngine

    fam = FAMILIES[name]
    path = family_gguf(name)
    info = models.gguf_info(path)
    assert (info.bos, info.eos, info.chat_template) == (fam.bos, fam.eos, fam.template)
    prompt, completion = models.split_prompt_completion(info, CONVERSATION)
    assert prompt.startswith(fam.bos) == fam.prints_bos

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
    (example,), dropped = train.build_examples([CONVERSATION], path, 4096)
    n_prompt = example["labels"].count(-100)
    assert dropped == 0 and example["input_ids"][:n_prompt] == want and example["input_ids"][n_prompt:] == c_ids

    # generation and scoring on the llama.cpp engine: every sequence it decodes starts with `want`
    with Engine(path, n_ctx=512, n_threads=2, n_parallel=2) as engine:
        assert engine.tokenize(prompt) == want
        assert engine.tokenize(models.render_chat(info, CONVERSATION[:1], add_generation_prompt=True)) == want
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
