"""The `evaluate` stage on tiny random artifacts: selection on held-out items only, every cell,
the tables and the figure, minimum n, and (slow) the CLI as dvc.yaml calls it."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from model.likelihood import MonteCarloConfig
from pipeline_steps import evaluate
from pipeline_steps.core.params import ParamsError, build_config
from pipeline_steps.core.tracking import NullTracker
from pipeline_steps.data.task_sources.items import write_jsonl
from pipeline_steps.scoring import tables
from tests.pipeline_steps.scoring.test_evaluator import make_artifact

ROOT = Path(__file__).resolve().parents[2]
WORDS = "house river light one all there".split()
TASKS = ("arc_easy", "lambada_openai", "in_domain_lastword", "in_domain_continuation")


def mc_items(prefix: str, n: int) -> list[dict]:
    return [{"id": f"{prefix}{i}", "query": f"the {WORDS[i % 6]} of the",
             "choices": [f" {WORDS[(i + k) % 6]}" + " of the one" * k for k in range(3)], "gold": i % 3}
            for i in range(n)]


def greedy_items(prefix: str, n: int) -> list[dict]:
    return [{"id": f"{prefix}{i}", "query": f"she was in the {WORDS[i % 6]} with the",
             "target": f" {WORDS[(i + 1) % 6]}"} for i in range(n)]


@pytest.fixture(scope="module")
def workspace(tiny_data, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaluate")
    for task in TASKS:
        make = greedy_items if task in ("lambada_openai", "in_domain_lastword") else mc_items
        (root / "tasks" / task).mkdir(parents=True)
        write_jsonl(root / "tasks" / task / "test.jsonl", make(f"{task}-test-", 6))
        write_jsonl(root / "tasks" / task / "heldout.jsonl", make(f"{task}-held-", 3))
    tok = tiny_data["tokenizer"] / "tokenizer.model"
    pre = root / "pretrain"
    make_artifact(pre / "mdm_base" / "16k", "mdm", tok, seed=1)
    make_artifact(pre / "arm_base" / "16k", "arm", tok, seed=2)
    make_artifact(pre / "mdm_stochlen" / "16k", "mdm", tok, seed=3)
    for i, size in enumerate(("16k", "21k", "33k")):
        make_artifact(pre / "mdm_g1" / size, "mdm", tok, size=size, seed=4 + i,
                      run={"family": "mdm", "size": size, "val/loss": 6.0 - i, "n_params": 1})
    return {"tasks": root / "tasks", "pretrain": pre, "root": root}


def tiny_config(**changes) -> evaluate.EvaluateConfig:
    values = dict(tasks=TASKS, mdm_group="mdm_base", arm_group="arm_base", max_items=5, heldout_items=None, min_items=5,
                  mc=MonteCarloConfig(n_samples=4, block_size=2), cfg_grid=(0.0, 1.0), grid_models=2,
                  task_max_items={},
                  threads=0)
    return evaluate.EvaluateConfig(**{**values, **changes})


@pytest.fixture(scope="module")
def stage(workspace) -> dict:
    out = workspace["root"] / "reports"
    tracker = NullTracker()
    metrics = evaluate.run(tiny_config(), workspace["tasks"], workspace["pretrain"], out, tracker,
                           grid_groups=("mdm_g1",))
    return {"out": out, "metrics": metrics, "tracker": tracker,
            "results": json.loads((out / "results.json").read_text())}


def test_stage_writes_every_output_and_logs_them(stage):
    out = stage["out"]
    for name in ("results.json", "table1.md", "table2.md", "table10.md", "table11.md", "figure3.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "figure3.png").read_bytes()[:4] == b"\x89PNG"
    assert {p.name for p in stage["tracker"].artifacts} >= {"table1.md", "figure3.png", "results.json"}
    assert not list(out.glob(".*"))  # no temporaries left behind


def test_every_cell_has_accuracy_n_stderr_and_cost(stage):
    results = stage["results"]
    for cell in results["cells"] + results["grid"]:
        for key in ("task", "model", "method", "w", "acc", "acc_norm", "n", "stderr", "passes", "seconds"):
            assert key in cell, key
        assert cell["n"] == 5 and cell["passes"] > 0
    models = {(c["task"], c["model"]) for c in results["cells"]}
    assert models == {(t, m) for t in TASKS for m in ("mdm", "arm", "mdm_stochlen")}
    arc = [c for c in results["cells"] if c["task"] == "arc_easy" and c["model"] == "mdm"]
    assert {"mc", "chain"} <= {c["method"] for c in arc}  # Table 11 has both estimators
    assert any(c["pad_to"] == 32 for c in arc)  # Table 10's mask padding to the context
    assert {c["method"] for c in results["cells"] if c["model"] == "arm"} == {"exact", "greedy"}
    for sel in results["selection"].values():
        assert sel["heldout_n"] == 3 and sel["w"] in (0.0, 1.0)
        assert len(sel["scores"]) == (2 if sel["method"] == "greedy" else 4)


def test_metrics_are_flat_and_named_model_task_metric(stage):
    metrics = stage["metrics"]
    for task in TASKS:
        for model in ("mdm", "mdm_w0", "mdm_pad", "mdm_stochlen", "arm"):
            assert 0.0 <= metrics[f"{model}/{task}/acc"] <= 1.0
        assert f"mdm/{task}/cfg_scale" in metrics
    assert "arm/arc_easy/acc_norm" in metrics and "arm/lambada_openai/acc_norm" not in metrics
    assert all(isinstance(v, float) for v in metrics.values())


def test_grid_models_are_evaluated_on_in_domain_tasks(stage):
    grid = stage["results"]["grid"]
    assert {c["task"] for c in grid} == set(evaluate.IN_DOMAIN)
    assert sorted({c["val_loss"] for c in grid}) == [4.0, 6.0]  # the two ends of the loss range


def test_tables_put_paper_numbers_only_where_paper_md_has_them(stage):
    table2 = (stage["out"] / "table2.md").read_text()
    lambada = next(line for line in table2.splitlines() if line.startswith("| lambada_openai"))
    assert "52.7" in lambada and "43.2" in lambada and "44.6" in lambada
    gsm8k = next(line for line in table2.splitlines() if line.startswith("| gsm8k"))
    assert "in reports/gsm8k/table2.md (stage gsm8k)" in gsm8k and "58.5" in gsm8k and "58.6" in gsm8k
    written = json.loads((stage["out"] / "results.json").read_text())  # what the gsm8k stage reads
    with_math = tables.table2(written, {"mdm": "1.0 ± 1.0 (n=100)", "arm": "2.0 ± 1.4 (n=100)"})
    row = next(line for line in with_math.splitlines() if line.startswith("| gsm8k"))
    assert "| 1.0 ± 1.0 (n=100) | 2.0 ± 1.4 (n=100) |" in row and "58.5" in row and "58.6" in row
    # the gsm8k stage's Table 2 differs in that row only (key order aside: JSON sorts the preamble's counts)
    assert with_math.replace(row, "") == tables.table2(written).replace(gsm8k, "")
    arc = next(line for line in table2.splitlines() if line.startswith("| arc_easy"))
    assert arc.count(tables.NOT_IN_PAPER) == 4
    for name in ("table1.md", "table10.md", "table11.md"):
        assert tables.NOT_IN_PAPER in (stage["out"] / name).read_text()


def test_table10_says_when_the_stochastic_length_model_is_missing(stage):
    results = {**stage["results"], "stochlen_trained": False,
               "cells": [c for c in stage["results"]["cells"] if c["model"] != "mdm_stochlen"]}
    assert "not trained" in tables.table10(results)


def test_selection_never_sees_a_reported_item(workspace, monkeypatch, tmp_path):
    seen = {"selection": set(), "all": set()}
    in_selection = []
    real_select, real_eval = evaluate.select_setting, evaluate.evaluate_items

    def select_spy(*args, **kwargs):
        in_selection.append(True)
        try:
            return real_select(*args, **kwargs)
        finally:
            in_selection.pop()

    def eval_spy(lm, items, s, keep_items=True):
        ids = {item["id"] for item in items}
        seen["selection" if in_selection else "all"] |= ids
        return real_eval(lm, items, s, keep_items)

    monkeypatch.setattr(evaluate, "select_setting", select_spy)
    monkeypatch.setattr(evaluate, "evaluate_items", eval_spy)
    cfg = tiny_config(tasks=("arc_easy", "lambada_openai"), grid_tasks=(), grid_models=0,
                      mask_padding=False, stochlen_group=None)
    evaluate.run(cfg, workspace["tasks"], workspace["pretrain"], tmp_path / "out", NullTracker())
    assert seen["selection"] and all("-held-" in i for i in seen["selection"])
    assert seen["all"] and all("-test-" in i for i in seen["all"])


def test_ties_go_to_the_default_method_then_the_smaller_w():
    cfg = tiny_config(method_grid=("mc", "chain"), cfg_grid=(1.0, 0.0))
    assert evaluate.candidates("mc", "chain", cfg) == [("chain", 0.0), ("chain", 1.0), ("mc", 0.0), ("mc", 1.0)]
    assert evaluate.candidates("greedy", "greedy", cfg) == [("greedy", 0.0), ("greedy", 1.0)]


def test_too_few_reported_items_is_an_error_naming_the_task(workspace, tmp_path):
    shutil.copytree(workspace["tasks"], tmp_path / "tasks")
    write_jsonl(tmp_path / "tasks" / "in_domain_lastword" / "test.jsonl", greedy_items("x", 4))
    with pytest.raises(ValueError, match="in_domain_lastword: 4 reported items, fewer than min_items=5"):
        evaluate.run(tiny_config(), tmp_path / "tasks", workspace["pretrain"], tmp_path / "out",
                     NullTracker())


def test_per_task_caps_override_max_items(workspace, tmp_path):
    shutil.copytree(workspace["tasks"], tmp_path / "tasks")
    write_jsonl(tmp_path / "tasks" / "arc_easy" / "test.jsonl", mc_items("many", 40))
    data = evaluate.load_tasks(tiny_config(task_max_items={"arc_easy": 30}), tmp_path / "tasks")
    assert len(data["arc_easy"].test) == 30 and len(data["in_domain_continuation"].test) == 5
    assert len({item["id"] for item in data["arc_easy"].test}) == 30


@pytest.mark.parametrize("changes, message", [
    ({"tasks": ("gsm8k",)}, "later stages"),
    ({"methods": {"arc_easy": "exact"}}, "methods"),
    ({"method_grid": ("greedy",)}, "method_grid"),
    ({"min_items": 10, "max_items": 5}, "min_items"),
    ({"mc": {"n_samples": 5, "block_size": 2}}, r"evaluate\.mc: .*multiple"),
    ({"task_max_items": {"piqa": 50}}, "task_max_items"),
    ({"min_items": 10, "task_max_items": {"arc_easy": 5}}, "task_max_items"),
])
def test_bad_configs_fail_with_the_field(changes, message):
    values = {"tasks": ["arc_easy"], "grid_tasks": [], **changes}
    with pytest.raises(ParamsError, match=message):
        build_config(evaluate.EvaluateConfig, values, "evaluate")


def test_grid_models_spread_over_the_loss_range(tmp_path):
    for i in range(7):
        folder = tmp_path / "g" / f"s{i}"
        folder.mkdir(parents=True)
        (folder / "run.json").write_text(json.dumps({"family": "mdm", "size": f"s{i}", "val/loss": float(i)}))
    picked = evaluate.grid_models(tmp_path, ["g"], 4)
    assert [r["val_loss"] for r in picked] == [0.0, 2.0, 4.0, 6.0]
    for i, loss in enumerate((6.1, 6.2, 6.3)):  # a bunch near the top must not crowd the picks
        (tmp_path / "g" / f"s{i}" / "run.json").write_text(json.dumps({"family": "mdm", "size": "b", "val/loss": loss}))
    assert [r["val_loss"] for r in evaluate.grid_models(tmp_path, ["g"], 3)] == [3.0, 5.0, 6.3]
    assert len(evaluate.grid_models(tmp_path, ["g"], 10)) == 7


@pytest.mark.slow
def test_cli_as_dvc_calls_it(workspace, tmp_path):
    params = {"evaluate": {**{k: list(v) if isinstance(v, tuple) else v
                              for k, v in dataclasses.asdict(tiny_config()).items()}},
              "pretrain": {"groups": {"mdm_g1": {"family": "mdm", "kind": "grid"},
                                      "arm_g1": {"family": "arm", "kind": "grid"}}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "SMDM_TRACKING": "off"}
    out = subprocess.run([sys.executable, "-m", "pipeline_steps.evaluate", "--params",
                          str(tmp_path / "params.yaml"), "--tasks", str(workspace["tasks"]),
                          "--models", str(workspace["pretrain"]), "--out", str(tmp_path / "reports"),
                          "--metrics", str(tmp_path / "metrics.json")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "mdm/in_domain_continuation/acc" in metrics and "arm/arc_easy/acc" in metrics
    assert (tmp_path / "reports" / "figure3.png").exists()


def test_a_base_model_can_be_one_run_of_a_grid_group(workspace):
    cfg = tiny_config(mdm_group="mdm_g1/21k", arm_group="arm_base", stochlen_group="mdm_g1/33k")
    models = evaluate.base_models(cfg, workspace["pretrain"])
    assert models["mdm"].config["run"]["size"] == "21k"
    assert models["mdm_stochlen"].config["run"]["size"] == "33k"
    assert models["arm"].family == "arm"
    with pytest.raises(FileNotFoundError, match="mdm_g1/74k: expected one model artifact folder"):
        evaluate.base_models(tiny_config(mdm_group="mdm_g1/74k"), workspace["pretrain"])
    with pytest.raises(FileNotFoundError, match=r"mdm_g1: expected one model artifact folder, found \['16k', '21k', '33k'\]"):
        evaluate.base_models(tiny_config(mdm_group="mdm_g1"), workspace["pretrain"])
