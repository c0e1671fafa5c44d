"""Tiny random models of every architecture in the matrix, each of its real config's shape (its
attention pattern, RoPE variant, norms and multipliers), small enough to train in seconds: the
architecture tests (tests/gguf/test_archs.py); and such a model taught to answer in a chat template,
for whole runs on a small model (tests/e2e/test_thinking_models.py, tests/engines/test_hf.py)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable

from chat_templates import FAMILIES, write_family_gguf

COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
)


def _llama3(vocab: int, **ids: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 256,
    }
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, rope_parameters=rope, **COMMON, **ids))


def _mistral(vocab: int, **ids: Any) -> Any:
    from transformers import MistralConfig, MistralForCausalLM

    return MistralForCausalLM(MistralConfig(vocab_size=vocab, sliding_window=None, **COMMON, **ids))


def _qwen2(vocab: int, **ids: Any) -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, **COMMON, **ids))


def _gemma2(vocab: int, **ids: Any) -> Any:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    cfg = Gemma2Config(
        vocab_size=vocab,
        head_dim=16,
        sliding_window=128,
        query_pre_attn_scalar=16,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        **COMMON,
        **ids,
    )
    return Gemma2ForCausalLM(cfg)


def _gemma3(vocab: int, **ids: Any) -> Any:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    # six layers: Gemma 3's pattern (five sliding, one full), as llama.cpp assumes for the family
    cfg = Gemma3TextConfig(
        vocab_size=vocab, head_dim=16, sliding_window=128, query_pre_attn_scalar=16, **{**COMMON, "num_hidden_layers": 6}, **ids
    )
    return Gemma3ForCausalLM(cfg)


def _gemma3_vision(vocab: int, **ids: Any) -> Any:
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    # Gemma 3 from 4B: the text model of `_gemma3` under a (tiny) SigLIP vision tower and projector,
    # image tokens among the vocabulary's spare ids
    text = Gemma3TextConfig(
        vocab_size=vocab, head_dim=16, sliding_window=128, query_pre_attn_scalar=16, **{**COMMON, "num_hidden_layers": 6}, **ids
    )
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    )
    cfg = Gemma3Config(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        mm_tokens_per_image=4,
        boi_token_index=5,
        eoi_token_index=6,
        image_token_index=7,
        tie_word_embeddings=True,
        **ids,
    )
    return Gemma3ForConditionalGeneration(cfg)


def _gemma4(vocab: int, **ids: Any) -> Any:
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig

    # Gemma 4 E2B/E4B's shape: per-layer input embeddings, the last three layers reading the KV of
    # earlier ones, full-attention layers with wider heads and proportional RoPE on a quarter of
    # them, final logit soft-capping
    cfg = Gemma4TextConfig(
        vocab_size=vocab,
        head_dim=16,
        global_head_dim=32,
        sliding_window=128,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
        hidden_size_per_layer_input=16,
        vocab_size_per_layer_input=vocab,
        num_kv_shared_layers=3,
        final_logit_softcapping=30.0,
        **{**COMMON, "num_hidden_layers": 6},
        **ids,
    )
    return Gemma4ForCausalLM(cfg)


def _gemma4_vision(vocab: int, **ids: Any) -> Any:
    from transformers import Gemma4AudioConfig, Gemma4Config, Gemma4ForConditionalGeneration, Gemma4VisionConfig

    # Gemma 4 as it ships: the text model of `_gemma4` with (tiny) vision and audio towers, their
    # tokens among the vocabulary's spare ids
    text = _gemma4(vocab, **ids).config.to_dict()
    vision = Gemma4VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    audio = Gemma4AudioConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, output_proj_dims=32)
    special = dict(
        boi_token_id=5, eoi_token_id=6, image_token_id=7, video_token_id=8, boa_token_id=9, eoa_token_index=10, audio_token_id=11
    )
    cfg = Gemma4Config(text_config=text, vision_config=vision.to_dict(), audio_config=audio.to_dict(), **special, **ids)
    return Gemma4ForConditionalGeneration(cfg)


def _ministral3(vocab: int, **ids: Any) -> Any:
    from transformers import Ministral3Config, Ministral3ForCausalLM

    # Ministral 3's RoPE: YaRN past the original context, and Llama 4's attention scaling, which
    # grows the queries by 1 + β·log(1 + ⌊position / original context⌋) — both exercised past 256
    rope = {
        "rope_type": "yarn",
        "rope_theta": 1000000.0,
        "factor": 4.0,
        "original_max_position_embeddings": 256,
        "max_position_embeddings": 1024,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "mscale_all_dim": 1.0,
        "mscale": 1.0,
        "llama_4_scaling_beta": 0.1,
    }
    cfg = Ministral3Config(vocab_size=vocab, head_dim=16, rope_parameters=rope, **{**COMMON, "tie_word_embeddings": False}, **ids)
    return Ministral3ForCausalLM(cfg)


def _ministral3_vision(vocab: int, **ids: Any) -> Any:
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, PixtralVisionConfig

    # Ministral 3 as it ships: the text model of `_ministral3` under a (tiny) Pixtral vision tower
    # and projector, the image token among the vocabulary's spare ids
    text = _ministral3(vocab, **ids).config.to_dict()
    vision = PixtralVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    )
    cfg = Mistral3Config(text_config=text, vision_config=vision.to_dict(), image_token_index=7, spatial_merge_size=2, **ids)
    return Mistral3ForConditionalGeneration(cfg)


def _phi3(vocab: int, **ids: Any) -> Any:
    from transformers import Phi3Config, Phi3ForCausalLM

    half = 64 // 4 // 2
    rope = {
        "rope_type": "longrope",
        "rope_theta": 10000.0,
        "original_max_position_embeddings": 256,
        "short_factor": [1.0 + 0.1 * i for i in range(half)],
        "long_factor": [1.0 + 0.5 * i for i in range(half)],
    }
    cfg = Phi3Config(
        vocab_size=vocab,
        rope_parameters=rope,
        original_max_position_embeddings=256,
        pad_token_id=None,
        **{**COMMON, "tie_word_embeddings": False},
        **ids,
    )
    return Phi3ForCausalLM(cfg)


def _qwen3(vocab: int, **ids: Any) -> Any:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    return Qwen3ForCausalLM(Qwen3Config(vocab_size=vocab, head_dim=16, **COMMON, **ids))


def _qwen3_5(vocab: int, **ids: Any) -> Any:
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    # Qwen3.5's hybrid: three gated-delta-net (linear attention) layers, then one full-attention
    # layer with a gated output; its real head size and interleaved multimodal RoPE on a quarter of it
    rope = {
        "rope_type": "default",
        "rope_theta": 10000000.0,
        "partial_rotary_factor": 0.25,
        "mrope_section": [11, 11, 10],
        "mrope_interleaved": True,
    }
    cfg = Qwen3_5TextConfig(
        vocab_size=vocab,
        head_dim=256,
        rope_parameters=rope,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        layer_types=["linear_attention"] * 3 + ["full_attention"],
        **{**COMMON, "num_hidden_layers": 4},
        **ids,
    )
    return Qwen3_5ForCausalLM(cfg)


def _qwen3_5_vision(vocab: int, **ids: Any) -> Any:
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    # Qwen3.5 as its small models ship: the text model of `_qwen3_5` under a (tiny) vision tower and
    # merger, vision tokens among the vocabulary's spare ids
    text = _qwen3_5(vocab, **ids).config.to_dict()
    vision = dict(
        depth=1,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        patch_size=8,
        out_hidden_size=COMMON["hidden_size"],
        num_position_embeddings=16,
    )
    cfg = Qwen3_5Config(
        text_config=text,
        vision_config=vision,
        image_token_id=5,
        video_token_id=6,
        vision_start_token_id=7,
        vision_end_token_id=8,
        tie_word_embeddings=True,
        **ids,
    )
    return Qwen3_5ForConditionalGeneration(cfg)


def _smollm3(vocab: int, **ids: Any) -> Any:
    from transformers import SmolLM3Config, SmolLM3ForCausalLM

    # every fourth layer without RoPE, as SmolLM3 ships
    cfg = SmolLM3Config(vocab_size=vocab, no_rope_layers=[1, 1, 1, 0], pad_token_id=None, **{**COMMON, "num_hidden_layers": 4}, **ids)
    return SmolLM3ForCausalLM(cfg)


def _olmo2(vocab: int, **ids: Any) -> Any:
    from transformers import Olmo2Config, Olmo2ForCausalLM

    # untied output embeddings, as OLMo 2 ships (llama.cpp's olmo2 reads output.weight)
    return Olmo2ForCausalLM(Olmo2Config(vocab_size=vocab, **{**COMMON, "tie_word_embeddings": False}, **ids))


def _olmo3(vocab: int, **ids: Any) -> Any:
    from transformers import Olmo3Config, Olmo3ForCausalLM

    # Olmo 3's pattern: three sliding-window layers, then one full
    layers = ["sliding_attention"] * 3 + ["full_attention"]
    cfg = Olmo3Config(
        vocab_size=vocab, sliding_window=128, layer_types=layers, **{**COMMON, "num_hidden_layers": 4, "tie_word_embeddings": False}, **ids
    )
    return Olmo3ForCausalLM(cfg)


def _granite(vocab: int, **ids: Any) -> Any:
    from transformers import GraniteConfig, GraniteForCausalLM

    # Granite's four multipliers, each away from 1 so that losing one shows
    cfg = GraniteConfig(
        vocab_size=vocab,
        embedding_multiplier=12.0,
        residual_multiplier=0.22,
        attention_multiplier=0.0625,
        logits_scaling=8.0,
        **COMMON,
        **ids,
    )
    return GraniteForCausalLM(cfg)


def _phi4_mini(vocab: int, **ids: Any) -> Any:
    from transformers import Phi3Config, Phi3ForCausalLM

    # Phi-4-mini: a phi3 config whose rotary embedding covers three quarters of each head, longrope-scaled
    rotary_half = int(16 * 0.75) // 2
    rope = {
        "rope_type": "longrope",
        "rope_theta": 10000.0,
        "partial_rotary_factor": 0.75,
        "original_max_position_embeddings": 256,
        "short_factor": [1.0 + 0.1 * i for i in range(rotary_half)],
        "long_factor": [1.0 + 0.5 * i for i in range(rotary_half)],
    }
    cfg = Phi3Config(
        vocab_size=vocab,
        rope_parameters=rope,
        partial_rotary_factor=0.75,
        original_max_position_embeddings=256,
        pad_token_id=None,
        **{**COMMON, "tie_word_embeddings": True},
        **ids,
    )
    return Phi3ForCausalLM(cfg)


BUILDERS: dict[str, Callable[..., Any]] = {
    "llama3": _llama3,
    "mistral": _mistral,
    "qwen2": _qwen2,
    "gemma2": _gemma2,
    "gemma3": _gemma3,
    "gemma3_vision": _gemma3_vision,
    "gemma4": _gemma4,
    "gemma4_vision": _gemma4_vision,
    "ministral3": _ministral3,
    "ministral3_vision": _ministral3_vision,
    "phi3": _phi3,
    "phi4_mini": _phi4_mini,
    "qwen3": _qwen3,
    "qwen3_5": _qwen3_5,
    "qwen3_5_vision": _qwen3_5_vision,
    "smollm3": _smollm3,
    "olmo2": _olmo2,
    "olmo3": _olmo3,
    "granite": _granite,
}


def save_user_model(model: Any, tokenizer: Any, template: Path, root: Path, kind: str) -> tuple[Path, Path]:
    """(HF dir, its GGUF) of `model`, as a user brings a model: HF weights with their tokenizer, and
    the F32 GGUF the toolkit's own export writes from them (tokenizer and chat template from `template`)."""
    from isheep_lite.gguf import convert

    hf = root / f"{kind}-hf"
    model.save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    gguf = root / f"{kind}.gguf"
    convert.convert(hf, template, gguf, "f32")
    return hf, gguf


