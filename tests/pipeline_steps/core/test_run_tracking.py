"""pipeline_steps.core.run_tracking as the stage CLIs use it, on a SQLite store (no server):
in this process, and through the toy DAG's stages under plain `dvc repro`."""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_steps.core import run_tracking
from tests.flows.toy_repo import STAGES, dvc, git_commit


@pytest.fixture(scope="module")
def database(tmp_path_factory) -> Path:
    """One SQLite store for the module, tables made: creating them takes seconds."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}")  # makes the tables
    return path


@pytest.fixture
def store(toy_repo, database, monkeypatch):
    """A git project as working directory, tracking on, into the module's store, in an
    experiment of its own (SMDM_EXPERIMENT for stage processes), so tests see only their runs."""
    project = toy_repo
    monkeypatch.chdir(project)
    monkeypatch.setenv("SMDM_TRACKING", "on")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{database}")
    experiment = f"smdm-{project.parent.name}"
    monkeypatch.setattr(run_tracking, "EXPERIMENT", experiment)
    monkeypatch.setenv("SMDM_EXPERIMENT", experiment)
    for name in ("SMDM_PARENT_RUN_ID", "SMDM_STAGE_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    return project


def runs(kind: str | None = None) -> list:
    """The runs of this test's experiment (optionally of one `smdm_kind`), oldest first."""
    client = run_tracking.open_client()
    found = client.search_runs([run_tracking.experiment_id(client)], order_by=["attributes.start_time ASC"])
    return [r for r in found if kind is None or r.data.tags.get("smdm_kind") == kind]


def statuses(kind: str) -> list[str]:
    return [r.info.status for r in runs(kind)]


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


def test_the_experiment_opens_as_model_training_not_genai(store):
    client = run_tracking.open_client()
    made = client.get_experiment(run_tracking.experiment_id(client))
    assert made.tags["mlflow.experimentKind"] == "custom_model_development"

    client.delete_experiment_tag(made.experiment_id, "mlflow.experimentKind")  # as made before the tag
    assert "mlflow.experimentKind" not in client.get_experiment(made.experiment_id).tags
    assert run_tracking.experiment_id(client) == made.experiment_id
    assert client.get_experiment(made.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_parent_is_running_only_while_a_stage_runs(store):
    with run_tracking.stage_tracker("gen") as tracker:
        parent = tracker.client.get_run(run_of(tracker).data.tags["mlflow.parentRunId"])
        assert parent.info.status == "RUNNING" and parent.info.end_time is None
    first_end = tracker.client.get_run(parent.info.run_id).info.end_time
    assert statuses("pipeline") == ["FINISHED"] and first_end >= run_of(tracker).info.end_time

    with pytest.raises(RuntimeError):
        with run_tracking.stage_tracker("proc@a"):
            assert statuses("pipeline") == ["RUNNING"]  # reopened by the next stage
            raise RuntimeError("stage failed")
    assert statuses("pipeline") == ["FAILED"] and statuses("stage") == ["FINISHED", "FAILED"]

    with run_tracking.stage_tracker("proc@a"):  # the failed stage again, fixed
        pass
    [parent] = runs("pipeline")
    assert parent.info.status == "FINISHED" and parent.info.end_time > first_end


def toy_stage(stage: str, *args: str, wait: bool = False) -> subprocess.Popen:
    """The toy DAG's stage command, as DVC runs it; with `wait`, it holds its run open until killed."""
    if wait:
        Path(f"WAIT-{stage}").touch()
    # Ctrl-C as at a terminal: a test run started as a background job inherits SIGINT ignored
    # (POSIX shells ignore it in asynchronous lists), which Python keeps, and no KeyboardInterrupt comes.
    process = subprocess.Popen([sys.executable, "step.py", stage, *args], stdout=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    if wait:
        for line in process.stdout:  # the stage prints `waiting` once its run is open
            if line.strip() == "waiting":
                break
    return process


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stage_stopped_by_a_signal_ends_killed(store, signum):
    stage = toy_stage("gen", "out/gen.txt", wait=True)
    stage.send_signal(signum)
    assert stage.wait(timeout=60) == -signum  # it dies of the signal, as without tracking
    assert statuses("stage") == ["KILLED"] and statuses("pipeline") == ["KILLED"]
    assert not Path("out/gen.txt").exists()


@pytest.mark.slow
def test_a_stage_killed_without_warning_is_ended_by_the_next_run(store):
    stage = toy_stage("gen", "out/gen.txt", wait=True)
    stage.kill()  # SIGKILL: nothing runs in the stage any more
    stage.wait(timeout=60)
    assert statuses("stage") == ["RUNNING"] and statuses("pipeline") == ["RUNNING"]

    Path("WAIT-gen").unlink()
    assert toy_stage("gen", "out/gen.txt").wait(timeout=120) == 0  # the next run, here of the same stage
    assert statuses("stage") == ["KILLED", "FINISHED"] and statuses("pipeline") == ["FINISHED"]


@pytest.mark.slow
def test_plain_dvc_repro_leaves_no_run_running(store, database, monkeypatch):
    shutil.copy(database, store / "mlflow.db")  # the default store, `mlflow.db` in the project
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    Path("FAIL-report").touch()
    with pytest.raises(RuntimeError, match="failing on purpose"):
        dvc(["repro"], store)
    [parent] = runs("pipeline")
    stages = {r.data.tags["smdm_stage"]: r.info.status for r in runs("stage")}
    assert parent.info.status == "FAILED" and stages == {**dict.fromkeys(STAGES, "FINISHED"), "report": "FAILED"}
    assert parent.info.end_time >= max(r.info.end_time for r in runs("stage"))

    Path("FAIL-report").unlink()
    dvc(["repro"], store)  # only `report` runs again
    [parent] = runs("pipeline")
    latest = runs("stage")[-1]
    assert latest.data.tags["smdm_stage"] == "report" and latest.info.status == "FINISHED"
    assert parent.info.status == "FINISHED" and parent.info.end_time >= latest.info.end_time
    assert len(runs("stage")) == len(STAGES) + 1 and "RUNNING" not in statuses("stage")


def test_only_runs_whose_owner_process_is_gone_are_closed(store):
    import os
    import socket

    client = run_tracking.open_client()
    experiment = run_tracking.experiment_id(client)
    owners = {"alive": run_tracking.process_tag(), "reused pid": f"{socket.gethostname()}:{os.getpid()}:0.00",
              "other machine": "elsewhere:1:0.00", "untagged": None}
    ids = {name: client.create_run(experiment, tags={run_tracking.OWNER: owner} if owner else {}).info.run_id
           for name, owner in owners.items()}
    assert run_tracking.close_dead_runs(client, experiment) == [ids["reused pid"]]
    assert {name: client.get_run(i).info.status for name, i in ids.items()} == {
        "alive": "RUNNING", "reused pid": "KILLED", "other machine": "RUNNING", "untagged": "RUNNING"}
