"""`smdm-run` / `smdm-stop` and `python -m flows {up,down,status,env,serve}`.

`up` starts what is not running (Prefect server, MLflow server, the process serving the
`smdm/full-paper` deployment), triggers a run of the deployment, shows each stage's state as it
changes, and prints where the outputs and both UIs are. The servers stay up for browsing;
`down` stops what `up` started, serve process first.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from flows import servers
from pipeline_steps.core import run_tracking

DEPLOYMENT = "smdm/full-paper"
OUTPUTS = ("reports", "metrics", "models", "runs", "data")
REPORT = "reports/paper.md"
"""The report stage's document (dvc.yaml), printed last by `smdm-run`."""


@contextlib.contextmanager
def talking_to(layout: servers.Layout) -> Iterator[None]:
    """Prefect clients in this process use our server, even if Prefect was imported (and read
    its settings) before: without an API URL Prefect would start a temporary server of its own."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    os.environ.update(servers.environment(layout))
    with temporary_settings(updates={PREFECT_API_URL: f"{layout.prefect_url}/api"}):
        yield


def serve(root: Path) -> None:
    """Serve the flow as deployment `full-paper`, one flow run at a time (one DVC workspace)."""
    from prefect.types.entrypoint import EntrypointType

    from flows.smdm import smdm

    os.chdir(root)
    smdm.serve(name="full-paper", parameters={"root": str(root)}, limit=1,
               entrypoint_type=EntrypointType.MODULE_PATH)  # importable from any working directory


def deployment_ready(since: float) -> bool:
    """The served deployment has been polled by our serve process (not a stale record)."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(DEPLOYMENT)
    except Exception:  # not registered yet
        return False
    return deployment.last_polled is not None and deployment.last_polled.timestamp() >= since


def start_all(layout: servers.Layout, timeout: float = 180) -> None:
    env = {**os.environ, **servers.environment(layout)}
    layout.save()
    started = servers.start_servers(layout, env, timeout)
    print(f"servers: {', '.join(started) or 'already running'}", flush=True)
    if servers.running_pid(layout, "serve") is None:
        since = time.time() - 1
        servers.spawn(layout, "serve", env)
        servers.wait_for(lambda: deployment_ready(since), f"serving {DEPLOYMENT}", layout, "serve", timeout)
        print(f"serving {DEPLOYMENT}", flush=True)


def trigger(parameters: dict) -> str:
    from prefect.deployments import run_deployment

    flow_run = run_deployment(DEPLOYMENT, parameters=parameters, timeout=0)
    return str(flow_run.id)


def watch(flow_run_id: str, poll: float = 2.0, timeout: float | None = None) -> str:
    """Print each stage's state when it changes until the flow run ends; its final state."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    start, seen = time.monotonic(), {}
    only_this_run = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:
        while True:
            flow_run = client.read_flow_run(flow_run_id)
            runs = client.read_task_runs(flow_run_filter=only_this_run)
            states = {"flow run": flow_run.state_name}
            # A task run is Pending under a placeholder name until it starts and takes its stage's.
            started = sorted((run for run in runs if run.state_name != "Pending"), key=_start_time)
            states.update({run.name: run.state_name for run in started})
            for name, state in states.items():
                if seen.get(name) != state:
                    print(f"[{time.monotonic() - start:6.0f}s] {name:<32} {state}", flush=True)
                    seen[name] = state
            if flow_run.state is not None and flow_run.state.is_final():
                return flow_run.state_name
            if timeout is not None and time.monotonic() - start > timeout:
                raise TimeoutError(f"flow run {flow_run_id} still {flow_run.state_name} after {timeout:.0f} s")
            time.sleep(poll)


def _start_time(task_run) -> float:
    return task_run.expected_start_time.timestamp() if task_run.expected_start_time else 0.0


def mlflow_ui(layout: servers.Layout) -> str:
    """The experiment's runs in MLflow's model-training view: MLflow 3.17 opens its GenAI view
    (traces, judges, evaluation runs) unless the URL or the user's last choice says otherwise."""
    query = urllib.parse.urlencode({"experiment_name": run_tracking.EXPERIMENT})
    try:
        with urllib.request.urlopen(f"{layout.mlflow_url}/api/2.0/mlflow/experiments/get-by-name?{query}",
                                    timeout=10) as response:
            experiment = json.loads(response.read())["experiment"]["experiment_id"]
    except (OSError, ValueError, KeyError):  # no server or no experiment yet
        return f"{layout.mlflow_url}/#/experiments?{run_tracking.UI_VIEW}"
    return f"{layout.mlflow_url}/#/experiments/{experiment}/runs?{run_tracking.UI_VIEW}"


