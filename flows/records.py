"""What a flow run leaves in MLflow: one parent run per flow run, one child run per stage.

The flow task opens the stage's child run before `dvc repro` and hands its id to the stage
process (SMDM_STAGE_RUN_ID), which logs params, curves and metrics into it through
`pipeline_steps.core.run_tracking.stage_tracker`. After DVC returns, the task finishes the record:

- `smdm_status` tag: `ran` (DVC ran the command), `skipped` (DVC found the stage up to date),
  `restored` (DVC checked the outputs out of its run cache) or `failed`;
- `data_hash`: a hash of the DVC hashes of the stage's input data, unless the stage set one;
- the stage's metrics JSONs as artifacts under `metrics/`, and their values as metrics when
  the run has none yet (a skipped or restored stage never started its CLI, so every flow run's
  parent has one child per stage, each with the metrics that stage's outputs currently have).

The flow process owns both runs (`smdm_process` tag): if it is killed before it ends them, the
next flow run or stage on the same machine ends them KILLED (run_tracking.close_dead_runs).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from flows import dag
from pipeline_steps.core import run_tracking

PIPELINE_RUN = "SMDM_PARENT_RUN_ID"
STAGE_RUN = "SMDM_STAGE_RUN_ID"


@dataclass(frozen=True)
class Tracking:
    """Where the flow run's records go; plain strings so Prefect can show them as task inputs."""

    uri: str
    experiment_id: str
    parent_run_id: str

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri)


def open_pipeline_run(root: Path, name: str, tags: dict[str, str]) -> Tracking | None:
    """The parent run of this flow run, tagged with git state, profile and params hash."""
    if not run_tracking.tracking_enabled():
        return None
    client = run_tracking.open_client(root)
    experiment = run_tracking.experiment_id(client, root)
    run_tracking.close_dead_runs(client, experiment)  # left RUNNING by a flow run that was killed
    run_tags = {"mlflow.runName": name, "smdm_kind": "pipeline", **run_tracking.git_state(root),
                "params_hash": run_tracking.params_hash(root / "params.yaml"), **run_tracking.owner_tags(), **tags}
    run = client.create_run(experiment, tags=run_tags)
    return Tracking(client.tracking_uri, experiment, run.info.run_id)


def close_pipeline_run(tracking: Tracking | None, statuses: dict[str, str], failed: bool) -> None:
    if tracking is None:
        return
    client = tracking.client()
    counts = {f"stages/{status}": float(list(statuses.values()).count(status)) for status in set(statuses.values())}
    run_tracking.MlflowTracker(client, tracking.parent_run_id).log_metrics(counts)
    client.set_terminated(tracking.parent_run_id, "FAILED" if failed else "FINISHED")


def open_stage_run(tracking: Tracking | None, stage: str) -> tuple[str | None, dict[str, str]]:
    """The stage's child run and the environment that points the stage process at it."""
    if tracking is None:
        return None, {}
    tags = {"mlflow.parentRunId": tracking.parent_run_id, "mlflow.runName": stage,
            "smdm_stage": stage, "smdm_kind": "stage", "smdm_status": "running", **run_tracking.owner_tags()}
    run = tracking.client().create_run(tracking.experiment_id, tags=tags)
    env = {"MLFLOW_TRACKING_URI": tracking.uri, PIPELINE_RUN: tracking.parent_run_id, STAGE_RUN: run.info.run_id}
    return run.info.run_id, env


def close_stage_run(tracking: Tracking | None, run_id: str | None, stage: str, status: str, root: Path,
                    metrics_files: tuple[str, ...], logger=None) -> None:
    """Tags, metrics artifacts and final state of a stage's run once DVC has returned.

    A record that cannot be completed is a warning, not a failed stage: DVC, not MLflow,
    decides whether the stage's outputs are good, and downstream stages should still run.
    """
    if tracking is None or run_id is None:
        return
    try:
        data_hash = dag.data_hash(root, stage) if status != "failed" else None  # from dvc.lock
        _finish_stage_run(tracking, run_id, status, root, metrics_files, data_hash)
    except Exception as error:  # noqa: BLE001 - any MLflow or file error, reported and survived
        (logger or logging.getLogger("smdm.flow")).warning("MLflow record of run %s incomplete: %r", run_id, error)


def _finish_stage_run(tracking: Tracking, run_id: str, status: str, root: Path,
                      metrics_files: tuple[str, ...], data_hash: str | None) -> None:
    client = tracking.client()
    run = client.get_run(run_id)
    tracker = run_tracking.MlflowTracker(client, run_id)
    tags = {"smdm_status": status, **run_tracking.git_state(root)}
    if data_hash and "data_hash" not in run.data.tags:
        tags["data_hash"] = data_hash
    tracker.set_tags(tags)
    for path in metrics_files:
        if (root / path).is_file():
            tracker.log_artifact(root / path, "metrics")
            values = read_metrics(root / path)
            if values and not run.data.metrics:
                tracker.log_metrics(values)
    if run.info.status == "RUNNING":  # the stage never opened it, or died before closing it
        client.set_terminated(run_id, "FAILED" if status == "failed" else "FINISHED")


def read_metrics(path: Path) -> dict[str, float]:
    """The numbers of a metrics JSON, nested keys joined with `/`."""
    flat: dict[str, float] = {}

    def walk(value, key: str) -> None:
        if isinstance(value, dict):
            for sub, item in value.items():
                walk(item, f"{key}/{sub}" if key else str(sub))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[key] = float(value)

    try:
        walk(json.loads(path.read_text()), "")
    except ValueError:  # not JSON (DVC also takes YAML/TOML metrics): the artifact is enough
        return {}
    return flat

