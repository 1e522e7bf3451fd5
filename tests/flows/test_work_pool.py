"""The flow deployed to a Prefect work pool and run by a worker, as the README's commands do it.

Against the session's real Prefect server (conftest.stack): `prefect work-pool create`, `prefect
deploy` of flows/smdm.py from this checkout (no prefect.yaml: Prefect's default pull step,
`set_working_directory` to the checkout), `prefect worker start` in the background, and
`prefect deployment run --watch` of the toy project. The worker and everything it started are
stopped afterwards, whatever happens.
"""
from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows import servers
from tests.flows.prefect_api import task_runs
from tests.flows.toy_repo import REPORT_SCORE, STAGES, runs_log

pytestmark = pytest.mark.slow

CHECKOUT = Path(__file__).resolve().parents[2]  # where `prefect deploy` runs, as in the README
POOL, DEPLOYMENT = "gpus", "gpus"
PREFECT = [sys.executable, "-m", "prefect"]


def prefect(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    started = time.monotonic()
    done = subprocess.run([*PREFECT, *args], cwd=CHECKOUT, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)
    print(f"`prefect {' '.join(args)}`: {time.monotonic() - started:.0f} s, exit {done.returncode}", flush=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (the worker's flow runs start sessions of their own)."""
    children = collections.defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children[parent].append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children[todo.pop()]:
            found.append(child)
            todo.append(child)
    return found


def stop_tree(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group of `proc` and of each of its descendants, then SIGKILL."""
    groups = {proc.pid}
    for pid in descendants(proc.pid):
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            pass
    groups.discard(os.getpgrp())  # never this test process's own group
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for group in groups:
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=15)
            if not any(_group_alive(group) for group in groups):
                return
        except subprocess.TimeoutExpired:
            pass
    proc.wait()


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def pool_env(stack) -> dict[str, str]:
    """The stack's settings, a worker that polls every 2 s, and our `python` first on PATH."""
    return {**os.environ, **servers.environment(stack), "SMDM_TRACKING": "on",
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


@pytest.fixture
def worker(pool_env, tmp_path):
    """`prefect work-pool create`, then `prefect worker start` in its own session; its log file."""
    prefect(["work-pool", "create", POOL, "--type", "process"], pool_env)
    log = tmp_path / "worker.log"
    with open(log, "wb") as output:
        proc = subprocess.Popen([*PREFECT, "worker", "start", "--pool", POOL], cwd=tmp_path, env=pool_env,
                                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield log
    finally:
        stop_tree(proc)
        print(f"worker stopped (exit {proc.returncode}); its log: {log}")


def test_worker_of_a_pool_runs_the_deployed_flow(stack, pool_env, worker, toy_repo):
    from prefect.client.orchestration import get_client

    started = time.monotonic()
    prefect(["--no-prompt", "deploy", "flows/smdm.py:smdm", "--name", DEPLOYMENT, "--pool", POOL], pool_env)
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(f"smdm/{DEPLOYMENT}")
    assert deployment.work_pool_name == POOL
    assert deployment.entrypoint == "flows/smdm.py:smdm"
    # Prefect's default pull step: the worker loads the flow from this checkout, nothing is pushed
    assert deployment.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(CHECKOUT)}}]

    done = prefect(["deployment", "run", f"smdm/{DEPLOYMENT}", "--params", json.dumps({"root": str(toy_repo)}),
                    "--watch"], pool_env, timeout=300)
    [flow_run_id] = [line.split("UUID:")[1].strip() for line in done.stdout.splitlines() if "UUID:" in line][:1]
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
    assert flow_run.state_name == "Completed"
    assert (flow_run.deployment_id, flow_run.work_pool_name) == (deployment.id, POOL)
    assert f"submitting flow run '{flow_run_id}'" in worker.read_text(errors="replace")  # our worker took it

    runs = task_runs(flow_run_id)
    assert set(runs) == set(STAGES) and {run.state_name for run in runs.values()} == {"Completed"}
    assert sorted(runs_log(toy_repo)) == sorted(STAGES)  # each stage ran once, in the toy project
    assert json.loads((toy_repo / "metrics" / "report.json").read_text())["score"] == REPORT_SCORE
    print(f"deploy + run through the worker: {time.monotonic() - started:.0f} s for {len(STAGES)} stages")
