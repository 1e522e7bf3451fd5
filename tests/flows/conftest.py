"""Real servers on loopback for the flow tests, started with the project's own code.

`stack` (once per session) starts a Prefect server, an MLflow server and the process serving
`smdm/full-paper` through flows.servers, with PREFECT_HOME, the databases and the logs in a
temporary folder, on free ports of 127.0.0.1; it stops them by PID afterwards.
"""
from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from flows import cli, servers
from tests.flows.toy_repo import make_repo


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """A running Prefect server, MLflow server and serve process, all of the toy project
    `stack.root` (its .smdm/ and mlflow.db); this process talks to them."""
    root = make_repo(tmp_path_factory.mktemp("stack") / "toy")
    layout = servers.Layout(root, free_port(), free_port())
    started = time.monotonic()
    try:
        with pytest.MonkeyPatch.context() as patch:
            for key, value in servers.environment(layout).items():
                patch.setenv(key, value)  # first, so that they are restored afterwards
            patch.setenv("SMDM_TRACKING", "on")  # tests/conftest.py turns tracking off
            with cli.talking_to(layout):
                cli.start_all(layout, timeout=240)
                print(f"\nstack up in {time.monotonic() - started:.0f} s: {layout.prefect_url} {layout.mlflow_url}")
                yield layout
    finally:
        servers.stop_all(layout)


@dataclass(frozen=True)
class UpRun:
    """What `python -m flows up` (the `smdm-run` command) did on the stack's project."""

    flow_run_id: str
    output: str
    seconds: float
    returncode: int


@pytest.fixture(scope="session")
def up_run(stack) -> UpRun:
    """The one command, run once against the running stack: triggers, watches, reports."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "flows", "up", "--root", str(stack.root)],
                          capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - started
    output = done.stdout + done.stderr
    print(f"\n`python -m flows up` took {seconds:.0f} s:\n{output}")
    match = re.search(r"-> flow run ([0-9a-f-]{36})", output)
    assert match, output
    return UpRun(match.group(1), output, seconds, done.returncode)
