"""pipeline_steps.core.run_tracking as the stage CLIs use it, on a SQLite store (no server)."""
from __future__ import annotations

import pytest

from pipeline_steps.core import run_tracking
from tests.flows.toy_repo import git_commit


@pytest.fixture(scope="module")
def database(tmp_path_factory) -> str:
    """One SQLite store for the module: creating its tables takes seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def store(toy_repo, database, monkeypatch):
    """A git project as working directory, tracking on, into the module's store."""
    project = toy_repo
    monkeypatch.chdir(project)
    monkeypatch.setenv("SMDM_TRACKING", "on")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", database)
    for name in ("SMDM_PARENT_RUN_ID", "SMDM_STAGE_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    return project


def run_of(tracker):
    return tracker.client.get_run(tracker.run_id)


def test_plain_dvc_repro_finds_or_creates_the_parent_by_commit_and_params(store):
    with run_tracking.stage_tracker("gen", data_hash="abc123") as first:
        first.log_metrics({"loss": 1.0})
    with run_tracking.stage_tracker("proc@a") as second:
        pass
    one, two = run_of(first), run_of(second)
    assert one.data.tags["mlflow.parentRunId"] == two.data.tags["mlflow.parentRunId"]
    assert one.data.tags["data_hash"] == "abc123" and "data_hash" not in two.data.tags
    assert one.info.status == "FINISHED" and one.data.metrics == {"loss": 1.0}

    (store / "params.yaml").write_text("out: out\nitems: [a]\ngen:\n  n: 5\n")
    git_commit(store, "new params")  # a new key: commit + params hash
    with run_tracking.stage_tracker("gen") as third:
        pass
    assert run_of(third).data.tags["mlflow.parentRunId"] != one.data.tags["mlflow.parentRunId"]


def test_a_run_opened_by_the_flow_is_adopted(store, monkeypatch):
    client = run_tracking.open_client()
    experiment = run_tracking.experiment_id(client)
    parent = client.create_run(experiment, tags={"smdm_kind": "pipeline"}).info.run_id
    opened = client.create_run(experiment, tags={"mlflow.parentRunId": parent}).info.run_id
    monkeypatch.setenv("SMDM_PARENT_RUN_ID", parent)
    monkeypatch.setenv("SMDM_STAGE_RUN_ID", opened)
    with pytest.raises(RuntimeError):
        with run_tracking.stage_tracker("report", {"family": "mdm"}) as tracker:
            assert tracker.run_id == opened
            raise RuntimeError("stage failed")
    run = client.get_run(opened)
    assert run.info.status == "FAILED"
    assert run.data.tags["smdm_stage"] == "report" and run.data.tags["family"] == "mdm"
    assert run.data.tags["mlflow.parentRunId"] == parent


def test_child_tracker_nests_under_the_stage_and_carries_data_hash(store):
    with run_tracking.stage_tracker("pretrain@mdm_c1") as stage:
        with run_tracking.child_tracker(stage, "mdm-16k", {"size": "16k"}, data_hash="d0") as child:
            child.log_metrics({"val/loss": 2.5}, step=3)
    run = run_of(child)
    assert run.data.tags["mlflow.parentRunId"] == stage.run_id
    assert run.data.tags["data_hash"] == "d0" and run.data.tags["smdm_kind"] == "training_run"


def test_tracking_off_gives_a_null_tracker(monkeypatch):
    from pipeline_steps.core.tracking import NullTracker

    monkeypatch.setenv("SMDM_TRACKING", "off")
    with run_tracking.stage_tracker("gen") as tracker:
        assert isinstance(tracker, NullTracker)
