"""The Prefect flow `smdm`: one task per DVC stage, in the order and with the edges DVC computes.

Each task runs `dvc repro --single-item <stage>` in the project, so DVC's cache decides what is
up to date and a rerun after a failure resumes where it stopped. One workspace runs one stage
at a time (`dvc repro` holds the repository lock), so tasks run one after another in
topological order; when a stage fails, the stages downstream of it are not started, the others
still run, and the flow run fails at the end. A worker with its own clone moves data through a
DVC remote (`dvc_remote`): pull the stage's inputs and run cache before, push after.
"""
from __future__ import annotations

import collections
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError

from flows import dag, records
from pipeline_steps.core.profile import profile_of

# DVC's own words for what it did with a stage; anything else that exits 0 counts as `ran`.
DVC_SAID = (("is cached - skipping run", "restored"), ("didn't change, skipping", "skipped"))
NOT_RUN = ("failed", "blocked")


class StageFailed(RuntimeError):
    """A DVC command for a stage exited non-zero."""


@dataclass
class StageResult:
    """What a stage task returns. A class instance, not a string or dict: Prefect links a
    value passed to a later task back to the task that returned it by object identity, and
    only weak-referenceable results are safe from recycled ids (prefect#20558)."""

    stage: str
    status: str


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's logger inside a run (lines reach the UI), a plain one when called directly."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("smdm.flow")