def report(layout: servers.Layout, flow_run_id: str) -> None:
    print("\noutputs:")
    for folder in OUTPUTS:
        if (layout.root / folder).exists():
            print(f"  {layout.root / folder}")
    print(f"Prefect UI: {layout.prefect_url}/runs/flow-run/{flow_run_id}")
    print(f"MLflow UI:  {mlflow_ui(layout)}  (parent run `smdm/<flow run name>`)")
    print(f"stop both:  smdm-stop   (or python -m flows down --root {layout.root})")
    paper = layout.root / REPORT
    print(f"report:     {paper} and {paper.with_suffix('.html')}" if paper.exists() else
          f"report:     not written ({REPORT}: the `report` stage did not run)")


def stage_configs() -> dict[str, type]:
    """Each stage's config class: the annotation of `cfg` in its module's `run` (one definition)."""
    import importlib
    import typing

    code = Path(__file__).resolve().parents[1] / "pipeline_steps"  # the stages this process runs
    stages = sorted(p.stem for p in code.glob("*.py"))
    if not stages:
        raise RuntimeError(f"{code}: no stage modules")
    return {s: typing.get_type_hints(importlib.import_module(f"pipeline_steps.{s}").run)["cfg"]
            for s in stages}


def check_profile(args: argparse.Namespace) -> int:
    """0 when every section of the profile builds its stage's config; else the one-line error and
    exit status 2, before any server starts."""
    from pipeline_steps.core.params import build_config
    from pipeline_steps.core.profile import render
    from pipeline_steps.core.stage_cli import guarded

    def check() -> None:
        params = render(args.profile, Path(args.root) / "profiles")
        for stage, config in stage_configs().items():
            if stage in params:  # a project may run only some of our stages (the tests' toy one)
                build_config(config, params[stage], stage)

    return guarded("smdm-run", check, args.debug) if args.profile else 0


def up(args: argparse.Namespace) -> int:
    if code := check_profile(args):
        return code
    layout = servers.Layout.load(Path(args.root), args.prefect_port, args.mlflow_port)
    with talking_to(layout):
        start_all(layout)
        if args.no_run:
            return 0
        parameters = {"profile": args.profile} if args.profile else {}
        flow_run_id = trigger(parameters)
        print(f"triggered {DEPLOYMENT} {parameters} -> flow run {flow_run_id}", flush=True)
        state = watch(flow_run_id)
    report(layout, flow_run_id)
    return 0 if state == "Completed" else 1


def down(args: argparse.Namespace) -> int:
    stopped = servers.stop_all(servers.Layout.load(Path(args.root)))
    print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    return 0


def status(args: argparse.Namespace) -> int:
    layout = servers.Layout.load(Path(args.root))
    for name in servers.PROCESSES:
        pid = servers.running_pid(layout, name)
        print(f"{name:<8} {'pid ' + str(pid) if pid else 'not running'}")
    print(f"Prefect UI: {layout.prefect_url}\nMLflow UI:  {mlflow_ui(layout)}")
    return 0


def env(args: argparse.Namespace) -> int:
    """Lines for `eval "$(python -m flows env)"`: then `prefect deployment run` finds the server."""
    for key, value in servers.environment(servers.Layout.load(Path(args.root))).items():
        print(f"export {key}={value}")
    return 0


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(prog="python -m flows", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = cli.add_subparsers(dest="command", required=True)
    for name, handler in (("up", up), ("down", down), ("status", status), ("env", env), ("serve", None)):
        sub = commands.add_parser(name)
        sub.add_argument("--root", default=".", help="project folder (dvc.yaml, params.yaml)")
        sub.set_defaults(handler=handler)
    run = commands.choices["up"]
    run.add_argument("--profile", default="default", help="profile to run ('' keeps params.yaml)")
    run.add_argument("--prefect-port", type=int, default=None, help=f"default {servers.PREFECT_PORT}")
    run.add_argument("--mlflow-port", type=int, default=None, help=f"default {servers.MLFLOW_PORT}")
    run.add_argument("--no-run", action="store_true", help="only start the servers and serve")
    run.add_argument("--debug", action="store_true", help="show the traceback of a bad profile too")
    return cli


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "serve":
        serve(Path(args.root).resolve())
        return 0
    return args.handler(args)


def run_main() -> None:
    """Console script `smdm-run`: `python -m flows up`."""
    sys.exit(main(["up", *sys.argv[1:]]))


def stop_main() -> None:
    """Console script `smdm-stop`: `python -m flows down`."""
    sys.exit(main(["down", *sys.argv[1:]]))
