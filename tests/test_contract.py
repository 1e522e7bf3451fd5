"""params.yaml, the profiles, the config dataclasses and dvc.yaml agree."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline_steps.corpus import CorpusConfig
from pipeline_steps.evaluate import EvaluateConfig
from pipeline_steps.params import ParamsError, build_config
from pipeline_steps.pretrain import PretrainConfig
from pipeline_steps.profile import merge, render
from pipeline_steps.scaling import ScalingConfig
from pipeline_steps.shards import ShardsConfig
from pipeline_steps.tasks import TasksConfig
from pipeline_steps.tokenizer import TokenizerConfig

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {"corpus": CorpusConfig, "tokenizer": TokenizerConfig, "shards": ShardsConfig, "tasks": TasksConfig,
            "evaluate": EvaluateConfig,
            "pretrain": PretrainConfig, "scaling": ScalingConfig}
PROFILES = sorted(p.stem for p in (ROOT / "profiles").glob("*.yaml"))
STAGE_MODULES = ["corpus", "tokenizer", "shards", "tasks", "pretrain", "scaling", "evaluate",
                 "evaluator", "profile"]


def test_the_four_profiles_exist():
    assert {"debug", "default", "cpu-study", "paper"} <= set(PROFILES)


def test_committed_params_yaml_is_the_default_profile():
    assert yaml.safe_load((ROOT / "params.yaml").read_text()) == render("default", ROOT / "profiles")


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_builds_every_config(profile):
    params = render(profile, ROOT / "profiles")
    assert set(params) == set(SECTIONS)
    for name, cls in SECTIONS.items():
        build_config(cls, params[name], name)


def test_default_yaml_keys_mirror_the_dataclasses():
    """Every field is spelled out in default.yaml, so users see every knob."""
    import dataclasses

    params = render("default", ROOT / "profiles")
    for name, cls in SECTIONS.items():
        fields = {f.name for f in dataclasses.fields(cls)}
        assert set(params[name]) == fields, name


def test_misspelt_keys_fail_loudly_with_their_path():
    params = render("default", ROOT / "profiles")
    params["pretrain"]["train"]["seq_lenght"] = 3
    with pytest.raises(ParamsError, match=r"pretrain\.train: unknown key\(s\) \['seq_lenght'\]"):
        build_config(PretrainConfig, params["pretrain"], "pretrain")
    with pytest.raises(ParamsError, match="corpus.valfraction"):
        merge(render("default", ROOT / "profiles"), {"corpus": {"valfraction": 0.1}})


def test_impossible_sizes_fail_with_the_field():
    params = render("default", ROOT / "profiles")
    params["pretrain"]["groups"]["arm_c1"]["sizes"] = ["3B"]
    with pytest.raises(ParamsError, match=r"pretrain\.groups\.arm_c1.*unknown model size '3B'"):
        build_config(PretrainConfig, params["pretrain"], "pretrain")


def test_dvc_yaml_params_exist_in_every_profile():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for profile in PROFILES:
        params = render(profile, ROOT / "profiles")
        for name, stage in stages.items():
            body = stage.get("do", stage)
            for dotted in body.get("params", []):
                keys = [dotted] if "${key}" not in dotted else [dotted.replace("${key}", k) for k in params["pretrain"]["groups"]]
                for key in keys:
                    node = params
                    for part in key.split("."):
                        assert part in node, f"{profile}: {name} needs params {key}"
                        node = node[part]


@pytest.mark.parametrize("module", STAGE_MODULES)
def test_every_stage_cli_is_documented(module):
    out = subprocess.run([sys.executable, "-m", f"pipeline_steps.{module}", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "usage:" in out.stdout and "--" in out.stdout