def stage_env(extra: dict[str, str]) -> dict[str, str]:
    """Our environment, unbuffered so stage lines reach the log live, and our `python` first
    on PATH because DVC runs stage commands with whichever `python` PATH finds."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if not path.startswith(bin_dir + os.pathsep):
        path = bin_dir + os.pathsep + path
    return {**os.environ, "PATH": path, "PYTHONUNBUFFERED": "1", **extra}


def stream(cmd: list[str], root: Path, env: dict[str, str], logger) -> tuple[int, list[str]]:
    """Run `cmd`, logging each output line as it comes; the exit code and the last lines."""
    logger.info("$ %s", " ".join(cmd))
    tail: collections.deque[str] = collections.deque(maxlen=200)
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1, errors="replace")
    try:
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            logger.info(line)
        return proc.wait(), list(tail)
    finally:
        if proc.poll() is None:  # the task was cancelled or crashed: don't leave the stage running
            proc.terminate()
            proc.wait()


def dvc(args: list[str], root: Path, env: dict[str, str], logger) -> list[str]:
    code, tail = stream([sys.executable, "-m", "dvc", *args], root, env, logger)
    if code != 0:
        raise StageFailed(f"`dvc {' '.join(args)}` exited {code}:\n" + "\n".join(tail[-20:]))
    return tail


def dvc_status(name: str, lines: list[str]) -> str:
    for line in lines:
        for words, status in DVC_SAID:
            if f"'{name}' {words}" in line:
                return status
    return "ran"


@task(name="stage", task_run_name="{name}", cache_policy=NO_CACHE, persist_result=False)
def run_stage(name: str, root: str, metrics: tuple[str, ...] = (), tracking: records.Tracking | None = None,
              dvc_remote: str | None = None) -> StageResult:
    """Reproduce one stage through DVC; status `ran`, `skipped` or `restored`, or raise StageFailed.

    metrics: the stage's metrics files, logged to its MLflow run afterwards.
    """
    logger, project = run_logger(), Path(root)
    run_id, tracking_env = records.open_stage_run(tracking, name)
    env = stage_env(tracking_env)
    try:
        # --pull: a stage another worker finished comes from the remote (its run cache and
        # outputs) instead of running again; see use_remote for which remote that is.
        pull = ["--pull"] if dvc_remote else []
        status = dvc_status(name, dvc(["repro", *pull, "--single-item", name], project, env, logger))
        if dvc_remote:
            dvc(["push", "--run-cache", "-r", dvc_remote, name], project, env, logger)
    except BaseException:
        records.close_stage_run(tracking, run_id, name, "failed", project, metrics, logger)
        raise
    records.close_stage_run(tracking, run_id, name, status, project, metrics, logger)
    logger.info("stage %s: %s", name, status)
    return StageResult(name, status)


def use_remote(root: Path, dvc_remote: str) -> None:
    """Make `dvc_remote` this clone's default remote (.dvc/config.local, never committed):
    `dvc repro --pull` takes no remote name and pulls from the default one."""
    dvc(["remote", "default", "--local", dvc_remote], root, stage_env({}), run_logger())


def apply_profile(root: Path, profile: str) -> None:
    """`smdm-profile <profile>`: params.yaml from profiles/, before DVC reads the DAG."""
    code, tail = stream([sys.executable, "-m", "pipeline_steps.core.profile", profile], root, stage_env({}), run_logger())
    if code != 0:
        raise RuntimeError(f"smdm-profile {profile} exited {code}:\n" + "\n".join(tail[-20:]))


def run_stages(graph: nx.DiGraph, root: Path, tracking: records.Tracking | None,
               dvc_remote: str | None, retries: int, retry_delay_seconds: float) -> dict[str, str]:
    """Every stage of `graph` upstream first; a stage whose upstream failed is `blocked`."""
    logger, futures, statuses = run_logger(), {}, {}
    stage_task = run_stage.with_options(retries=retries, retry_delay_seconds=retry_delay_seconds)
    for name in dag.run_order(graph):
        upstream = list(graph.predecessors(name))
        stopped = [up for up in upstream if statuses[up] in NOT_RUN]
        if stopped:
            statuses[name] = "blocked"
            logger.warning("stage %s not started: upstream %s did not finish", name, ", ".join(stopped))
            continue
        # wait_for records DVC's edges on the task runs (Prefect's graph shows them). Futures,
        # not states: Prefect looks inside a state's result for more links and finds wrong ones.
        future = stage_task.submit(name, str(root), graph.nodes[name]["info"].metrics, tracking, dvc_remote,
                                   wait_for=[futures[up] for up in upstream])
        future.wait()  # one at a time: DVC holds the workspace lock while a stage runs
        futures[name] = future
        statuses[name] = future.result().status if future.state.is_completed() else "failed"
    return statuses


@flow(name="smdm", log_prints=True)
def smdm(profile: str | None = None, stages: list[str] | None = None, dvc_remote: str | None = None,
         retries: int = 0, retry_delay_seconds: float = 10.0, root: str | None = None) -> dict[str, str]:
    """Run the DVC DAG of the project at `root` (default: the working directory).

    profile: write params.yaml from profiles/<profile>.yaml first (`smdm-profile`).
    stages: only these stages (or foreach/matrix groups) and everything upstream of them.
    dvc_remote: a DVC remote (by name, configured in the clone) that stages finished elsewhere
        are pulled from and every stage's outputs and run cache are pushed to: for workers
        that each run the flow in their own clone.
    retries: how often a failing stage is retried before its task fails.
    """
    from prefect.runtime import flow_run

    project = Path(root or os.getcwd()).resolve()
    logger = run_logger()
    if profile:
        apply_profile(project, profile)
    if dvc_remote:
        use_remote(project, dvc_remote)
    graph = dag.select(dag.load_dag(project), stages)
    logger.info("%d stages: %s", graph.number_of_nodes(), ", ".join(dag.run_order(graph)))
    tags = {"profile": profile or profile_of(project / "params.yaml"), "prefect_flow_run_id": str(flow_run.id)}
    tracking = records.open_pipeline_run(project, f"smdm/{flow_run.name}", tags)
    statuses: dict[str, str] = {}
    try:
        statuses = run_stages(graph, project, tracking, dvc_remote, retries, retry_delay_seconds)
    finally:
        unfinished = len(statuses) < graph.number_of_nodes() or any(s in NOT_RUN for s in statuses.values())
        records.close_pipeline_run(tracking, statuses, failed=unfinished)
    for name, status in statuses.items():
        logger.info("%-32s %s", name, status)
    stopped = sorted(name for name, status in statuses.items() if status in NOT_RUN)
    if stopped:
        raise RuntimeError(f"stages not finished: {', '.join(stopped)}; fix and rerun, DVC keeps the finished ones")
    return statuses
