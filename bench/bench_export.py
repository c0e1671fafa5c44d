"""Peak host RAM of the merged export against model size: is it bounded by the base weights in their
stored dtype plus a few tensors, never the whole model in float32?

    python bench/bench_export.py                          # ~1.2 B (1 GB and 5 GB shards) and ~0.57 B, F16
    python bench/bench_export.py --cases 1b:1GB           # one case only

For each case a random Llama-architecture model (vocabulary = SmolLM2's 49152, SmolLM2's own
tokenizer, untied embeddings) is built directly in bfloat16 and saved with
`save_pretrained(max_shard_size=...)` in bfloat16, as real checkpoints are stored; a PEFT LoRA
adapter (r 16, all seven projections, lora_B set to small random values so the merge is not a no-op)
is made for it. Building happens in child processes of its own, so its memory is never measured.
Then, each in a fresh child process:

  baseline   the interpreter with torch, isheep_lite.gguf.export and llama.cpp's converter imported, nothing run
  merge      export.merge_into_dir(hf, adapter, out)                    (step 1 of a merged export alone)
  convert    convert.convert(hf, template, out, "f16")                   (llama.cpp's converter alone, no adapter)
  export     export.export(hf, adapter, template, out, ["f16"])         (merge + convert: the real thing)

Peak RSS is the kernel's high-water mark for that child (`os.wait4` rusage ru_maxrss: anonymous
memory plus mapped file pages). The parent also samples /proc/<pid>/status every 20 ms for the split
into anonymous memory (RssAnon: heap, tensors) and mapped file pages (RssFile: the converter reads the
safetensors through copy-on-write mmaps; those pages are page cache the kernel can drop, not heap).
The template GGUF (tokenizer.*, general.*) is the embedded SmolLM2-135M one (same vocabulary, also `llama`).

"Old approach" numbers are a formula, not a measurement: the whole model in float32 plus a float16
copy = 6 bytes x parameters. The Llama-3.1-8B lines are extrapolations from the measured cases, labelled
as such: (1) the measured peak/disk ratio x 16.1 GB (assumes the peak grows with the whole model);
(2) a line through two model sizes stored in the same shard size (an 8 B checkpoint kept in that shard
size); (3) peak = a + b x weights + c x largest shard fitted to all measured exports, evaluated at
16.1 GB of weights in 5 GB shards (how Llama-3.1-8B is published). The default cases exist to separate
b from c: the same 1.2 B weights in ~1 GB shards and in one 2.25 GB shard, and a 0.57 B model in ~1 GB shards.
Everything is written under one temporary directory in /tmp, removed at exit. Prints a table and
writes bench/results/export-ram.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
GiB = 2**30
TEMPLATE = "embedded:smollm2-135m-instruct"
# name: (hidden, intermediate, layers, heads, kv heads); head_dim 128 in both, vocab 49152
SIZES = {
    "1b": (2048, 8192, 16, 16, 8),  # 1.208e9 parameters
    "0.5b": (1536, 6144, 12, 12, 4),  # 0.566e9 parameters
    "tiny": (256, 512, 2, 4, 2),  # for a quick check of the script itself
}
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LLAMA_31_8B = {"parameters": 8.03e9, "bf16_on_disk_gb": 16.1, "largest_shard_gb": 5.0, "largest_tensor_gb_bf16": 128256 * 4096 * 2 / 1e9}


# ---- children -----------------------------------------------------------------------------------
def child_build(size: str, shards: list[str], out: Path, seed: int) -> dict:
    """The random bf16 model (+ SmolLM2's tokenizer) saved once per shard size, from the same weights."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from isheep_lite.gguf import header

    p = header.resolve_gguf(TEMPLATE)
    tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    hidden, inter, layers, heads, kv = SIZES[size]
    cfg = LlamaConfig(
        vocab_size=49152,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    torch.set_default_dtype(torch.bfloat16)  # parameters are created and initialised in bf16: no float32 copy
    model = LlamaForCausalLM(cfg).eval()
    torch.set_default_dtype(torch.float32)
    model.config.dtype = torch.bfloat16
    n = sum(t.numel() for t in model.parameters())
    dtypes = sorted({str(t.dtype) for t in model.parameters()})
    for shard in shards:
        d = out / f"hf-{shard}"
        model.save_pretrained(str(d), max_shard_size=shard)
        tok.save_pretrained(str(d))
    return {"parameters": n, "dtypes": dtypes}


def child_adapter(hf: Path, out: Path, seed: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.bfloat16)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=PROJECTIONS, task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(seed)
    n = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * 1e-3)
                n += 1
    model.save_pretrained(str(out))
    return {"lora_B_set": n, "adapter_mb": round(sum(f.stat().st_size for f in out.iterdir()) / 1e6, 1)}


def child_measure(step: str, hf: Path, adapter: Path, out: Path) -> dict:
    import torch  # noqa: F401  (imported before the clock starts, as in every step)

    from isheep_lite.gguf import convert, export, header

    template = header.resolve_gguf(TEMPLATE)
    convert.check_converter()  # imports llama.cpp's converter
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result: dict = {}
    if step == "merge":
        export.merge_into_dir(hf, adapter, out / "merged")
        result["output_bytes"] = sum(f.stat().st_size for f in (out / "merged").glob("*.safetensors"))
    elif step == "convert":
        convert.convert(hf, template, out / "model-f16.gguf", "f16")
        result["output_bytes"] = (out / "model-f16.gguf").stat().st_size
    elif step == "export":
        paths = export.export(hf, adapter, template, out, ["f16"])
        result["output_bytes"] = Path(paths["f16"]).stat().st_size
        result["leftovers"] = sorted(p.name for p in out.iterdir() if p.name not in ("model-f16.gguf", "export.json"))
    elif step != "baseline":
        raise SystemExit(f"unknown step {step}")
    result["step_seconds"] = round(time.perf_counter() - t0, 1)
    return result


# ---- parent: run a child, sample its memory, read its rusage ----------------------------------------
def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                    out[k] = int(v.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return out


def run_child(args: list[str]) -> dict:
    """Run `python bench_export.py --child ...`; its JSON result plus wall, ru_maxrss and sampled peaks."""
    t0 = time.perf_counter()
    err = tempfile.TemporaryFile()
    p = subprocess.Popen([sys.executable, __file__, "--child", *args], stdout=subprocess.PIPE, stderr=err)
    peaks = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for k, v in _status(p.pid).items():
                if k in peaks:
                    peaks[k] = max(peaks[k], v)
            time.sleep(0.02)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    stdout = p.stdout.read()  # type: ignore[union-attr]
    _, status, ru = os.wait4(p.pid, 0)
    done.set()
    th.join()
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    r: dict = {
        "wall_s": round(wall, 1),
        "peak_rss_gib": round(ru.ru_maxrss * 1024 / GiB, 3),
        "sampled_peak_anon_gib": round(peaks["RssAnon"] / GiB, 3),
        "sampled_peak_file_mapped_gib": round(peaks["RssFile"] / GiB, 3),
    }
    if p.returncode != 0:
        err.seek(0)
        r["error"] = err.read().decode(errors="replace")[-4000:]
        r["returncode"] = p.returncode
        return r
    r.update(json.loads(stdout.decode().strip().splitlines()[-1]))
    return r


def disk_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.glob("*.safetensors"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="1b:1GB,1b:5GB,0.5b:1GB", help="size:max_shard_size,... (sizes: %s)" % ", ".join(SIZES))
    ap.add_argument("--steps", default="merge,convert,export")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "export-ram.json"))
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "build":
            r = child_build(rest[0], rest[1].split(","), Path(rest[2]), args.seed)
        elif kind == "adapter":
            r = child_adapter(Path(rest[0]), Path(rest[1]), args.seed)
        else:
            r = child_measure(kind, *(Path(x) for x in rest))
        print(json.dumps(r))
        return

    cases = [tuple(c.split(":")) for c in args.cases.split(",")]
    steps = args.steps.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="bench-export-", dir="/tmp"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    built: dict[str, dict] = {}
    rows: list[dict] = []
    try:
        base = run_child(["baseline", str(tmp), str(tmp), str(tmp / "baseline")])
        print(f"baseline (imports only): peak RSS {base['peak_rss_gib']} GiB", flush=True)
        for size in dict.fromkeys(s for s, _ in cases):
            shards = [sh for s, sh in cases if s == size]
            mdir = tmp / size
            mdir.mkdir()
            b = run_child(["build", size, ",".join(shards), str(mdir)])
            if "error" in b:
                raise SystemExit(f"building the {size} model failed:\n{b['error']}")
            a = run_child(["adapter", str(mdir / f"hf-{shards[0]}"), str(mdir / "adapter")])
            if "error" in a:
                raise SystemExit(f"building the {size} adapter failed:\n{a['error']}")
            built[size] = {
                "parameters": b["parameters"],
                "dtypes": b["dtypes"],
                "build_s": b["wall_s"],
                "adapter_build_s": a["wall_s"],
                "adapter_mb": a["adapter_mb"],
                "lora_B_set": a["lora_B_set"],
            }
            print(
                f"built {size}: {b['parameters'] / 1e9:.3f} B parameters {b['dtypes']} in {b['wall_s']} s, "
                f"adapter {a['adapter_mb']} MB in {a['wall_s']} s",
                flush=True,
            )
            if size == "1b" and b["parameters"] < 1.0e9:
                raise SystemExit(f"{size}: only {b['parameters']} parameters (needs >= 1.0e9)")
        for size, shard in cases:
            hf = tmp / size / f"hf-{shard}"
            adapter = tmp / size / "adapter"
            files = sorted(hf.glob("*.safetensors"))
            from safetensors import safe_open

            largest_tensor = 0
            for f in files:
                with safe_open(str(f), framework="numpy") as so:
                    for k in so.keys():
                        sl = so.get_slice(k)
                        n = 1
                        for d in sl.get_shape():
                            n *= d
                        largest_tensor = max(largest_tensor, n * 2)
            info = {
                "size": size,
                "max_shard_size": shard,
                "parameters": built[size]["parameters"],
                "weights_on_disk_gib": round(disk_bytes(hf) / GiB, 3),
                "shards": len(files),
                "largest_shard_gib": round(max(f.stat().st_size for f in files) / GiB, 3),
                "largest_tensor_gib_bf16": round(largest_tensor / GiB, 3),
                "formula_old_fp32_plus_fp16_gib": round(6 * built[size]["parameters"] / GiB, 2),
            }
            for step in steps:
                out = tmp / "out"
                shutil.rmtree(out, ignore_errors=True)
                r = run_child([step, str(hf), str(adapter), str(out)])
                shutil.rmtree(out, ignore_errors=True)
                row = {**info, "step": step, **r}
                row["ratio_peak_to_disk"] = round(r["peak_rss_gib"] / info["weights_on_disk_gib"], 3)
                row["peak_above_baseline_gib"] = round(r["peak_rss_gib"] - base["peak_rss_gib"], 3)
                if "output_bytes" in r:
                    row["output_gib"] = round(row.pop("output_bytes") / GiB, 3)
                rows.append(row)
                print(
                    f"{size} {shard} {step}: "
                    + (
                        f"FAILED\n{r['error']}"
                        if "error" in r
                        else f"{r['wall_s']} s, peak RSS {r['peak_rss_gib']} GiB (anon {r['sampled_peak_anon_gib']}, "
                        f"file-mapped {r['sampled_peak_file_mapped_gib']})"
                    ),
                    flush=True,
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    ok = [r for r in rows if "error" not in r]
    print()
    print(
        "| model | params | shards (largest) | bf16 on disk GiB | step | wall s | peak RSS GiB | anon / file-mapped GiB "
        "| peak − baseline GiB | peak / disk | output GiB | formula: old fp32+fp16 GiB |"
    )
    print("|---|---:|---|---:|---|---:|---:|---|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(
                f"| {r['size']} | {r['parameters'] / 1e9:.3f} B | {r['shards']} ({r['largest_shard_gib']}) | "
                f"{r['weights_on_disk_gib']} | {r['step']} | FAILED: {r['error'].strip().splitlines()[-1]} |"
            )
            continue
        print(
            f"| {r['size']} | {r['parameters'] / 1e9:.3f} B | {r['shards']} ({r['largest_shard_gib']}) | "
            f"{r['weights_on_disk_gib']} | {r['step']} | {r['wall_s']} | {r['peak_rss_gib']} | "
            f"{r['sampled_peak_anon_gib']} / {r['sampled_peak_file_mapped_gib']} | {r['peak_above_baseline_gib']} | "
            f"{r['ratio_peak_to_disk']} | {r.get('output_gib', '—')} | {r['formula_old_fp32_plus_fp16_gib']} |"
        )
    print(f"baseline (interpreter + torch + converter imported, nothing run): {base['peak_rss_gib']} GiB")

    # extrapolation to Llama-3.1-8B from the largest measured export
    extra: dict = {}
    exports = [r for r in ok if r["step"] == "export"]
    if exports:
        ref = max(exports, key=lambda r: (r["parameters"], -r["largest_shard_gib"]))
        disk8 = LLAMA_31_8B["bf16_on_disk_gb"] * 1e9 / GiB
        shard8 = LLAMA_31_8B["largest_shard_gb"] * 1e9 / GiB
        extra = {
            "from": f"{ref['size']} model, {ref['max_shard_size']} shards, export step (measured)",
            "measured_ratio_peak_to_disk": ref["ratio_peak_to_disk"],
            "ratio_extrapolation_gib": round(ref["ratio_peak_to_disk"] * disk8, 2),
            "formula_old_fp32_plus_fp16_gib": round(6 * LLAMA_31_8B["parameters"] / GiB, 2),
            "target": LLAMA_31_8B,
        }
        # how the peak scales: same weights with different shard sizes, and different sizes with the same shard size
        by = {(r["size"], r["max_shard_size"]): r for r in exports}
        if len({(r["weights_on_disk_gib"], r["largest_shard_gib"]) for r in exports}) >= 3:
            # peak = a + b x weights on disk + c x largest shard, fitted to the measured exports (exact with 3)
            import numpy as np

            X = np.array([[1.0, r["weights_on_disk_gib"], r["largest_shard_gib"]] for r in exports])
            y = np.array([r["peak_rss_gib"] for r in exports])
            (a, b, c), *_ = np.linalg.lstsq(X, y, rcond=None)
            extra["disk_and_shard_fit"] = {
                "model": "peak_rss_gib = a + b * weights_on_disk_gib + c * largest_shard_gib",
                "a": round(float(a), 3),
                "b": round(float(b), 3),
                "c": round(float(c), 3),
                "points": [f"{r['size']}:{r['max_shard_size']}" for r in exports],
                "extrapolation_gib": round(float(a + b * disk8 + c * shard8), 2),
            }
        same_shard = [r for r in exports if r["max_shard_size"] == ref["max_shard_size"] and r is not ref]
        if same_shard:  # two model sizes, same shard size: a line through both, extended to 16.1 GB
            lo = min(same_shard, key=lambda r: r["parameters"])
            slope = (ref["peak_rss_gib"] - lo["peak_rss_gib"]) / (ref["weights_on_disk_gib"] - lo["weights_on_disk_gib"])
            extra["two_point_fit"] = {
                "between": [f"{lo['size']}:{lo['max_shard_size']}", f"{ref['size']}:{ref['max_shard_size']}"],
                "slope_gib_ram_per_gib_disk": round(slope, 3),
                "extrapolation_gib": round(ref["peak_rss_gib"] + slope * (disk8 - ref["weights_on_disk_gib"]), 2),
            }
        extra["export_peaks"] = {
            f"{s}:{sh}": {
                "peak_rss_gib": r["peak_rss_gib"],
                "weights_on_disk_gib": r["weights_on_disk_gib"],
                "largest_shard_gib": r["largest_shard_gib"],
            }
            for (s, sh), r in by.items()
        }
        print()
        print(
            f"EXTRAPOLATION (not measured) to Llama-3.1-8B (8.03e9 parameters, 16.1 GB bf16 on disk, 5 GB shards), "
            f"from the measured {extra['from']}:"
        )
        print(
            f"  whole-model scaling, measured peak/disk ratio {ref['ratio_peak_to_disk']} x 16.1 GB: {extra['ratio_extrapolation_gib']} GiB"
        )
        if "two_point_fit" in extra:
            f = extra["two_point_fit"]
            print(
                f"  line through the measured {' and '.join(f['between'])} exports, i.e. an 8 B checkpoint kept in the same shard size (slope {f['slope_gib_ram_per_gib_disk']} "
                f"GiB RAM per GiB of weights): {f['extrapolation_gib']} GiB"
            )
        if "disk_and_shard_fit" in extra:
            f = extra["disk_and_shard_fit"]
            print(
                f"  fit to all measured exports, peak = {f['a']} + {f['b']} x weights GiB + {f['c']} x largest shard GiB "
                f"(16.1 GB weights, 5 GB shards): {f['extrapolation_gib']} GiB"
            )
        print(f"  FORMULA (not measured), old approach, whole model fp32 + fp16 = 6 B/param: {extra['formula_old_fp32_plus_fp16_gib']} GiB")

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = Path(args.out)
    import torch

    path.write_text(
        json.dumps(
            {
                "command": "python bench/bench_export.py " + " ".join(sys.argv[1:]),
                "date": time.strftime("%Y-%m-%d %H:%M"),
                "machine": {
                    "platform": platform.platform(),
                    "machine": platform.machine(),
                    "cpus": os.cpu_count(),
                    "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB, 1),
                    "python": sys.version.split()[0],
                    "torch": torch.__version__,
                },
                "template_gguf": TEMPLATE,
                "outtype": "f16",
                "peak_rss_source": "os.wait4 rusage ru_maxrss of the child (anon + mapped file pages); "
                "anon / file-mapped split sampled from /proc/<pid>/status every 20 ms",
                "baseline": base,
                "models": built,
                "rows": rows,
                "llama_3_1_8b_extrapolation": extra,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
