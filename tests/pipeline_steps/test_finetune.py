"""The finetune stage on tiny real artifacts: lineage, learning, resume, and its one-line input errors."""
import json

import pytest
import torch
from safetensors.torch import load_file

from model.artifact import WEIGHTS, load_artifact, save_artifact, sha256_file
from model.config import config_for
from model.transformer import Transformer
from pipeline_steps import finetune
from pipeline_steps.core.errors import InputError
from pipeline_steps.core.tracking import NullTracker
from pipeline_steps.data.task_sources import reversal
from pipeline_steps.training import finetune_runs
from pipeline_steps.training.config import OptimConfig
from pipeline_steps.training.finetune_config import (
    ConditionalDataConfig,
    FinetuneConfig,
    FinetuneGroup,
    FinetuneTrainConfig,
)
from tests.cli_errors import cli, one_line_error

GROUPS = {
    "rev_mdm": FinetuneGroup("mdm", "mdm_base", "reversal", epochs=3, batch=8, context=160, whole_sequence=True),
    "rev_arm": FinetuneGroup("arm", "arm_base", "reversal", epochs=3, batch=8, context=160, whole_sequence=True),
    "cond_mdm": FinetuneGroup("mdm", "mdm_base", "conditional", epochs=2, batch=8, prompt_dropout=0.2),
    "cond_arm": FinetuneGroup("arm", "arm_base/16k", "conditional", epochs=2, batch=8),
}


