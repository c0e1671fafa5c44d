"""A rendered prompt as token ids: one rule for generation, scoring and training.

Why: Llama 3, Gemma and Mistral chat templates print the BOS token's text (`<|begin_of_text|>`,
`<bos>`, `<s>`) themselves, and their GGUFs also tell llama.cpp to add a BOS. Tokenizing the
rendered prompt with the model's add-BOS rule on top gives two BOS tokens — a sequence the model
never saw in pre-training, which sampling and training would then both be built on. The chat
template decides: the model's own rule adds a BOS only where the text does not start with one, so
every path (llama.cpp engine, HTTP backend, transformers backend, training) gets the same ids, with
exactly one BOS where the model uses one and none where it uses none (ChatML models such as Qwen).
"""

from __future__ import annotations

from typing import Any


def prompt_ids(vocab: Any, text: str) -> list[int]:
    """`text` as llama.cpp tokenizes a prompt, with one BOS where the model adds one (not two).

    `vocab` is a llama_cpp.Llama (a vocab_only load is enough). Special tokens in the text are
    parsed; the GGUF's `tokenizer.ggml.add_bos_token` says whether a BOS goes first, and it is put
    there only when the text does not already start with it. The same ids as tokenizing with
    add_bos=True and dropping the added BOS of a doubled pair, without llama.cpp's double-BOS
    warning on every prompt, and never with the EOS that add_bos=True also appends where the GGUF
    sets add_eos_token.
    """
    import llama_cpp as lc

    ids: list[int] = vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    bos = vocab.token_bos()
    if bos >= 0 and ids[:1] != [bos] and lc.llama_vocab_get_add_bos(lc.llama_model_get_vocab(vocab.model)):
        return [bos, *ids]
    return ids


def hf_prompt_ids(tokenizer: Any, text: str) -> list[int]:
    """`prompt_ids` for a transformers tokenizer: the same rule, so both backends agree.

    Special tokens in the text are parsed (added tokens always are); the tokenizer's own rule
    (`add_special_tokens=True`: `add_bos_token`, its post-processor) says whether a BOS goes first,
    and it is put there only when the text does not already start with it. No other token it
    would add (an EOS) is.
    """
    ids: list[int] = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = tokenizer.bos_token_id
    if bos is not None and ids[:1] != [bos] and tokenizer("", add_special_tokens=True)["input_ids"][:1] == [bos]:
        return [bos, *ids]
    return ids
