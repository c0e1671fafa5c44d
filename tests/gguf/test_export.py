"""Training and export: the loss mask, learning carried end to end, export fidelity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from isheep_lite.config import TrainConfig
from isheep_lite.engines.base import Sampling
from isheep_lite.engines.llamacpp import Engine
from isheep_lite.gguf import chat, export, header
from isheep_lite.training import encode, fit, train

PROMPT = "What is the secret code of the lighthouse?"
ANSWER = "The secret code is BLUE HERON 42."


def test_loss_mask_covers_answer_and_end_of_turn_only(tiny: dict[str, Path], tmp_path: Path) -> None:
    convo = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": ANSWER}]
    examples, dropped = encode.build_examples([convo], tiny["gguf"], 512)
    assert dropped == 0
    trainer = fit.make_trainer(tiny["hf"], examples * 2, TrainConfig(batch_size=2), tmp_path, seed=0)
    batch = next(iter(trainer.get_train_dataloader()))
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    info = header.gguf_info(tiny["gguf"])
    with Engine(tiny["gguf"], n_ctx=256) as e:
        prompt, completion = chat.split_prompt_completion(info, convo)
        n_prompt = len(e.tokenize(prompt))
        eot = e.llm.token_eos()
    assert all(x == -100 for x in labels[:n_prompt]), "prompt tokens must carry no loss"
    trained = [t for t in labels if t != -100]
    assert trained == ids[n_prompt : len(trained) + n_prompt]
    assert eot in trained, "the end-of-turn token must be inside the loss mask"
    assert completion.startswith(ANSWER)


@pytest.mark.slow
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


def _random_adapter(hf: Path, out: Path, seed: int, **lora: object) -> Path:
    """A PEFT LoRA on every projection with random A and B (a trained adapter's shape, nonzero delta)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(target_modules=targets, init_lora_weights=False, **lora))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(20.0)  # large enough to move the tiny model's next-token distribution
    peft_model.save_pretrained(str(out))
    return out


@pytest.mark.slow
def test_gguf_lora_adapters_equal_the_merged_export(tiny: dict[str, Path], tmp_path: Path) -> None:
    """Base GGUF + GGUF adapters in llama.cpp (one, or two stacked as train_from=previous makes them)
    give the merged export's log-probs and greedy text, in the batched context too."""
    import json

    config = json.loads((tiny["hf"] / "config.json").read_text())
    a1 = _random_adapter(tiny["hf"], tmp_path / "a1", 1, r=8, lora_alpha=16)
    hf1 = tmp_path / "hf1"
    export.save_merged_hf(tiny["hf"], a1, hf1)
    a2 = _random_adapter(hf1, tmp_path / "a2", 2, r=4, lora_alpha=8, use_rslora=True)
    g1, g2 = tmp_path / "a1.gguf", tmp_path / "a2.gguf"
    export.write_lora_gguf(a1, config, tiny["gguf"], g1, "f32")
    export.write_lora_gguf(a2, config, tiny["gguf"], g2, "f16")
    assert g1.stat().st_size < tiny["gguf"].stat().st_size / 4
    (tmp_path / "m1").mkdir(), (tmp_path / "m2").mkdir()
    merged1 = export.export(tiny["hf"], a1, tiny["gguf"], tmp_path / "m1", ["f32"])["f32"]
    merged2 = export.export(hf1, a2, tiny["gguf"], tmp_path / "m2", ["f32"])["f32"]

    prompts = [f"<|im_start|>user\nName a colour number {i}.<|im_end|>\n<|im_start|>assistant\n" for i in range(6)]
    ids = list(range(200, 260))
    greedy = [Sampling(max_tokens=12)] * len(prompts)
    with Engine(tiny["gguf"], n_ctx=256, n_parallel=4) as base:
        plain = base.score_many(prompts, ids)
    for merged, adapters in ((merged1, [g1]), (merged2, [g1, g2])):
        with Engine(Path(merged), n_ctx=256, n_parallel=4) as m:
            want, want_text = m.score_many(prompts, ids), [c.text for c in m.generate(prompts, greedy)]
        with Engine(tiny["gguf"], n_ctx=256, n_parallel=4, adapters=adapters) as e:
            got, got_text = e.score_many(prompts, ids), [c.text for c in e.generate(prompts, greedy)]
            single = e.next_token_logprobs(prompts[0], ids)
        assert np.abs(np.array(got) - np.array(want)).max() < 5e-3
        assert np.abs(np.array(single) - np.array(want[0])).max() < 5e-3
        assert np.abs(np.array(plain) - np.array(want)).max() > 0.5, "the adapter must change the model"
        assert sum(a == b for a, b in zip(got_text, want_text)) >= 5


def test_gguf_adapter_refuses_what_it_cannot_hold(tiny: dict[str, Path], tmp_path: Path) -> None:
    import json

    from isheep_lite.recipe import UserError

    config = json.loads((tiny["hf"] / "config.json").read_text())
    dora = _random_adapter(tiny["hf"], tmp_path / "dora", 3, r=4, lora_alpha=8, use_dora=True)
    with pytest.raises(UserError, match="DoRA"):
        export.write_lora_gguf(dora, config, tiny["gguf"], tmp_path / "dora.gguf")
    assert not list(tmp_path.glob("*.gguf*")), "nothing half-written"
    with pytest.raises(UserError, match="could not load the LoRA adapter"):
        Engine(tiny["gguf"], n_ctx=256, adapters=[tiny["gguf"]])


@pytest.mark.slow
def test_adapter_mode_loop_serves_adapter_chains_and_exports_the_final_model_merged(tmp_path: Path, smol_hf: Path) -> None:
    """export.mode=adapter, train_from=previous, two iterations on the embedded model: no merged GGUF
    per iteration, M_2 served as base + Δ_1 + Δ_2, and the final merged export answers as that chain does."""
    from isheep_lite import loop, recipe
    from isheep_lite.engines import serving

    r = recipe.load(
        None,
        [
            f"runs_dir={tmp_path}",
            "name=adapters",
            "export.mode=adapter",
            "loop.train_from=previous",
            "loop.promote=latest",
            "loop.iterations=2",
            "synth.num_instructions=5",
            "synth.verifiable_fraction=0",  # a handful of answers: a broken constraint could leave none to train on
            "assess.enabled=false",
            "filter.keep_top=null",
            "synth.response_max_tokens=96",
            "train.epochs=1",
            "eval.stop_prompts=0",
            "eval.ifeval_prompts=0",
            "eval.suite_prompts=0",
            "eval.heldout_prompts=0",
            "eval.knowledge_questions=0",
        ],
    )
    store = loop.run(r)
    its = store.manifest["iterations"]
    a1, a2 = (Path(its[t]["export"]["files"]["adapter"]) for t in ("1", "2"))
    assert a1.is_file() and a2.is_file() and a1.stat().st_size < 20e6
    assert not list((tmp_path / "adapters" / "iter_01").glob("model-*.gguf")), "adapter mode writes no merged GGUF per iteration"
    best = store.manifest["best"]
    assert best["iteration"] == 2 and best["adapters"] == [str(a1), str(a2)]
    final = Path(store.manifest["final_model"])
    assert final == tmp_path / "adapters" / "iter_02" / "model-f16.gguf" and its["2"]["final_export"]["status"] == "done"
    prompts = [
        [{"role": "user", "content": q}]
        for q in ("Name three fruits.", "What is 12 plus 7?", "Write a haiku about rain.", "Say hello in French.")
    ]
    greedy = [Sampling(max_tokens=48)] * len(prompts)
    with serving.open_engine(serving.Served(Path(best["gguf"]), (a1, a2)), r) as chain:
        want = [c.text for c in chain.chat_many(prompts, greedy)]
    with Engine(final, n_ctx=1024) as merged:
        got = [c.text for c in merged.chat_many(prompts, greedy)]
    assert sum(a == b for a, b in zip(got, want)) >= 3, (got, want)
