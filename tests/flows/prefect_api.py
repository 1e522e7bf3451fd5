"""Reading flow runs back from the Prefect server the tests started."""
from __future__ import annotations

from flows import cli


def run_deployment(parameters: dict, timeout: float = 300):
    """Trigger `smdm/full-paper` as `prefect deployment run` would, wait; the final flow run."""
    from prefect.client.orchestration import get_client

    flow_run_id = cli.trigger(parameters)
    cli.watch(flow_run_id, poll=1.0, timeout=timeout)
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def task_runs(flow_run_id) -> dict[str, object]:
    """The flow run's task runs by name (the stage names)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name: run for run in runs}


def task_edges(runs: dict[str, object]) -> set[tuple[str, str]]:
    """(upstream, downstream) stage pairs from the task runs' `wait_for` inputs."""
    names = {run.id: name for name, run in runs.items()}
    return {(names[upstream.id], name) for name, run in runs.items()
            for upstream in run.task_inputs.get("wait_for", [])}
