"""MLflow runs for stages: one parent run per pipeline run, one child run per stage (or per
training run inside a grouped stage), linked by the `mlflow.parentRunId` tag across processes.

The tracking URI comes from MLFLOW_TRACKING_URI, else the SQLite store `mlflow.db` in the
project folder. The parent is SMDM_PARENT_RUN_ID when an orchestrator set it; under plain
`dvc repro` it is found or created by the key (git commit, params.yaml hash). When the
orchestrator already opened the stage's run (SMDM_STAGE_RUN_ID, the Prefect flow does, so that
it can also record stages DVC skips), the stage writes into that run instead of a new one.
SMDM_TRACKING=off gives a NullTracker (tests, dry runs).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline_steps.core.tracking import NullTracker, Tracker

EXPERIMENT = os.environ.get("SMDM_EXPERIMENT", "smdm")


def tracking_enabled() -> bool:
    return os.environ.get("SMDM_TRACKING", "on").lower() not in ("off", "0", "false")


def tracking_uri(root: str | Path | None = None) -> str:
    folder = Path(root) if root is not None else Path.cwd()
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{folder.resolve() / 'mlflow.db'}"


def git_state(root: str | Path | None = None) -> dict[str, str]:
    """Commit and dirty flag of the working tree (unknown outside a git repository)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=root).stdout.strip()

    commit = git("rev-parse", "HEAD") or "unknown"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"git_commit": commit, "git_dirty": str(dirty).lower()}


def params_hash(path: str | Path = "params.yaml") -> str:
    data = Path(path).read_bytes() if Path(path).exists() else b""
    return hashlib.sha256(data).hexdigest()[:16]


class MlflowTracker:
    """A Tracker writing to one MLflow run through the client API (safe for nested runs)."""

    def __init__(self, client, run_id: str) -> None:
        self.client, self.run_id = client, run_id
        self.tracking_uri = client.tracking_uri

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=rows)

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)


def experiment_id(client, root: str | Path | None = None) -> str:
    """The project's experiment, created on first use."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if not client.tracking_uri.startswith("http"):  # a tracking server picks its own artifact root
        location = ((Path(root) if root is not None else Path.cwd()).resolve() / "mlartifacts").as_uri()
    return client.create_experiment(EXPERIMENT, artifact_location=location)


def open_client(root: str | Path | None = None):
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return MlflowClient(tracking_uri=tracking_uri(root))


def parent_run_id(client, experiment_id: str) -> str:
    """The pipeline run this stage belongs to: given by the orchestrator, else found by key."""
    given = os.environ.get("SMDM_PARENT_RUN_ID")
    if given:
        return given
    state = git_state()
    key = f"{state['git_commit'][:12]}-{params_hash()}"
    found = client.search_runs([experiment_id], filter_string=f"tags.smdm_pipeline_key = '{key}'",
                               max_results=1)
    if found:
        return found[0].info.run_id
    tags = {"smdm_pipeline_key": key, "smdm_kind": "pipeline", "mlflow.runName": f"dvc-repro-{key}", **state}
    return client.create_run(experiment_id, tags=tags).info.run_id


@contextlib.contextmanager
def _run_status(client, run_id: str) -> Iterator[None]:
    """Ends the run FINISHED, or FAILED if the block raises (then re-raises)."""
    try:
        yield
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")


def _with_data_hash(tags: dict[str, str], data_hash: str | None) -> dict[str, str]:
    return {**tags, "data_hash": data_hash} if data_hash else tags


@contextlib.contextmanager
def stage_tracker(stage: str, tags: dict[str, str] | None = None,
                  data_hash: str | None = None) -> Iterator[Tracker]:
    """A child run of the pipeline run for one stage; FAILED if the stage raises.

    `data_hash` (a hash of the stage's input data, when the stage knows it) becomes the run's
    `data_hash` tag.
    """
    if not tracking_enabled():
        yield NullTracker()
        return
    client = open_client()
    run_tags = _with_data_hash({"mlflow.runName": stage, "smdm_stage": stage, "smdm_kind": "stage",
                                "smdm_status": "ran", **git_state(), **(tags or {})}, data_hash)
    given = os.environ.get("SMDM_STAGE_RUN_ID")
    if given:  # opened by the flow task, already a child of the pipeline run
        run_id = given
        MlflowTracker(client, run_id).set_tags(run_tags)
    else:
        experiment = experiment_id(client)
        run_tags["mlflow.parentRunId"] = parent_run_id(client, experiment)
        run_id = client.create_run(experiment, tags=run_tags).info.run_id
    with _run_status(client, run_id):
        yield MlflowTracker(client, run_id)


@contextlib.contextmanager
def child_tracker(parent: Tracker, name: str, tags: dict[str, str] | None = None,
                  data_hash: str | None = None) -> Iterator[Tracker]:
    """A run nested under a stage's run (one per training run of a grouped stage)."""
    if not isinstance(parent, MlflowTracker):
        yield NullTracker()
        return
    client = parent.client
    experiment = client.get_run(parent.run_id).info.experiment_id
    run_tags = _with_data_hash({"mlflow.parentRunId": parent.run_id, "mlflow.runName": name,
                                "smdm_kind": "training_run", **git_state(), **(tags or {})}, data_hash)
    run_id = client.create_run(experiment, tags=run_tags).info.run_id
    with _run_status(client, run_id):
        yield MlflowTracker(client, run_id)
