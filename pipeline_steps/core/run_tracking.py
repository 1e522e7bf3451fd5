"""MLflow runs for stages: one parent run per pipeline run, one child run per stage (or per
training run inside a grouped stage), linked by the `mlflow.parentRunId` tag across processes.

The tracking URI comes from MLFLOW_TRACKING_URI, else the SQLite store `mlflow.db` in the
project folder. The parent is SMDM_PARENT_RUN_ID when an orchestrator set it (the orchestrator
then ends it); under plain `dvc repro` it is found or created by the key (git commit,
params.yaml hash). When the orchestrator already opened the stage's run (SMDM_STAGE_RUN_ID, the
Prefect flow does, so that it can also record stages DVC skips), the stage writes into that run
instead of a new one. SMDM_TRACKING=off gives a NullTracker (tests, dry runs).

No run stays RUNNING once nothing works on it:
- a stage's run ends FINISHED, FAILED (the stage raised) or KILLED (Ctrl-C, SIGTERM);
- plain `dvc repro` has no hook after its last stage, so each stage reopens its parent and, when
  it ends, ends the parent with the state of the pipeline so far: FAILED or KILLED if the latest
  run of any of its stages did, else FINISHED, its end time that of the last stage. Nothing tells
  a stage that it is the last one: between two stages the parent reads FINISHED;
- a process that dies without cleaning up (SIGKILL, power cut) leaves its runs RUNNING: every run
  carries its owner process (`smdm_process`: host, pid, start time), and the next stage or flow
  on the same machine ends the runs of owners that are gone as KILLED.

A tracking database that is locked (another process holds SQLite's write lock) is retried for
LOCK_WAIT_S; a locked, corrupt or unreadable one ends the stage as an InputError that names the
file, before the stage has done any work.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline_steps.core.errors import InputError
from pipeline_steps.core.tracking import NullTracker, Tracker

EXPERIMENT = os.environ.get("SMDM_EXPERIMENT", "smdm")
# MLflow 3 shows an experiment as GenAI (traces, judges, evaluation runs) or as model training;
# this tag says which (values from mlflow/server/js ExperimentKind). MLflow 3.17's UI follows its
# sidebar switch instead; links we print carry `?workflowType=machine_learning` for that.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
UI_VIEW = "workflowType=machine_learning"
OWNER = "smdm_process"
LOCK_WAIT_S = 10.0
"""How long a locked SQLite database is retried, on top of SQLite's own 5 s per try."""


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


def process_tag(pid: int | None = None) -> str | None:
    """`host:pid:start time` of a live process (this one by default), None if it is gone: a pid
    the system gave to a new process has another start time."""
    import psutil  # a dependency of DVC

    try:
        process = psutil.Process(pid)
        return f"{socket.gethostname()}:{process.pid}:{process.create_time():.2f}"
    except psutil.Error:
        return None


def owner_tags() -> dict[str, str]:
    """The tag that lets a later process close this process's runs if it dies holding them."""
    return {OWNER: process_tag() or ""}


def close_dead_runs(client, experiment_id: str) -> list[str]:
    """End as KILLED the RUNNING runs whose owner process on this machine is gone; their ids."""
    host = socket.gethostname()
    found = client.search_runs([experiment_id], max_results=1000,
                               filter_string=f"attributes.status = 'RUNNING' and tags.{OWNER} LIKE '{host}:%'")
    dead = []
    for run in found:
        owner = run.data.tags.get(OWNER, "")
        parts = owner.rsplit(":", 2)
        if len(parts) == 3 and parts[0] == host and parts[1].isdigit() and process_tag(int(parts[1])) != owner:
            client.set_terminated(run.info.run_id, "KILLED")
            dead.append(run.info.run_id)
    return dead


def _database_file(uri: str) -> str | None:
    return uri.removeprefix("sqlite:///").split("?")[0] if uri.startswith("sqlite:///") else None


def _sqlite_error(err: BaseException | None) -> sqlite3.Error | None:
    """The SQLite error behind an MLflow or SQLAlchemy one (they chain it), if any."""
    while err is not None:
        if isinstance(err, sqlite3.Error):
            return err
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    return None


def database_call(uri: str, call, *args, **kwargs):
    """`call(*args, **kwargs)` on the tracking store at `uri`: a locked SQLite database is retried
    with backoff for LOCK_WAIT_S, then it or any other SQLite error is an InputError naming the file."""
    delay, tries, started = 0.5, 0, time.monotonic()
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as err:
            cause, tries = _sqlite_error(err), tries + 1
            if cause is None:
                raise
            locked = "locked" in str(cause)
            if locked and time.monotonic() - started + delay <= LOCK_WAIT_S:
                time.sleep(delay)
                delay *= 2
                continue
            off = "or set SMDM_TRACKING=off to run without tracking"
            where = f"MLflow tracking database {_database_file(uri) or uri}"
            if locked:
                raise InputError(f"{where} is locked by another process (still locked after {tries} tries in "
                                 f"{time.monotonic() - started:.0f} s); stop that process, {off}") from None
            raise InputError(f"{where} is not a usable MLflow SQLite database ({cause}); move it aside "
                             f"to start a new one, {off}") from None


