"""recipe.py: defaults, the generated commented recipe, declared choices and ranges, overrides, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from isheep_lite import config, recipe
from isheep_lite.recipe import UserError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_validate_and_shipped_default_recipe_matches_them() -> None:
    r = recipe.load()
    assert r.model.gguf == "embedded:smollm2-135m-instruct"
    assert r.synth.num_instructions >= 100
    shipped = recipe.load(ROOT / "recipes" / "smollm2" / "135m_lora_cpu.yaml")
    assert shipped.to_dict() == r.to_dict()


def test_shipped_default_recipe_is_the_generated_reference() -> None:
    """Field docs live once (config.py); the commented default recipe is generated from them."""
    text = (ROOT / "recipes" / "smollm2" / "135m_lora_cpu.yaml").read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    header = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    body = "".join(lines[header:])
    assert body == recipe.commented_yaml(), "regenerate the recipe's body with: isheep recipe --comments"
    every_key = [f"{s}.{k}" if s else k for s, k, f in config.fields()]
    undocumented = [k for k, (_, _, f) in zip(every_key, config.fields()) if not f.metadata.get("doc")]
    assert not undocumented and len(every_key) > 60


def test_field_declarations_are_the_checks() -> None:
    """Choices come from Literal types and ranges from knob(): the same table validates and documents."""
    assert config.choices(config.ModelConfig, "backend") == ("llama_cpp", "transformers", "openai")
    for s, k, f in config.fields():
        options = config.choices(type(getattr(config.Recipe(), s)) if s else config.Recipe, k)
        if options:
            with pytest.raises(UserError, match=f"{s}.{k} must be one of"):
                recipe.load(None, [f"{s}.{k}=not-a-choice"])
        if f.metadata.get("gt") == 0:
            with pytest.raises(UserError, match=rf"{s}.{k} must be (> 0|in \(0, )"):
                recipe.load(None, [f"{s}.{k}=0"])


def test_overrides_are_typed_yaml_values() -> None:
    r = recipe.load(None, ["synth.num_instructions=64", "filter.keep_top=null", "train.lr=2e-4", "export.types=f16,q8_0"])
    assert r.synth.num_instructions == 64 and r.filter.keep_top is None
    assert r.train.lr == pytest.approx(2e-4) and r.export.types == ["f16", "q8_0"]


@pytest.mark.parametrize(
    "override, words",
    [
        ("synth.num_instrucions=5", "did you mean 'num_instructions'"),
        ("synht.num_instructions=5", "did you mean 'synth'"),
        ("synth.num_instructions=abc", "must be int"),
        ("synth.num_instructions=0", "must be > 0"),
        ("loop.train_from=prev", "must be one of"),
        ("filter.keep_top=1.5", "filter.keep_top"),
        ("assess.scale=10", "one token per score"),
        ("export.types=q8_0", "master export"),
        ("filter.max_ifd=1.0", "needs assess.ifd: true"),
        ("assess.mode=guess", "assess.mode must be one of"),
        ("filter.rank_by=score+ifd", "needs assess.ifd: true"),
        ("filter.rank_by=random", "filter.rank_by must be one of"),
        ("assess.enabled=false", "rule filters alone"),
        ("assess.aspects=[quality,style]", "assess.aspects must be"),
        ("train.objective=dpo", "synth.responses_per_instruction ≥ 2"),
        ("synth.responses_per_instruction=0", "synth.responses_per_instruction must be in [1, 16]"),
        ("noequals", "section.key=value"),
    ],
)
def test_bad_recipe_values_are_one_line_errors(override: str, words: str) -> None:
    with pytest.raises(UserError) as e:
        recipe.load(None, [override])
    assert words in str(e.value) and "\n" not in str(e.value)


def test_no_assessment_needs_only_the_filters_switched_off() -> None:
    # calibration is on by default and only changes how grades are made, so it never blocks the ablation
    r = recipe.load(None, ["assess.enabled=false", "filter.keep_top=null"])
    assert r.assess.calibrate and not r.assess.enabled
    with pytest.raises(UserError, match="assess.ifd: false"):
        recipe.load(None, ["assess.enabled=false", "filter.keep_top=null", "assess.ifd=true"])


def test_bad_yaml_file_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text("synth:\n  num_instructions: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        recipe.load(p)
    with pytest.raises(UserError, match="not found"):
        recipe.load(tmp_path / "missing.yaml")
