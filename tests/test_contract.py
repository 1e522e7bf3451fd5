"""params.yaml, the profiles, the config dataclasses and dvc.yaml agree."""
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline_steps.core.params import ParamsError, build_config, section
from pipeline_steps.core.profile import merge, render
from pipeline_steps.corpus import CorpusConfig
from pipeline_steps.evaluate import EvaluateConfig
from pipeline_steps.generate import GenerateConfig
from pipeline_steps.gsm8k import Gsm8kConfig
from pipeline_steps.report import ReportConfig
from pipeline_steps.reversal import ReversalConfig
from pipeline_steps.scaling import ScalingConfig
from pipeline_steps.shards import ShardsConfig
from pipeline_steps.tasks import TasksConfig
from pipeline_steps.temporal import TemporalConfig
from pipeline_steps.tokenizer import TokenizerConfig
from pipeline_steps.training.config import PretrainConfig
from pipeline_steps.training.finetune_config import FinetuneConfig
from tests.cli_errors import cli, one_line_error

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {"corpus": CorpusConfig, "tokenizer": TokenizerConfig, "shards": ShardsConfig, "tasks": TasksConfig,
            "evaluate": EvaluateConfig, "generate": GenerateConfig,
            "pretrain": PretrainConfig, "scaling": ScalingConfig, "finetune": FinetuneConfig,
            "gsm8k": Gsm8kConfig, "reversal": ReversalConfig, "temporal": TemporalConfig,
            "report": ReportConfig}
PROFILES = sorted(p.stem for p in (ROOT / "profiles").glob("*.yaml"))
CLIS = [f"pipeline_steps.{stage}" for stage in SECTIONS] + [
    "pipeline_steps.scoring.evaluator", "pipeline_steps.core.profile"]


def test_the_stages_config_classes_are_the_annotations_of_their_run():
    from flows.cli import stage_configs

    assert stage_configs() == SECTIONS


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


def nested_fields(cls, values: dict, where: str):
    """(where, field, hint, value) of every field of `cls` and of the dataclasses nested in it."""
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value = values[f.name]
        yield where, f, hints[f.name], value
        if dataclasses.is_dataclass(hints[f.name]):
            yield from nested_fields(hints[f.name], value, f"{where}.{f.name}")


def test_default_yaml_keys_mirror_the_dataclasses():
    """Every field, nested ones included, is spelled out in default.yaml: users see every knob."""
    params = render("default", ROOT / "profiles")
    for name, cls in SECTIONS.items():
        assert set(params[name]) == {f.name for f in dataclasses.fields(cls)}, name
        for where, f, hint, value in nested_fields(cls, params[name], name):
            if dataclasses.is_dataclass(hint):
                assert set(value) == {g.name for g in dataclasses.fields(hint)}, f"{where}.{f.name}"


def test_dataclass_defaults_equal_the_default_profile():
    """One home for every default: a field's default is default.yaml's value, or it has none."""
    params = render("default", ROOT / "profiles")
    drift = []
    for name, cls in SECTIONS.items():
        built = build_config(cls, params[name], name)
        for where, f, _, _ in nested_fields(cls, params[name], name):
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                continue  # required: the profile is its only home
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            node = built
            for part in [*where.split(".")[1:], f.name]:
                node = getattr(node, part)
            if default != node:
                drift.append(f"{where}.{f.name}: dataclass {default!r} != default.yaml {node!r}")
    assert not drift, "\n".join(drift)


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
            foreach = section(params, stage["foreach"].strip("${}")) if "foreach" in stage else {}
            for dotted in body.get("params", []):
                keys = [dotted] if "${key}" not in dotted else [dotted.replace("${key}", k) for k in foreach]
                for key in keys:
                    node = params
                    for part in key.split("."):
                        assert part in node, f"{profile}: {name} needs params {key}"
                        node = node[part]
        # what the fine-tuning and reversal stages depend on exists in the profile
        for name, group in params["finetune"]["groups"].items():
            assert group["base"].split("/")[0] in params["pretrain"]["groups"], f"{profile}: finetune.groups.{name}.base"
        assert {params["reversal"]["mdm"], params["reversal"]["arm"]} <= set(params["finetune"]["groups"]), profile
        assert {params["generate"]["sft_mdm"], params["generate"]["sft_mdm_cfg"]} <= set(params["finetune"]["groups"])