class _GuardedClient:
    """An MlflowClient whose calls go through `database_call`."""

    def __init__(self, client) -> None:
        self._client = client

    def __getattr__(self, name: str):
        value = getattr(self._client, name)
        if not callable(value):
            return value
        return lambda *args, **kwargs: database_call(self._client.tracking_uri, value, *args, **kwargs)


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
    """The project's experiment, created on first use, shown by MLflow as model training."""
    key, kind = EXPERIMENT_KIND
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        if key not in experiment.tags:  # made before this tag existed, or by hand
            client.set_experiment_tag(experiment.experiment_id, key, kind)
        return experiment.experiment_id
    location = None
    if not client.tracking_uri.startswith("http"):  # a tracking server picks its own artifact root
        location = ((Path(root) if root is not None else Path.cwd()).resolve() / "mlartifacts").as_uri()
    return client.create_experiment(EXPERIMENT, artifact_location=location, tags={key: kind})


def open_client(root: str | Path | None = None):
    """An MlflowClient for `tracking_uri(root)`; a locked or broken SQLite store is an InputError."""
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = tracking_uri(root)
    return _GuardedClient(database_call(uri, MlflowClient, tracking_uri=uri))


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
        run_id = found[0].info.run_id
        if found[0].info.status != "RUNNING":
            client.update_run(run_id, "RUNNING")  # a stage of it runs again (the end time stays)
        client.set_tag(run_id, OWNER, owner_tags()[OWNER])
        return run_id
    tags = {"smdm_pipeline_key": key, "smdm_kind": "pipeline", "mlflow.runName": f"dvc-repro-{key}",
            **state, **owner_tags()}
    return client.create_run(experiment_id, tags=tags).info.run_id


def end_parent_run(client, experiment_id: str, parent: str) -> str | None:
    """End a `dvc repro` parent with the state of its stages' latest runs (FAILED, KILLED, else
    FINISHED); leave it RUNNING while one of them still runs. The state it got, if any."""
    latest: dict[str, str] = {}
    for run in client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'",
                                  order_by=["attributes.start_time DESC"], max_results=1000):
        latest.setdefault(run.data.tags.get("smdm_stage", run.info.run_id), run.info.status)
    states = set(latest.values())
    if "RUNNING" in states:
        return None
    status = next((s for s in ("FAILED", "KILLED") if s in states), "FINISHED")
    client.set_terminated(parent, status)
    return status


class Killed(BaseException):
    """SIGTERM, raised in the stage's main thread so that its runs end KILLED."""


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """Inside the block SIGTERM raises Killed; once the runs are closed the process dies of it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Killed(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except Killed:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)  # the exit status DVC and shells expect of SIGTERM
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _run_status(client, run_id: str) -> Iterator[None]:
    """Ends the run FINISHED, KILLED (Ctrl-C, SIGTERM) or FAILED if the block raises (then re-raises)."""
    try:
        yield
    except (KeyboardInterrupt, Killed):
        client.set_terminated(run_id, "KILLED")
        raise
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
    with _sigterm_unwinds():
        client = open_client()
        run_tags = _with_data_hash({"mlflow.runName": stage, "smdm_stage": stage, "smdm_kind": "stage",
                                    "smdm_status": "ran", **git_state(), **(tags or {})}, data_hash)
        experiment = experiment_id(client)
        close_dead_runs(client, experiment)
        given, own_parent = os.environ.get("SMDM_STAGE_RUN_ID"), not os.environ.get("SMDM_PARENT_RUN_ID")
        if given:  # opened by the flow task, already a child of the pipeline run
            run_id, own_parent = given, False
            MlflowTracker(client, run_id).set_tags(run_tags)
        else:
            parent = run_tags["mlflow.parentRunId"] = parent_run_id(client, experiment)
            run_id = client.create_run(experiment, tags={**run_tags, **owner_tags()}).info.run_id
        try:
            with _run_status(client, run_id):
                yield MlflowTracker(client, run_id)
        finally:
            if own_parent:
                end_parent_run(client, experiment, parent)


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
                                "smdm_kind": "training_run", **git_state(), **(tags or {}), **owner_tags()},
                               data_hash)
    run_id = client.create_run(experiment, tags=run_tags).info.run_id
    with _run_status(client, run_id):
        yield MlflowTracker(client, run_id)


def parent_tracker(tracker: Tracker) -> Tracker | None:
    """A tracker on the pipeline run above a stage's run (None without tracking or a parent)."""
    if not isinstance(tracker, MlflowTracker):
        return None
    parent = tracker.client.get_run(tracker.run_id).data.tags.get("mlflow.parentRunId")
    return MlflowTracker(tracker.client, parent) if parent else None


def stage_run_links(ui: str) -> dict[str, str]:
    """Per stage, a Markdown link to its latest run in the MLflow UI (a tracking server's own
    address when the store is one, else `ui`), with the run's state."""
    client = open_client()
    experiment = experiment_id(client)
    base = client.tracking_uri if client.tracking_uri.startswith("http") else ui
    links: dict[str, str] = {}
    for run in client.search_runs([experiment], filter_string="tags.smdm_kind = 'stage'",
                                  order_by=["attributes.start_time DESC"], max_results=500):
        stage = run.data.tags.get("smdm_stage", "")
        if stage and stage not in links:
            url = f"{base.rstrip('/')}/#/experiments/{experiment}/runs/{run.info.run_id}?{UI_VIEW}"
            links[stage] = f"[{run.info.run_id[:12]}]({url}) ({run.info.status})"
    return links
