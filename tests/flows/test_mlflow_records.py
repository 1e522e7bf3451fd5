"""What a flow run leaves in MLflow, read through the REST API of the real `mlflow server`."""
from __future__ import annotations

import json
import re

import pytest

from flows import dag
from pipeline_steps.core import run_tracking
from tests.flows import mlflow_api
from tests.flows.prefect_api import run_deployment
from tests.flows.toy_repo import REPORT_SCORE, STAGES, run

pytestmark = pytest.mark.slow


def test_parent_and_child_runs_with_metrics(stack, up_run):
    base = stack.mlflow_url
    parent, children = mlflow_api.pipeline_run(base, up_run.flow_run_id)
    tags = mlflow_api.tags(parent)
    assert parent["info"]["status"] == "FINISHED" and tags["smdm_kind"] == "pipeline"
    assert int(parent["info"]["end_time"]) >= max(int(child["info"]["end_time"]) for child in children.values())
    experiment = mlflow_api.call(base, "experiments/get-by-name", experiment_name="smdm")["experiment"]
    assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in experiment["tags"]
    assert tags["git_commit"] == run(["git", "rev-parse", "HEAD"], stack.root).strip()
    assert tags["git_dirty"] in ("true", "false") and tags["profile"] == "default"
    assert tags["params_hash"] == run_tracking.params_hash(stack.root / "params.yaml")
    assert re.fullmatch(r"smdm/[\w-]+", tags["mlflow.runName"])
    assert mlflow_api.metrics(parent)["stages/ran"] == len(STAGES)

    assert set(children) == set(STAGES)
    for stage, child in children.items():
        child_tags = mlflow_api.tags(child)
        assert child["info"]["status"] == "FINISHED", stage
        assert child_tags["mlflow.runName"] == stage and child_tags["smdm_status"] == "ran"
        assert child_tags["git_commit"] == tags["git_commit"]
        assert mlflow_api.metrics(child), f"{stage} logged no metric"
    assert mlflow_api.tags(children["report"])["data_hash"] == dag.data_hash(stack.root, "report")
    assert "data_hash" not in mlflow_api.tags(children["gen"])  # it reads no stage's output

    report = children["report"]
    assert mlflow_api.metrics(report)["score"] == REPORT_SCORE
    report_id = report["info"]["run_id"]
    assert mlflow_api.artifact_paths(base, report_id, "metrics") == ["metrics/report.json"]
    assert json.loads(mlflow_api.artifact_text(base, report_id, "metrics/report.json"))["score"] == REPORT_SCORE


def test_a_rerun_records_skipped_stages_with_their_metrics(stack, up_run):
    second = run_deployment({"stages": ["report"]})  # root: the deployment's default, stack.root
    assert second.state_name == "Completed"
    _, children = mlflow_api.pipeline_run(stack.mlflow_url, str(second.id))
    assert {mlflow_api.tags(c)["smdm_status"] for c in children.values()} == {"skipped"}
    assert set(children) == {"gen", "proc@a", "grid@p-1", "proc@b", "report"}
    assert mlflow_api.metrics(children["report"])["score"] == REPORT_SCORE  # read from its JSON