# Every CLI's `main(["--help"])` in ONE interpreter: a process per module paid ~5 s of imports
# each (15 modules); the `__main__` guard that `python -m` runs is checked in the source.
HELP_ALL = """
import contextlib, importlib, io, json, sys
helps = {}
for name in sys.argv[1:]:
    text, code = io.StringIO(), None
    with contextlib.redirect_stdout(text):
        try:
            importlib.import_module(name).main(["--help"])
        except SystemExit as stop:
            code = stop.code
    helps[name] = [code, text.getvalue()]
print(json.dumps(helps))
"""


def test_every_stage_cli_is_documented():
    out = subprocess.run([sys.executable, "-c", HELP_ALL, *CLIS], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    helps = json.loads(out.stdout.splitlines()[-1])
    for module in CLIS:
        code, text = helps[module]
        assert code == 0 and "usage:" in text and "--debug" in text, module
        source = (ROOT / (module.replace(".", "/") + ".py")).read_text()
        assert 'if __name__ == "__main__":\n    raise SystemExit(main())' in source, module


@pytest.mark.slow
@pytest.mark.parametrize("stage", sorted(SECTIONS))
def test_every_stage_says_what_is_wrong_with_its_params_in_one_line(stage, tmp_path):
    group = {"pretrain": ["--group", "arm_base"], "finetune": ["--group", "reversal_mdm"]}.get(stage, [])
    params = render("default", ROOT / "profiles")
    missing = tmp_path / "absent.yaml"
    one_line_error(cli(["-m", f"pipeline_steps.{stage}", "--params", str(missing), *group], tmp_path),
                   str(missing), "smdm-profile")
    broken = tmp_path / "broken.yaml"
    broken.write_text("corpus: [unclosed\n")
    one_line_error(cli(["-m", f"pipeline_steps.{stage}", "--params", str(broken), *group], tmp_path),
                   str(broken), "YAML")
    section = params[stage]["train"] if stage == "pretrain" else params[stage]
    section["no_such_knob"] = 1
    misspelt = tmp_path / "params.yaml"
    misspelt.write_text(yaml.safe_dump(params))
    out = cli(["-m", f"pipeline_steps.{stage}", "--params", str(misspelt), *group], tmp_path)
    one_line_error(out, "no_such_knob", "unknown key")
    debug = cli(["-m", f"pipeline_steps.{stage}", "--params", str(misspelt), *group, "--debug"], tmp_path)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ParamsError" in debug.stderr


@pytest.mark.slow
def test_profile_and_run_refuse_an_unknown_profile_before_starting_anything(tmp_path):
    one_line_error(cli(["-m", "pipeline_steps.core.profile", "nope", "--out", str(tmp_path / "p.yaml")],
                       ROOT), "nope", "profiles")
    assert not (tmp_path / "p.yaml").exists()
    shutil.copytree(ROOT / "profiles", tmp_path / "profiles")
    one_line_error(cli(["-m", "flows", "up", "--root", str(tmp_path), "--profile", "nope"], ROOT),
                   "smdm-run", "nope")
    (tmp_path / "profiles" / "bad.yaml").write_text("pretrain:\n  optim:\n    lr: 5\n")
    try:
        one_line_error(cli(["-m", "flows", "up", "--root", str(tmp_path), "--profile", "bad"], ROOT),
                       "smdm-run", "pretrain.optim", "lr must be in (0, 1)")
        assert not (tmp_path / ".smdm").exists()  # no server, no serve process, no layout written
    finally:  # had it started anything, stop it
        cli(["-m", "flows", "down", "--root", str(tmp_path)], ROOT)