def write_reversal(folder, people=2):
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in reversal.generate(people, 2, 2, seed=0).items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def inputs(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    for k, family in enumerate(("mdm", "arm")):
        torch.manual_seed(k)
        save_artifact(Transformer(config_for("16k", family, 320, context=32)), root / "pretrain" / f"{family}_base" / "16k",
                      tiny_data["tokenizer"] / "tokenizer.model", {"size": "16k"})
    write_reversal(root / "tasks" / "reversal")
    return {"pretrain": root / "pretrain", "tasks": root / "tasks", "corpus": tiny_data["corpus"], "root": root}


def config(tmp_path, **train) -> FinetuneConfig:
    return FinetuneConfig(FinetuneTrainConfig(checkpoint_dir=str(tmp_path / "ckpt"), **train), OptimConfig(lr=3e-3),
                          ConditionalDataConfig(pairs=24, prompt_tokens=8, response_tokens=12), GROUPS)


def run(inputs, cfg, group, out):
    return finetune.run(cfg, group, inputs["pretrain"], inputs["tasks"], inputs["corpus"], out, NullTracker())


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_a_run_writes_an_artifact_that_names_its_base_and_data(inputs, tmp_path, group):
    metrics = run(inputs, config(tmp_path), group, tmp_path / "out")
    model, cfg = load_artifact(tmp_path / "out")
    spec = GROUPS[group]
    base = next((inputs["pretrain"] / spec.base.split("/")[0]).glob("*/config.json")).parent
    assert cfg["family"] == spec.family and cfg["finetuned_from"]["base"] == spec.base
    assert cfg["finetuned_from"]["weights_sha256"] == sha256_file(base / WEIGHTS)
    assert cfg["finetune"]["data"] == spec.data and cfg["finetune"]["rows"] == metrics["rows"]
    assert cfg["finetune"]["rows"] == (2 * 2 * 4 if spec.data == "reversal" else 24)  # people x templates x files
    assert model.cfg.context == (spec.context or 32)
    trained = load_file(tmp_path / "out" / WEIGHTS)
    assert any(not torch.equal(trained[k], v) for k, v in load_file(base / WEIGHTS).items())
    assert 0 < metrics["train/loss"] < 10 and metrics["steps"] == spec.epochs * -(-metrics["rows"] // 8)
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())  # checkpoints gone


@pytest.mark.slow
def test_a_crashed_run_resumes_to_the_same_weights(inputs, tmp_path, monkeypatch):
    cfg = config(tmp_path, checkpoint_every=3)  # 2 steps an epoch: the resume starts mid-epoch
    run(inputs, cfg, "rev_mdm", tmp_path / "straight")
    original = finetune_runs.FinetuneSystem.training_step

    def crash_at_step_5(self, batch, batch_idx):
        if self.trainer.global_step == 5:
            raise RuntimeError("power cut")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(finetune_runs.FinetuneSystem, "training_step", crash_at_step_5)
    with pytest.raises(RuntimeError, match="power cut"):
        run(inputs, cfg, "rev_mdm", tmp_path / "resumed")
    assert not (tmp_path / "resumed").exists()
    monkeypatch.setattr(finetune_runs.FinetuneSystem, "training_step", original)
    run(inputs, cfg, "rev_mdm", tmp_path / "resumed")
    resumed = json.loads((tmp_path / "resumed" / "config.json").read_text())["finetune"]
    assert resumed["resumed"] is True
    straight, again = load_file(tmp_path / "straight" / WEIGHTS), load_file(tmp_path / "resumed" / WEIGHTS)
    assert all(torch.equal(straight[k], again[k]) for k in straight)


def test_whole_sequence_and_prompt_dropout_change_what_is_trained(inputs, tmp_path):
    cfg = config(tmp_path)
    groups = {"whole": GROUPS["rev_mdm"],
              "prompted": FinetuneGroup("mdm", "mdm_base", "reversal", epochs=3, batch=8, context=160),
              "dropped": FinetuneGroup("mdm", "mdm_base", "reversal", epochs=3, batch=8, context=160, prompt_dropout=0.5)}
    weights = {}
    for name, group in groups.items():
        run(inputs, FinetuneConfig(cfg.train, cfg.optim, cfg.conditional, {name: group}), name, tmp_path / name)
        weights[name] = load_file(tmp_path / name / WEIGHTS)["embed.weight"]
    assert not torch.equal(weights["whole"], weights["prompted"])
    assert not torch.equal(weights["prompted"], weights["dropped"])


def test_bad_inputs_are_one_line_naming_what_is_wrong(inputs, tmp_path):
    cfg = config(tmp_path)
    missing = FinetuneConfig(cfg.train, cfg.optim, cfg.conditional,
                             {"x": FinetuneGroup("mdm", "mdm_nowhere", "reversal", epochs=1, whole_sequence=True)})
    with pytest.raises(InputError, match=r"finetune.groups.x.base: .*mdm_nowhere: no such pretrain artifact; "
                                         r"groups there: \['arm_base', 'mdm_base'\]"):
        run(inputs, missing, "x", tmp_path / "out")
    wrong = FinetuneConfig(cfg.train, cfg.optim, cfg.conditional,
                           {"x": FinetuneGroup("arm", "mdm_base", "reversal", epochs=1, whole_sequence=True)})
    with pytest.raises(InputError, match=r"finetune.groups.x.base: .* holds a 'mdm' model, expected 'arm'"):
        run(inputs, wrong, "x", tmp_path / "out")
    short = FinetuneConfig(cfg.train, cfg.optim, cfg.conditional,
                           {"x": FinetuneGroup("mdm", "mdm_base", "reversal", epochs=1, whole_sequence=True)})
    with pytest.raises(InputError, match=r"a reversal row has \d+ tokens with BOS and EOS, more than the base "
                                         r"model's context 32"):
        run(inputs, short, "x", tmp_path / "out")
    tasks = tmp_path / "tasks"
    write_reversal(tasks / "reversal")
    (tasks / "reversal" / "both_prompts_train.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing reversal files \['both_prompts_train'\]"):
        finetune.run(cfg, "rev_mdm", inputs["pretrain"], tasks, inputs["corpus"], tmp_path / "out", NullTracker())
    (tasks / "reversal" / "both_prompts_train.jsonl").write_text("")
    with pytest.raises(InputError, match=r"both_prompts_train.jsonl: empty; expected one JSON object per line"):
        finetune.run(cfg, "rev_mdm", inputs["pretrain"], tasks, inputs["corpus"], tmp_path / "out", NullTracker())


@pytest.mark.slow
def test_the_cli_prints_one_line_for_a_group_that_names_a_missing_pretrain_group(inputs, tmp_path):
    import yaml

    from pipeline_steps.core.profile import render
    from tests.cli_errors import ROOT

    params = render("default", ROOT / "profiles")
    params["finetune"]["groups"] = {"rev": {"family": "mdm", "base": "mdm_gone", "data": "reversal", "epochs": 1}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = cli(["-m", "pipeline_steps.finetune", "--group", "rev", "--params", "params.yaml", "--models",
               str(inputs["pretrain"]), "--tasks", str(inputs["tasks"]), "--corpus", str(inputs["corpus"])], tmp_path)
    one_line_error(out, "pipeline_steps.finetune: finetune.groups.rev.base:", "mdm_gone: no such pretrain artifact")
    out = cli(["-m", "pipeline_steps.finetune", "--group", "nope", "--params", "params.yaml"], tmp_path)
    one_line_error(out, "finetune.groups: no group 'nope'; groups: ['rev']")