# ---- a tiny model taught to answer -------------------------------------------------------------
SHOTS = 3  # seed tasks per instruction prompt: short prompts, quick to teach
# short answers the tiny model learns to give and end (none asks back, refuses or repeats the question)
ANSWERS = [
    "It depends on the details, but the main idea is simple and easy to follow.",
    "The short answer is that several small causes add up to one large effect.",
    "Start with the basics, practise a little every day, and the rest will follow.",
    "Most people find that a clear plan and some patience solve the problem.",
    "There are two sides to it, and both of them matter for the final result.",
    "In short, the answer is yes for most cases and no for a few rare ones.",
]


def taught_model(kind: str, family_name: str, smol_gguf: Path, root: Path) -> tuple[Path, Path]:
    """(HF dir, its GGUF): a tiny `kind` model on the family's test GGUF (chat_templates.py:
    SmolLM2's first 12288 tokens, " Yes" and " No" among them, the family's control tokens, template,
    BOS and EOS), taught by 200 optimizer steps to continue seed-task lists (SHOTS per prompt) and
    to answer a chat turn through the template's no-think path and end it: what it writes is
    garbled, but some of it survives the filters, so every stage of a run has data."""
    import gguf
    import torch
    from transformers import AutoTokenizer

    from isheep_lite.selfalign import synth

    family = write_family_gguf(gguf.GGUFReader(str(smol_gguf)), FAMILIES[family_name], root / "family.gguf", 12288)
    tok = AutoTokenizer.from_pretrained(str(root), gguf_file=family.name)
    tok.pad_token = tok.pad_token or tok.eos_token
    torch.manual_seed(0)
    model = BUILDERS[kind](len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    rng = random.Random(0)
    seeds = synth.load_seeds("builtin")

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    # token ids as the toolkit makes them: a chat's prompt and answer tokenized apart (the prompt ends
    # at the generation prompt, as when the model answers), a task list as one text
    examples = []
    for i in range(96):
        tasks = rng.sample(seeds, SHOTS + 1)
        examples.append(ids(synth.fewshot_prompt(tasks[:SHOTS]) + f" {tasks[SHOTS]['instruction']}\nInput: {synth.NO_INPUT}\n\n"))
        for j, task in enumerate(tasks[:2]):  # two chats per list: answering right after the empty reasoning block is the harder part
            user = [{"role": "user", "content": task["instruction"]}]
            prompt = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True, enable_thinking=False)
            full = tok.apply_chat_template(
                [*user, {"role": "assistant", "content": ANSWERS[(i + j) % len(ANSWERS)]}], tokenize=False, enable_thinking=False
            )
            assert full.startswith(prompt)
            examples.append(ids(prompt) + ids(full[len(prompt) :]))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(200):
        batch = [examples[(4 * step + k) % len(examples)] for k in range(4)]
        width = max(map(len, batch))
        input_ids = torch.tensor([x + [tok.pad_token_id] * (width - len(x)) for x in batch])
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in batch])
        loss = model(input_ids=input_ids, attention_mask=mask, labels=input_ids.masked_fill(mask == 0, -100)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < 3.0, f"{kind}: the teaching left a loss of {loss.item():.2f}"
    return save_user_model(model.eval(), tok, family, root, kind)
