"""Training examples as token ids, tokenized by llama.cpp from the GGUF the model is served from.

Prompt and completion are tokenized separately (a vocab-only load of the GGUF), so training sees
exactly the token ids the model is prompted with at generation time. Labels are -100 over the prompt
and cover the whole assistant turn *including its end-of-turn token*: a model that never gets loss on
that token learns never to stop. Examples longer than `max_seq_len` are dropped, never cut.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from isheep_lite.gguf import chat, header


def build_examples(conversations: list[list[dict[str, str]]], gguf_path: Path, max_seq_len: int) -> tuple[list[dict[str, list[int]]], int]:
    """Conversations → [{"input_ids", "labels"}], plus the number dropped for length."""
    from llama_cpp import Llama

    from isheep_lite.engines.tokens import prompt_ids

    info = header.gguf_info(gguf_path)
    vocab = Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    try:
        examples, dropped = [], 0
        for messages in conversations:
            prompt, completion = chat.split_prompt_completion(info, messages)
            p_ids = prompt_ids(vocab, prompt)  # as the engine tokenizes it: one BOS
            c_ids = vocab.tokenize(completion.encode("utf-8"), add_bos=False, special=True)
            if len(p_ids) + len(c_ids) > max_seq_len:
                dropped += 1
                continue
            examples.append({"input_ids": p_ids + c_ids, "labels": [-100] * len(p_ids) + c_ids})
    finally:
        vocab.close()
    return examples, dropped


def build_preferences(pairs: list[dict[str, Any]], gguf_path: Path, max_seq_len: int) -> tuple[list[dict[str, list[int]]], int]:
    """Preference pairs {"prompt": [user message], "chosen": text, "rejected": text} → [{"prompt_ids",
    "chosen_ids", "rejected_ids"}] tokenized exactly as `build_examples` tokenizes SFT data (llama.cpp's
    tokenizer, one BOS, each answer with its end-of-turn token); pairs longer than `max_seq_len` dropped."""
    from llama_cpp import Llama

    from isheep_lite.engines.tokens import prompt_ids

    info = header.gguf_info(gguf_path)
    vocab = Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    try:
        examples, dropped = [], 0
        for pair in pairs:
            ids = {}
            for side in ("chosen", "rejected"):
                prompt, completion = chat.split_prompt_completion(info, [*pair["prompt"], {"role": "assistant", "content": pair[side]}])
                ids["prompt_ids"] = prompt_ids(vocab, prompt)
                ids[f"{side}_ids"] = vocab.tokenize(completion.encode("utf-8"), add_bos=False, special=True)
            if len(ids["prompt_ids"]) + max(len(ids["chosen_ids"]), len(ids["rejected_ids"])) > max_seq_len:
                dropped += 1
                continue
            examples.append(ids)
    finally:
        vocab.close()
    return examples, dropped
