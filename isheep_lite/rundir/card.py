"""The model card of a run's final model: `runs/<name>/MODEL_CARD.md`, written when the run ends.

What someone who finds the GGUF elsewhere needs: which base model it came from and under which
licence (as the base GGUF records it — the tuned model inherits it), how it was made (the recipe's
essentials), how each iteration scored on the held-out checks, and where the data and the Ollama
Modelfile are. Front matter in the Hugging Face model-card form, so the file can be uploaded as a
repository's README.md as it is.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from isheep_lite.rundir.files import atomic_write_text
from isheep_lite.rundir.formats import headed
from isheep_lite.rundir.manifest import Manifest
from isheep_lite.rundir.report import eval_rows, fmt_ci
from isheep_lite.stages import BaseSummary, FilterSummary

CARD = "MODEL_CARD.md"


def gguf_general(path: Path) -> dict[str, Any]:
    """The GGUF's general.* metadata (name, license, …), read from its header."""
    from isheep_lite.gguf.header import gguf_info

    return {k: list(v) if isinstance(v, tuple) else v for k, v in gguf_info(path).general}


def model_card(m: Manifest) -> str:
    r = yaml.safe_load((m.root / "recipe.yaml").read_text(encoding="utf-8"))
    base = m.get(0, BaseSummary)
    general = gguf_general(Path(base.gguf)) if base and Path(base.gguf).is_file() else {}
    base_name = general.get("name") or r["model"]["gguf"]
    licence = general.get("license")
    final = Path(m.final_model) if m.final_model else None
    front: dict[str, Any] = {
        **({"license": str(licence)} if licence else {}),
        "base_model_name": str(base_name),
        "tags": ["gguf", "isheep-lite", "self-alignment", "lora"],
    }
    best = m.best.iteration if m.best else 0
    lines = [
        *headed(front, r["name"]),
        f"{base_name}, self-aligned with isheep-lite (I-SHEEP): the model wrote instructions, answered them, graded "
        "its own answers, and was LoRA-tuned on the best-graded pairs, iteration after iteration.",
        "",
        f"- Base model: {base_name} (`{r['model']['gguf']}`); licence: "
        + (f"{licence} (as recorded in the base GGUF; the tuned model is a derivative)" if licence else "not recorded in the base GGUF"),
        f"- Final model: `{final.name if final else '–'}` — M_{best}"
        + (" (no iteration beat the base: the base model)" if best == 0 else f", from iteration {best}"),
        f"- Recipe: {r['loop']['iterations']} iterations of {r['synth']['num_instructions']} instructions; "
        f"self-assessment {r['assess']['aspects']}; keep top {r['filter']['keep_top']}, min score {r['filter']['min_score']}; "
        f"LoRA r {r['train']['lora_r']}, {r['train']['epochs']} epochs at lr {r['train']['lr']}, objective {r['train']['objective']}",
    ]
    if final is not None and final.with_suffix(".Modelfile").is_file():
        lines.append(f"- Ollama: `ollama create {r['name']} -f {final.with_suffix('.Modelfile')}`")
    lines += [
        "",
        "## Held-out checks",
        "",
        "| model | IFEval loose (95 % CI) | IFEval, untrained kinds | held-out set (95 % CI) | knowledge (95 % CI) | suite strict | kept pairs |",
    ]
    lines.append("|---|---|---|---|---|---|---:|")
    for row in eval_rows(m):
        f = m.get(row["t"], FilterSummary) if row["t"] else None
        cells = " | ".join(fmt_ci(row.get(c)) for c in ("ifeval_loose", "ifeval_untrained", "heldout", "knowledge", "strict"))
        lines.append(f"| M_{row['t']}{' (final)' if row['t'] == best else ''} | {cells} | {f.kept if f else '–'} |")
    lines += ["", "Training data of each iteration: `iter_NN/data/` (messages, ShareGPT and Alpaca JSONL, with a dataset card).", ""]
    return "\n".join(lines)


def write(run_dir: Path) -> Path | None:
    """Write the card; a card that cannot be made is one warning line, never the end of a finished run."""
    out = Path(run_dir) / CARD
    try:
        atomic_write_text(out, model_card(Manifest.read(run_dir)))
    except Exception as e:  # noqa: BLE001 - the models are exported already; say what is missing
        print(f"warning: {CARD} not written ({type(e).__name__}: {e})", file=sys.stderr)
        return None
    return out
