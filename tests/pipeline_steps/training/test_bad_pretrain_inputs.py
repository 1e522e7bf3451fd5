"""Bad pretrain inputs end as one line before anything trains; weight decay of norm weights; the
tokens a stochastic-length run really trained on."""
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from model.config import MODEL_SIZES, config_for
from model.transformer import Transformer
from pipeline_steps import pretrain
from pipeline_steps.core.errors import InputError
from pipeline_steps.core.params import ParamsError, build_config
from pipeline_steps.core.profile import render
from pipeline_steps.core.tracking import NullTracker
from pipeline_steps.training.config import MIN_STEPS, OptimConfig, PretrainConfig
from pipeline_steps.training.system import TrainingSystem
from pipeline_steps.training.token_windows import ShardError, open_split
from tests.cli_errors import cli, one_line_error

ROOT = Path(__file__).resolve().parents[3]
GROUP = {"family": "mdm", "kind": "base", "flops": 1.0e8, "sizes": ["16k"]}  # ~16 steps at 4 x 16


def params(group: dict | None = None, **train) -> dict:
    """The default profile with small runs and one group `g` (a valid config as it stands)."""
    p = render("default", ROOT / "profiles")["pretrain"]
    p["train"].update({"seq_len": 16, "global_batch": 4, "threads": 1, "parallel_runs": 1, **train})
    p["optim"]["min_warmup_steps"] = 3
    p["validation"].update({"windows": 8, "mc_samples": 4, "batch_size": 8})
    p["groups"] = {"g": {**GROUP, **(group or {})}}
    return p


def build(p: dict) -> PretrainConfig:
    return build_config(PretrainConfig, p, "pretrain")


def write(p: dict, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p["train"]["checkpoint_dir"] = str(folder / "ckpt")
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump({"pretrain": p}))
    return path


def run_cli(path: Path, data: dict, folder: Path, shards: Path | None = None):
    return cli(["-m", "pipeline_steps.pretrain", "--group", "g", "--params", str(path),
                "--shards", str(shards or data["shards"]), "--tokenizer", str(data["tokenizer"]),
                "--out", str(folder / "models"), "--runs", str(folder / "runs.jsonl"),
                "--metrics", str(folder / "metrics.json")], ROOT)


PARAMS_CASES = {  # (section, key, value) -> what the one line says
    "mask_eps": (("train", "mask_eps", 1.0), r"pretrain\.train: mask_eps must be in \[0, 1\), got 1\.0"),
    "mask_eps<0": (("train", "mask_eps", -0.1), r"pretrain\.train: mask_eps must be in \[0, 1\), got -0\.1"),
    "grad_clip": (("train", "grad_clip", -1.0), r"pretrain\.train: grad_clip must be >= 0"),
    "threads": (("train", "threads", -1), r"pretrain\.train: threads must be >= 0"),
    "devices": (("train", "devices", 3), r"pretrain\.train: global_batch 4 is not divisible by devices x num_nodes = 3"),
    "num_nodes": (("train", "num_nodes", 3), r"global_batch 4 is not divisible by devices x num_nodes = 3"),
    "weight_decay": (("optim", "weight_decay", -0.1), r"pretrain\.optim: weight_decay must be >= 0"),
    "duplicate": (("g", "sizes", ["16k", "9k", "16k"]), r"pretrain\.groups\.g: sizes lists \['16k'\] more than once"),
    "stray lr": (("g", "lr", {"9k": 0.01}), r"pretrain\.groups\.g: lr names size\(s\) \['9k'\] that are not in sizes"),
    "arm stochlen": (("g", "family", "arm"), r"pretrain\.groups\.g: stochastic_length_ratio is an MDM setting"),
}


@pytest.mark.parametrize("case", sorted(PARAMS_CASES))
def test_bad_params_fail_when_the_config_is_built(case):
    (where, key, value), message = PARAMS_CASES[case]
    p = params()
    if case == "arm stochlen":
        p["groups"]["g"]["stochastic_length_ratio"] = 0.25
    (p["groups"]["g"] if where == "g" else p[where])[key] = value
    with pytest.raises(ParamsError, match=message):
        build(p)


def test_the_valid_neighbours_of_bad_params_build():
    p = params(mask_eps=0.0, grad_clip=0.0, threads=0)
    p["groups"]["g"].update({"sizes": ["16k", "9k"], "lr": {"9k": 0.01}})
    p["groups"]["h"] = {**GROUP, "family": "arm", "stochastic_length_ratio": 0.0}
    build(p)


