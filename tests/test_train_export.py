"""Training and export: the loss mask, learning carried end to end, export fidelity."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from isheep_lite import export, models, train
from isheep_lite.engine import Engine, Sampling
from isheep_lite.recipe import TrainConfig

PROMPT = "What is the secret code of the lighthouse?"
ANSWER = "The secret code is BLUE HERON 42."


def test_loss_mask_covers_answer_and_end_of_turn_only(tiny: dict[str, Path], tmp_path: Path) -> None:
    convo = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": ANSWER}]
    examples, dropped = train.build_examples([convo], tiny["gguf"], 512)
    assert dropped == 0
    trainer = train.make_trainer(tiny["hf"], examples * 2, TrainConfig(batch_size=2), tmp_path, seed=0)
    batch = next(iter(trainer.get_train_dataloader()))
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    info = models.gguf_info(tiny["gguf"])
    with Engine(tiny["gguf"], n_ctx=256) as e:
        prompt, completion = models.split_prompt_completion(info, convo)
        n_prompt = len(e.tokenize(prompt))
        eot = e.llm.token_eos()
    assert all(x == -100 for x in labels[:n_prompt]), "prompt tokens must carry no loss"
    trained = [t for t in labels if t != -100]
    assert trained == ids[n_prompt:len(trained) + n_prompt]
    assert eot in trained, "the end-of-turn token must be inside the loss mask"
    assert completion.startswith(ANSWER)


def test_learning_is_carried_to_the_exported_gguf(tiny: dict[str, Path], tmp_path: Path) -> None:
    """Teach one distinctive answer; the exported GGUF gives it greedily in llama.cpp, the base does not."""
    convo = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": ANSWER}]
    cfg = TrainConfig(lora_r=16, lora_alpha=32, lora_dropout=0.0, lr=1e-2, epochs=40, batch_size=4, warmup_steps=0)
    result = train.train([convo] * 4, tiny["hf"], tiny["gguf"], tmp_path, cfg, seed=0)
    assert result["loss_last"] < result["loss_first"]
    paths = export.export(tiny["hf"], tmp_path / "adapter", tiny["gguf"], tmp_path, ["f16"])
    greedy = Sampling(temperature=0.0, max_tokens=32)
    chat = [{"role": "user", "content": PROMPT}]
    with Engine(Path(paths["f16"]), n_ctx=256) as tuned:
        out = tuned.chat(chat, greedy)
    with Engine(tiny["gguf"], n_ctx=256) as base:
        before = base.chat(chat, greedy)
    assert out.text.strip() == ANSWER and out.finish_reason == "stop"
    assert ANSWER not in before.text


def test_permute_qk_is_the_inverse_of_transformers_reader() -> None:
    """transformers un-permutes llama Q/K rows when it reads a GGUF; our writer must re-permute."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    w = np.random.default_rng(0).standard_normal((16, 6)).astype(np.float32)
    reader = LlamaTensorProcessor(config={"num_attention_heads": 4, "num_key_value_heads": 2})
    q = reader.process(export.permute_qk(w, 4), "blk.0.attn_q.weight").weights
    k = reader.process(export.permute_qk(w, 2), "blk.0.attn_k.weight").weights
    np.testing.assert_array_equal(q, w)
    np.testing.assert_array_equal(k, w)
    assert not np.array_equal(export.permute_qk(w, 4), w)


@pytest.mark.slow
def test_export_fidelity_real_model(smol_gguf: Path, smol_hf: Path, tmp_path: Path) -> None:
    """F16 GGUF in llama.cpp vs the same weights in transformers: greedy next token at ≥ 95% of 60 positions."""
    import torch
    from transformers import AutoModelForCausalLM

    paths = export.export(smol_hf, None, smol_gguf, tmp_path, ["f16"])
    text = (
        "The river town woke slowly. Fishermen pulled their boats onto the shore, children ran to school "
        "along the narrow streets, and the baker opened his shop as the smell of fresh bread filled the air. "
        "By noon the market was crowded with people buying fruit, cloth and spices from distant cities."
    )
    with Engine(Path(paths["f16"]), n_ctx=512) as e:
        ids = e.tokenize(text)[:61]
        llama_next = []
        for n in range(1, len(ids)):
            e.llm.n_tokens = 0
            e.llm.eval(ids[:n])
            logits = np.ctypeslib.as_array(e.llm._ctx.get_logits(), shape=(e.llm.n_vocab(),))
            llama_next.append(int(logits.argmax()))
    model = AutoModelForCausalLM.from_pretrained(str(smol_hf), dtype=torch.float32)
    with torch.no_grad():
        hf_next = model(torch.tensor([ids])).logits[0, :-1].argmax(-1).tolist()
    assert len(hf_next) == len(llama_next) >= 50
    agree = sum(a == b for a, b in zip(hf_next, llama_next)) / len(hf_next)
    assert agree >= 0.95, f"greedy next-token agreement {agree:.2%}"
