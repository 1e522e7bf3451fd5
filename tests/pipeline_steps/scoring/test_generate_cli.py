"""`smdm-generate`: a run prints text, `--json` its record, and each bad flag one line (exit 2).

CLI calls cost ~3 s of imports each, so a few go through the real command line and the rest of the
checks through `generate_text`, the function the CLI calls."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.artifact import TOKENIZER
from pipeline_steps.core.errors import InputError
from pipeline_steps.scoring import evaluator
from pipeline_steps.scoring.generate_cli import DEFAULT_LENGTH, generate_text
from tests.cli_errors import ROOT, cli, one_line_error
from tests.pipeline_steps.scoring.test_evaluator import make_artifact

MODULE = ["-m", "pipeline_steps.scoring.generate_cli"]
CONTEXT = 32


@pytest.fixture(scope="module")
def models(tiny_data, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("generate")
    tok = tiny_data["tokenizer"] / TOKENIZER
    return {family: make_artifact(root / family, family, tok, context=CONTEXT) for family in ("mdm", "arm")}


@pytest.fixture(scope="module")
def loaded(models) -> dict[str, evaluator.LoadedModel]:
    return {family: evaluator.load_model(folder) for family, folder in models.items()}


def test_the_cli_prints_text_and_json(models):
    text = cli([*MODULE, "--model", str(models["mdm"]), "--prompt", "the house of the", "--length", "8"], ROOT)
    assert text.returncode == 0 and text.stdout.strip(), text.stderr[-2000:]
    record = cli([*MODULE, "--model", str(models["arm"]), "--prompt", "she was", "--length", "6",
                  "--temperature", "1", "--seed", "3", "--json"], ROOT)
    assert record.returncode == 0, record.stderr[-2000:]
    result = json.loads(record.stdout)
    assert {"tokens", "text", "forward_passes", "seconds"} <= result.keys()
    assert result["family"] == "arm" and 1 <= len(result["tokens"]) <= 6
    assert result["forward_passes"] == len(result["tokens"])


def test_the_cli_refuses_bad_flags_in_one_line(models, tmp_path):
    missing = cli([*MODULE, "--model", str(tmp_path / "nowhere"), "--prompt", "x"], ROOT)
    one_line_error(missing, "smdm-generate", "nowhere", "not a model artifact folder")
    sampler = cli([*MODULE, "--model", str(models["mdm"]), "--prompt", "x", "--sampler", "greedy"], ROOT)
    one_line_error(sampler, "--sampler", "greedy", "confidence")
    steps = cli([*MODULE, "--model", str(models["mdm"]), "--prompt", "x", "--steps", "0"], ROOT)
    one_line_error(steps, "--steps", "positive", "got 0")


def test_mdm_json_record_and_defaults(loaded):
    result = generate_text(loaded["mdm"], "the house of the", temperature=1.0, seed=1)
    assert result["sampler"] == "confidence" and result["cfg_scale"] == 0.0
    assert result["length"] == min(DEFAULT_LENGTH, CONTEXT - result["prompt_tokens"]) == result["steps"]
    assert len(result["tokens"]) <= result["length"] and result["forward_passes"] == result["steps"]
    again = generate_text(loaded["mdm"], "the house of the", temperature=1.0, seed=1)
    assert again["tokens"] == result["tokens"]  # seeded


def test_ancestral_with_cfg_counts_both_halves_and_skips_silent_steps(loaded):
    result = generate_text(loaded["mdm"], "she was", sampler="ancestral", steps=32, length=8, cfg=0.5,
                           temperature=1.0, block_length=4)
    assert result["forward_passes"] < 2 * 32  # both halves per computed row, silent steps skipped


BAD = {
    "steps": (dict(steps=0), "--steps", "got 0"),
    "negative temperature": (dict(temperature=-1.0), "--temperature", "got -1.0"),
    "length past the context": (dict(length=CONTEXT), "--length", "exceeds the model's context 32"),
    "zero length": (dict(length=0), "--length", "positive"),
    "prompt past the context": (dict(text="the house of the river " * 20), "--prompt", "context is 32"),
    "confidence steps": (dict(steps=9, length=8), "--steps", "cannot exceed the 8 masked tokens"),
    "first hitting steps": (dict(sampler="first_hitting", steps=4, length=8), "steps must equal length"),
    "blocks": (dict(length=8, block_length=3), "--block-length", "divisor"),
    "cfg": (dict(cfg=float("inf")), "--cfg", "finite"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_settings_name_their_flag(loaded, case):
    kwargs, *needles = BAD[case]
    kwargs = {"text": "the house", **kwargs}
    with pytest.raises(InputError) as err:
        generate_text(loaded["mdm"], kwargs.pop("text"), **kwargs)
    assert all(n in str(err.value) for n in needles) and "\n" not in str(err.value), str(err.value)


def test_the_arm_refuses_the_mdm_options(loaded):
    with pytest.raises(InputError, match="--sampler, --cfg: .* ARM"):
        generate_text(loaded["arm"], "the house", sampler="ancestral", cfg=0.5)
    result = generate_text(loaded["arm"], "the house", length=5)
    assert result["forward_passes"] == len(result["tokens"]) <= 5