def test_a_budget_of_too_few_steps_names_group_size_budget_and_steps():
    per_step = 6 * MODEL_SIZES["33k"].n_params * 4 * 16
    p = params({"flops": 1.0 * per_step, "sizes": ["16k", "33k"]})  # 16k: 2 steps, 33k: 1
    head = re.escape(f"pretrain: groups.g: mdm 16k at {per_step:.3g} FLOPs gets 2 optimizer step(s) of 4 x 16 tokens")
    with pytest.raises(ParamsError, match=rf"{head} .*expected >= {MIN_STEPS} steps"):
        build(p)
    p["groups"]["g"]["flops"] = MIN_STEPS * per_step  # just enough for the larger size
    build(p)
    p["groups"]["g"]["flops"] = (MIN_STEPS - 0.6) * per_step
    with pytest.raises(ParamsError, match=r"mdm 33k .* gets 4 optimizer step"):
        build(p)


def test_every_profile_gives_every_run_enough_steps():
    for profile in ("debug", "default", "cpu-study", "paper"):
        build(render(profile, ROOT / "profiles")["pretrain"])


def bad_data_cases(data: dict, tmp_path: Path) -> dict:
    """name -> (params the config accepts, shards folder, pattern of the error)."""
    def with_budget(p: dict) -> dict:  # MIN_STEPS steps at whatever seq_len, so only the data is wrong
        train = p["train"]
        p["groups"]["g"]["flops"] = 6 * MODEL_SIZES["16k"].n_params * train["global_batch"] * train["seq_len"] * MIN_STEPS
        return p

    def meta_with_vocab(vocab: int) -> Path:
        folder = tmp_path / f"shards_{vocab}"
        shutil.copytree(data["shards"], folder)
        meta = json.loads((folder / "meta.json").read_text())
        (folder / "meta.json").write_text(json.dumps({**meta, "vocab_size": vocab}))
        return folder

    n_train = open_split(data["shards"], "train").n_tokens
    val_windows = (open_split(data["shards"], "val").n_tokens - 1) // 16
    return {
        "seq_len > data": (with_budget(params(seq_len=n_train)), data["shards"],
                           rf"the train split has {n_train} tokens, 0 window\(s\) of seq_len \+ 1 = {n_train + 1} tokens; "
                           r"expected at least one global batch of 4"),
        "< one batch": (with_budget(params(seq_len=(n_train - 1) // 2)), data["shards"],
                        r"the train split has .* 2 window\(s\) .* expected at least one global batch of 4"),
        "val windows": (params() | {"validation": {"windows": val_windows + 1}}, data["shards"],
                        rf"the val split has .* {val_windows} window\(s\) of seq_len \+ 1 = 17 tokens; "
                        rf"expected at least pretrain\.validation\.windows = {val_windows + 1}"),
        "meta vocab larger": (params(), meta_with_vocab(321), r"vocab_size 321 does not match the tokenizer's 320 pieces"),
        "meta vocab smaller": (params(), meta_with_vocab(300), r"vocab_size 300 does not match the tokenizer's 320 pieces"),
    }


def test_bad_data_fails_before_anything_trains(tiny_data, tmp_path):
    for name, (p, shards, message) in bad_data_cases(tiny_data, tmp_path).items():
        out = tmp_path / name
        p["train"]["checkpoint_dir"] = str(out / "ckpt")
        with pytest.raises(InputError, match=message):
            pretrain.run(build(p), "g", shards, tiny_data["tokenizer"], out / "models", out / "runs.jsonl", NullTracker())
        assert not out.exists(), name  # no output folder, no checkpoint: nothing started


def test_meta_missing_a_key_is_named(tiny_data, tmp_path):
    folder = tmp_path / "shards"
    shutil.copytree(tiny_data["shards"], folder)
    meta = json.loads((folder / "meta.json").read_text())
    del meta["dtype"]
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ShardError, match=r"meta\.json: missing key\(s\) \['dtype'\]"):
        open_split(folder, "train")


@pytest.mark.slow
def test_one_line_through_the_stage_cli(tiny_data, tmp_path):
    """One case per kind of check: a params field, a budget, the data's splits, the meta's vocab."""
    bad_eps = params(mask_eps=-0.1)
    tiny_budget = params({"flops": 1.0e6})
    cases = bad_data_cases(tiny_data, tmp_path)
    lines = [
        one_line_error(run_cli(write(bad_eps, tmp_path / "eps"), tiny_data, tmp_path / "eps"),
                       "pretrain.train: mask_eps must be in [0, 1), got -0.1"),
        one_line_error(run_cli(write(tiny_budget, tmp_path / "budget"), tiny_data, tmp_path / "budget"),
                       "groups.g: mdm 16k at 1e+06 FLOPs gets 1 optimizer step(s)", f"expected >= {MIN_STEPS} steps"),
    ]
    for name in ("val windows", "meta vocab larger"):
        p, shards, _ = cases[name]
        folder = tmp_path / name.replace(" ", "_")
        lines.append(one_line_error(run_cli(write(p, folder), tiny_data, folder, shards),
                                    "meta.json", "expected" if name == "val windows" else "does not match"))
        assert not (folder / "models").exists() and not (folder / "ckpt").exists()
    print("\n".join(lines))


# Weight decay -----------------------------------------------------------------------------------

def decay_of_each_parameter(decay_norms: bool) -> dict[str, float]:
    model = Transformer(config_for("16k", "mdm", 320, 16))
    system = TrainingSystem(model, OptimConfig(decay_norms=decay_norms), None, 16, 4, total_steps=10, seed=0)
    optimizer = system.configure_optimizers()["optimizer"]
    by_id = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    names = dict(model.named_parameters())
    assert sorted(by_id) == sorted(id(p) for p in names.values())  # every parameter, once
    return {name: by_id[id(p)] for name, p in names.items()}


def test_decay_norms_decides_whether_norm_weights_are_decayed():
    everything = decay_of_each_parameter(True)
    assert set(everything.values()) == {0.1}  # the authors' choice, the default
    exempt = decay_of_each_parameter(False)
    norms = {name for name in exempt if "norm" in name}
    assert norms and {exempt[name] for name in norms} == {0.0}
    assert {value for name, value in exempt.items() if name not in norms} == {0.1}


def test_decayed_norm_weights_shrink_and_exempt_ones_do_not():
    for decay_norms, shrinks in ((True, True), (False, False)):
        model = Transformer(config_for("16k", "mdm", 320, 16))
        system = TrainingSystem(model, OptimConfig(decay_norms=decay_norms), None, 16, 4, total_steps=10, seed=0)
        optimizer = system.configure_optimizers()["optimizer"]
        for p in model.parameters():
            p.grad = torch.zeros_like(p)  # no gradient: only the decay moves a weight
        optimizer.step()
        assert (model.norm.weight < 1).all().item() is shrinks


# Tokens trained on ------------------------------------------------------------------------------

def trained_token_count(ratio: float, tiny_data, folder: Path) -> tuple[dict, int]:
    """The run record, and the tokens the embedding actually saw in training forward passes."""
    p = params({"stochastic_length_ratio": ratio, "flops": 4.0e8})  # ~63 steps
    p["train"]["checkpoint_dir"] = str(folder / "ckpt")
    seen = []

    def count(module, inputs):
        if isinstance(module, torch.nn.Embedding) and torch.is_grad_enabled():  # training, not validation
            seen.append(inputs[0].numel())

    hook = torch.nn.modules.module.register_module_forward_pre_hook(count)
    try:
        pretrain.run(build(p), "g", tiny_data["shards"], tiny_data["tokenizer"], folder / "models",
                     folder / "runs.jsonl", NullTracker())
    finally:
        hook.remove()
    return json.loads((folder / "runs.jsonl").read_text()), sum(seen)


def test_tokens_are_the_ones_trained_on_with_and_without_stochastic_length(tiny_data, tmp_path):
    full, seen = trained_token_count(0.0, tiny_data, tmp_path / "full")
    assert full["tokens"] == full["steps"] * 4 * 16 == seen
    assert full["flops"] == pytest.approx(6 * full["n_params"] * full["tokens"])
    cut, seen = trained_token_count(0.25, tiny_data, tmp_path / "cut")
    assert cut["steps"] == full["steps"] and cut["tokens"] == seen < cut["steps"] * 4 * 16
    assert cut["flops"] == pytest.approx(6 * cut["n_params"] * cut["tokens"]) and cut["flops"] < full["flops"]
