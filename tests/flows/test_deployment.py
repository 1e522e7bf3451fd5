"""The `smdm/full-paper` deployment through a real local Prefect server (see conftest.stack)."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.flows import mlflow_api
from tests.flows.prefect_api import run_deployment, task_edges, task_runs
from tests.flows.toy_repo import EDGES, REPORT_SCORE, STAGES, dvc_dag, runs_log

pytestmark = pytest.mark.slow


def test_one_command_runs_the_whole_dag(stack, up_run):
    assert up_run.returncode == 0, up_run.output
    assert "servers: already running" in up_run.output  # the fixture started them with start_all
    assert f"Prefect UI: {stack.prefect_url}/runs/flow-run/{up_run.flow_run_id}" in up_run.output
    assert f"MLflow UI:  {stack.mlflow_url}" in up_run.output
    assert str(stack.root / "metrics") in up_run.output
    assert "report:     not written (reports/paper.md: the `report` stage did not run)" in up_run.output  # toy DAG
    runs = task_runs(up_run.flow_run_id)
    nodes, edges = dvc_dag(stack.root)
    assert set(runs) == nodes == set(STAGES)  # one task per stage
    assert task_edges(runs) == edges == EDGES  # the edges DVC computes
    assert {run.state_name for run in runs.values()} == {"Completed"}
    assert sorted(runs_log(stack.root)) == sorted(STAGES)  # each stage ran once
    assert json.loads((stack.root / "metrics" / "report.json").read_text())["score"] == REPORT_SCORE
    print(f"\ndeployment run via `python -m flows up`: {up_run.seconds:.0f} s for {len(STAGES)} stages")


def test_failed_stage_fails_the_run_and_rerun_resumes(stack, toy_repo):
    (toy_repo / "FAIL-proc@b").touch()
    started = time.monotonic()
    # `stages`: report and its upstream only (gen, proc@a, grid@p-1, proc@b), to keep it short
    parameters = {"root": str(toy_repo), "stages": ["report"]}
    failed = run_deployment({**parameters, "retries": 1, "retry_delay_seconds": 0})
    print(f"\nfailing run: {time.monotonic() - started:.0f} s")
    assert failed.state_name == "Failed"
    runs = task_runs(failed.id)
    assert runs["proc@b"].state_name == "Failed"
    assert "report" not in runs  # downstream of the failure: never started
    done = {"gen", "proc@a", "grid@p-1"}
    assert {name for name, run in runs.items() if run.state_name == "Completed"} == done
    assert sorted(runs_log(toy_repo)) == sorted([*done, "proc@b", "proc@b"])  # one retry
    outputs = {path: path.stat().st_mtime_ns for path in (toy_repo / "out").glob("*.txt")}
    assert len(outputs) == 3 and not (toy_repo / "out" / "proc_b.txt").exists()

    (toy_repo / "FAIL-proc@b").unlink()
    started = time.monotonic()
    rerun = subprocess.run([sys.executable, "-m", "prefect", "deployment", "run", "smdm/full-paper",
                            "--params", json.dumps(parameters), "--watch"],
                           capture_output=True, text=True, timeout=600)
    print(f"rerun with `prefect deployment run --watch`: {time.monotonic() - started:.0f} s")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert sorted(runs_log(toy_repo)) == sorted([*done, "proc@b", "proc@b", "proc@b", "report"])
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in outputs.items())  # not rewritten

    # How MLflow records it: the rerun's parent has a child per stage; DVC's skips say so.
    [flow_run_id] = [line.split("UUID:")[1].strip() for line in rerun.stdout.splitlines() if "UUID:" in line][:1]
    parent, children = mlflow_api.pipeline_run(stack.mlflow_url, flow_run_id)
    statuses = {stage: mlflow_api.tags(run)["smdm_status"] for stage, run in children.items()}
    assert statuses == {**{stage: "skipped" for stage in done}, "proc@b": "ran", "report": "ran"}
    assert mlflow_api.tags(children["proc@a"])["data_hash"]  # recorded for skipped stages too


def test_stage_logs_reach_the_task_log(stack, up_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId

    runs = task_runs(up_run.flow_run_id)
    only_report = LogFilter(task_run_id=LogFilterTaskRunId(any_=[runs["report"].id]))
    with get_client(sync_client=True) as client:
        messages = [log.message for log in client.read_logs(log_filter=only_report)]
    assert "step report: 2 inputs" in messages  # a line the stage printed, streamed by the task
    assert any(message.startswith("Running stage 'report'") for message in messages)
