"""Local Prefect and MLflow servers and the process serving the `full-paper` deployment.

Everything lives under the project: `.smdm/prefect` (PREFECT_HOME, its SQLite database),
`.smdm/pids/<name>.pid`, `.smdm/logs/<name>.log`, `mlflow.db` and `mlartifacts/`. Each process
starts in its own session, so stopping one signals its whole process group (a server's own
workers included) and nothing else. Servers bind to 127.0.0.1 only.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

PREFECT_PORT, MLFLOW_PORT = 4200, 5000
# Stop order: the serve process first (it reports to the Prefect server), then the servers.
PROCESSES = ("serve", "prefect", "mlflow")


@dataclass(frozen=True)
class Layout:
    """Where one project's servers keep their state, and which ports they listen on."""

    root: Path
    prefect_port: int = PREFECT_PORT
    mlflow_port: int = MLFLOW_PORT

    @property
    def state(self) -> Path:
        return self.root / ".smdm"

    @property
    def prefect_url(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    def pid_file(self, name: str) -> Path:
        return self.state / "pids" / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.state / "logs" / f"{name}.log"

    def save(self) -> None:
        (self.state).mkdir(parents=True, exist_ok=True)
        ports = {k: v for k, v in asdict(self).items() if k != "root"}
        (self.state / "servers.json").write_text(json.dumps(ports))

    @classmethod
    def load(cls, root: Path, prefect_port: int | None = None, mlflow_port: int | None = None) -> Layout:
        """The ports given, else those the last `up` used, else the defaults."""
        saved_file = root / ".smdm" / "servers.json"
        saved = json.loads(saved_file.read_text()) if saved_file.exists() else {}
        return cls(root.resolve(), prefect_port or saved.get("prefect_port", PREFECT_PORT),
                   mlflow_port or saved.get("mlflow_port", MLFLOW_PORT))


def environment(layout: Layout) -> dict[str, str]:
    """Settings every process of the project shares (servers, serve, CLI, stage processes)."""
    return {
        "PREFECT_HOME": str(layout.state / "prefect"),
        "PREFECT_API_URL": f"{layout.prefect_url}/api",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        "MLFLOW_TRACKING_URI": layout.mlflow_url,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no job runner: 1 process, not 15
        "DVC_NO_ANALYTICS": "1",
    }


def commands(layout: Layout) -> dict[str, list[str]]:
    python = sys.executable
    return {
        "prefect": [python, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                    "--port", str(layout.prefect_port), "--analytics-off"],
        "mlflow": [python, "-m", "mlflow", "server", "--workers", "1",
                   "--backend-store-uri", f"sqlite:///{layout.root / 'mlflow.db'}",
                   "--artifacts-destination", str(layout.root / "mlartifacts"),
                   "--host", "127.0.0.1", "--port", str(layout.mlflow_port)],
        "serve": [python, "-m", "flows", "serve", "--root", str(layout.root)],
    }


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200
    except OSError:
        return False


def health_url(layout: Layout, name: str) -> str:
    return {"prefect": f"{layout.prefect_url}/api/health", "mlflow": f"{layout.mlflow_url}/health"}[name]


def running_pid(layout: Layout, name: str) -> int | None:
    """The PID in `.smdm/pids/<name>.pid` if that process is alive and still one of ours."""
    pid_file = layout.pid_file(name)
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text().split()[0])
    try:
        arguments = _arguments(pid)
    except OSError:  # gone, or no /proc on this system: a live PID is taken as ours
        return pid if _alive(pid) else None
    return pid if name in arguments else None  # a reused PID is someone else's


def _arguments(pid: int) -> list[str]:
    """The command line of `pid`; briefly empty while a just-started process is exec'ing."""
    for _ in range(20):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if cmdline or not _alive(pid):
            break
        time.sleep(0.05)
    return cmdline.decode(errors="replace").split("\0")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def spawn(layout: Layout, name: str, env: dict[str, str]) -> int:
    """Start process `name` in its own session, output to its log file, PID to its PID file."""
    for folder in (layout.pid_file(name).parent, layout.log_file(name).parent):
        folder.mkdir(parents=True, exist_ok=True)
    with open(layout.log_file(name), "ab") as log:
        proc = subprocess.Popen(commands(layout)[name], cwd=layout.root, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    layout.pid_file(name).write_text(f"{proc.pid}\n")
    return proc.pid


def wait_for(check: Callable[[], bool], what: str, layout: Layout, name: str, timeout: float) -> None:
    """Poll `check` until true; fail early, with the log's tail, if the process died."""
    deadline = time.monotonic() + timeout
    while not check():
        if running_pid(layout, name) is None:
            raise RuntimeError(f"{what} exited; last lines of {layout.log_file(name)}:\n{log_tail(layout, name)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout:.0f} s; see {layout.log_file(name)}")
        time.sleep(0.5)


def log_tail(layout: Layout, name: str, lines: int = 30) -> str:
    path = layout.log_file(name)
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def start_servers(layout: Layout, env: dict[str, str], timeout: float = 180) -> list[str]:
    """Prefect and MLflow servers, started side by side unless already up; names started."""
    started = []
    for name in ("prefect", "mlflow"):
        if healthy(health_url(layout, name)):
            continue
        if running_pid(layout, name) is None:
            spawn(layout, name, env)
            started.append(name)
    for name in ("prefect", "mlflow"):
        if not healthy(health_url(layout, name)):
            wait_for(lambda n=name: healthy(health_url(layout, n)), f"{name} server", layout, name, timeout)
    return started


def stop(layout: Layout, name: str, timeout: float = 30) -> bool:
    """SIGTERM to the process group of `name` (SIGKILL if it outlives `timeout`); False if none."""
    pid = running_pid(layout, name)
    layout.pid_file(name).unlink(missing_ok=True)
    if pid is None:
        return False
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.2)
    if _alive(pid):
        _signal_group(pid, signal.SIGKILL)
    _reap(pid)
    return True


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the session we started: the process and its workers
    except ProcessLookupError:
        pass


def _reap(pid: int) -> None:
    """Collect the exit status when we are the parent (tests), so no zombie looks alive."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop_all(layout: Layout) -> list[str]:
    return [name for name in PROCESSES if stop(layout, name)]
