"""Bad inputs of `smdm-evaluate` and the `evaluate` stage end as one line naming the file or value,
exit status 2, no traceback: broken model artifacts, bad arguments, a device this machine lacks,
and early stopping of the mc estimator at eps = 0 (biased: model/likelihood.check_early_stopping)."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from model.artifact import CONFIG, TOKENIZER, WEIGHTS, ArtifactError, load_artifact, sha256_file
from pipeline_steps import evaluate
from pipeline_steps.core.errors import InputError
from pipeline_steps.core.params import ParamsError, build_config
from pipeline_steps.core.tracking import NullTracker
from pipeline_steps.data.task_sources.items import write_jsonl
from pipeline_steps.scoring import evaluator
from pipeline_steps.scoring.lm_eval_models import SmdmMDM
from tests.cli_errors import ROOT, cli, one_line_error
from tests.pipeline_steps.scoring.test_evaluator import MC_ITEMS, make_artifact
from tests.pipeline_steps.test_evaluate import TASKS, greedy_items, mc_items, tiny_config

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


@pytest.fixture(scope="module")
def bad(tiny_data, tmp_path_factory) -> dict[str, Path]:
    """A good MDM and ARM, and three broken copies of the MDM, one fault each."""
    root = tmp_path_factory.mktemp("bad_eval")
    tok = tiny_data["tokenizer"] / TOKENIZER
    folders = {family: make_artifact(root / family, family, tok) for family in ("mdm", "arm")}
    for name in ("truncated", "family", "tokenizer"):
        folders[name] = Path(shutil.copytree(folders["mdm"], root / name))
    weights = folders["truncated"] / WEIGHTS
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # an interrupted copy
    shutil.copy(folders["arm"] / WEIGHTS, folders["family"] / WEIGHTS)  # ARM weights, MDM config
    with open(folders["tokenizer"] / TOKENIZER, "ab") as handle:  # not the tokenizer it was trained with
        handle.write(b"\0")
    write_jsonl(root / "mc.jsonl", MC_ITEMS)
    return {**folders, "items": root / "mc.jsonl", "root": root}


ARTIFACT_FAULTS = {
    "truncated": (WEIGHTS, "truncated or not a safetensors file"),
    "family": (WEIGHTS, "holds 'arm' weights", "says family 'mdm'"),
    "tokenizer": (TOKENIZER, "differs from tokenizer_hash"),
}


@pytest.mark.parametrize("fault", ARTIFACT_FAULTS)
def test_broken_artifacts_are_refused_naming_the_file(bad, fault):
    _, *needles = ARTIFACT_FAULTS[fault]
    with pytest.raises(ArtifactError) as err:  # model/: a plain ValueError subclass
        load_artifact(bad[fault])
    assert all(n in str(err.value) for n in needles) and "\n" not in str(err.value)
    with pytest.raises(InputError, match=needles[0]):  # the scoring side: the user's input
        evaluator.load_model(bad[fault])
    load_artifact(bad["mdm"])  # the intact original loads


def test_artifacts_carry_the_tokenizer_hash_and_a_wrong_config_is_named(bad, tmp_path):
    config = json.loads((bad["mdm"] / CONFIG).read_text())
    assert config["tokenizer_hash"] == sha256_file(bad["mdm"] / TOKENIZER)
    older = Path(shutil.copytree(bad["tokenizer"], tmp_path / "older"))  # pretrain's record has the hash too
    hash_ = config.pop("tokenizer_hash")
    (older / CONFIG).write_text(json.dumps({**config, "run": {"tokenizer_hash": hash_}}))
    with pytest.raises(ArtifactError, match="differs from tokenizer_hash"):
        load_artifact(older)
    broken = Path(shutil.copytree(bad["mdm"], tmp_path / "broken"))
    (broken / CONFIG).write_text(json.dumps({**config, "family": "arm"}))
    with pytest.raises(ArtifactError, match="family 'arm' disagrees with model.family 'mdm'"):
        load_artifact(broken)
    (broken / CONFIG).write_text("{not json")
    with pytest.raises(ArtifactError, match="config.json: not a model config"):
        load_artifact(broken)


def evaluate_main(capsys, *args: str) -> str:
    """evaluator.main in-process: exit status 2 and one stderr line, no traceback; returns it."""
    try:
        code = evaluator.main(list(args))
    except SystemExit as exit_:  # argparse
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


BAD_ARGUMENTS = {
    "pad_to": (["--pad-to", "abc"], "argument --pad-to", "'abc'", "integer"),
    "device": (["--device", "cuda"], "--device", "CUDA is not available"),
    "device_name": (["--device", "gpu"], "--device", "'gpu' is not a torch device"),
    "mc_early_stop": (["--method", "mc", "--target-stderr", "0.1"], "target_stderr=0.1", "eps > 0", "l_uniform"),
    "samples": (["--samples", "many"], "argument --samples", "'many'"),
}


@NO_CUDA
@pytest.mark.parametrize("case", BAD_ARGUMENTS)
def test_bad_arguments_are_one_line_before_the_model_loads(bad, capsys, case):
    args, *needles = BAD_ARGUMENTS[case]
    # the truncated artifact shows the argument is checked before any model is read
    line = evaluate_main(capsys, "--model", str(bad["truncated"]), "--items", str(bad["items"]), *args)
    assert line.startswith("smdm-evaluate: ") and all(n in line for n in needles), line


@pytest.mark.parametrize("fault", ARTIFACT_FAULTS)
def test_broken_artifacts_through_the_evaluator(bad, capsys, fault):
    file, *needles = ARTIFACT_FAULTS[fault]
    line = evaluate_main(capsys, "--model", str(bad[fault]), "--items", str(bad["items"]), "--method", "chain")
    assert str(bad[fault] / file) in line and all(n in line for n in needles), line


def test_l_uniform_and_eps_above_0_may_stop_early(bad, tmp_path):
    for extra in (["--method", "l_uniform"], ["--method", "mc", "--eps", "0.1"]):
        assert evaluator.main(["--model", str(bad["mdm"]), "--items", str(bad["items"]), "--samples", "32",
                               "--block", "4", "--target-stderr", "5", "--out", str(tmp_path / "r.json"),
                               *extra]) == 0
    with pytest.raises(ValueError, match="l_uniform"):
        SmdmMDM(pretrained=str(bad["mdm"]), method="mc", target_stderr=0.1)
    with pytest.raises(ValueError, match="l_uniform"):  # its rolling log-likelihood draws mc
        SmdmMDM(pretrained=str(bad["mdm"]), method="chain", target_stderr=0.1)
    SmdmMDM(pretrained=str(bad["mdm"]), method="l_uniform", target_stderr=0.1)


CLI_CASES = [  # one per group; ~3 s each for the imports, so all but the first are slow
    ("truncated", [], (WEIGHTS, "truncated")),
    pytest.param("mdm", ["--pad-to", "abc"], ("--pad-to", "'abc'"), marks=pytest.mark.slow),
    pytest.param("mdm", ["--device", "cuda"], ("--device", "CUDA is not available"), marks=[pytest.mark.slow, NO_CUDA]),
    pytest.param("mdm", ["--target-stderr", "0.1"], ("target_stderr", "l_uniform"), marks=pytest.mark.slow),
]


@pytest.mark.parametrize("model, extra, needles", CLI_CASES, ids=["artifact", "pad_to", "device", "early_stop"])
def test_cli_one_line_per_group(bad, model, extra, needles):
    """Through the real entry point: a broken artifact, a bad argument, a missing device, a refused
    early stop."""
    args = ["-m", "pipeline_steps.scoring.evaluator", "--items", str(bad["items"]), "--model", str(bad[model])]
    needles = [str(bad[model] / n) if n == WEIGHTS else n for n in needles]  # the full path
    print(one_line_error(cli([*args, *extra], ROOT), "smdm-evaluate: ", *needles))


# ---------------------------------------------------------------------------------------------
# The evaluate stage.

@pytest.fixture(scope="module")
def stage_dirs(bad) -> dict[str, Path]:
    root = bad["root"] / "stage"
    for task in TASKS:
        make = greedy_items if task in ("lambada_openai", "in_domain_lastword") else mc_items
        (root / "tasks" / task).mkdir(parents=True)
        write_jsonl(root / "tasks" / task / "test.jsonl", make(f"{task}-test-", 6))
    pretrain = root / "pretrain"
    for name in ("mdm", "arm", "truncated", "family", "tokenizer"):
        shutil.copytree(bad[name], pretrain / name / "16k")
    return {"tasks": root / "tasks", "pretrain": pretrain, "root": root}


@pytest.mark.parametrize("fault", ARTIFACT_FAULTS)
def test_stage_refuses_a_broken_base_model_naming_its_file(stage_dirs, tmp_path, fault):
    file, *needles = ARTIFACT_FAULTS[fault]
    with pytest.raises(InputError, match=needles[0]) as err:
        evaluate.run(tiny_config(mdm_group=fault, arm_group="arm", stochlen_group=None, grid_models=0),
                     stage_dirs["tasks"], stage_dirs["pretrain"], tmp_path / "out", NullTracker())
    assert str(stage_dirs["pretrain"] / fault / "16k" / file) in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("changes", [
    {},  # the default tasks' methods: hellaswag, arc_easy, siqa... are mc
    {"tasks": ["piqa"], "grid_tasks": [], "task_max_items": {}, "method_grid": ["chain"],
     "compare_methods": True},  # Table 11 scores mc on every multiple-choice task
])
def test_params_refuse_mc_early_stopping_at_eps_0_at_config_time(changes):
    with pytest.raises(ParamsError, match=r"evaluate: mc: target_stderr=0.1 .*l_uniform"):
        build_config(evaluate.EvaluateConfig, {**changes, "mc": {"target_stderr": 0.1}}, "evaluate")
    build_config(evaluate.EvaluateConfig, {**changes, "mc": {"target_stderr": 0.1, "eps": 0.1}}, "evaluate")
    no_mc = {"tasks": ["piqa"], "grid_tasks": [], "task_max_items": {}, "method_grid": ["chain"],
             "compare_methods": False}
    build_config(evaluate.EvaluateConfig, {**no_mc, "mc": {"target_stderr": 0.1}}, "evaluate")


def stage_params(tmp_path: Path, **changes) -> Path:
    values = {k: list(v) if isinstance(v, tuple) else v
              for k, v in dataclasses.asdict(tiny_config(stochlen_group=None, grid_models=0)).items()}
    for key, value in changes.items():
        values[key] = {**values[key], **value} if isinstance(value, dict) else value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"evaluate": values, "pretrain": {"groups": {}}}))
    return tmp_path / "params.yaml"


@NO_CUDA
@pytest.mark.slow
def test_stage_cli_refuses_a_missing_device_and_mc_early_stopping_before_reading_anything(tmp_path):
    """Neither the tasks nor the models exist: the checks fire before either is read."""
    missing = ["--tasks", str(tmp_path / "no_tasks"), "--models", str(tmp_path / "no_models"),
               "--out", str(tmp_path / "out"), "--metrics", str(tmp_path / "m.json")]
    for changes, needles in (({"device": "cuda"}, ("evaluate.device", "'cuda'", "CUDA is not available")),
                             ({"mc": {"target_stderr": 0.1}}, ("evaluate: mc: target_stderr=0.1", "l_uniform"))):
        params = stage_params(tmp_path, **changes)
        out = cli(["-m", "pipeline_steps.evaluate", "--params", str(params), *missing], ROOT)
        one_line_error(out, "pipeline_steps.evaluate: ", *needles)
        assert not (tmp_path / "out").exists() and not (tmp_path / "m.json").exists()


@pytest.mark.slow
def test_stage_cli_names_a_broken_base_model(stage_dirs, tmp_path):
    params = stage_params(tmp_path, mdm_group="family", arm_group="arm")
    out = cli(["-m", "pipeline_steps.evaluate", "--params", str(params), "--tasks", str(stage_dirs["tasks"]),
               "--models", str(stage_dirs["pretrain"]), "--out", str(tmp_path / "out"),
               "--metrics", str(tmp_path / "m.json")], ROOT)
    one_line_error(out, "pipeline_steps.evaluate: ", str(stage_dirs["pretrain"] / "family" / "16k" / WEIGHTS),
                   "holds 'arm' weights")
