"""Stopping by PID file: only the process group we started, never a PID that was reused."""
from __future__ import annotations

import os
import subprocess
import sys

from flows import servers


def test_stop_signals_our_process_group_and_ignores_foreign_pids(tmp_path):
    layout = servers.Layout(tmp_path, prefect_port=4999, mlflow_port=5999)
    # A stand-in for the serve process: its command line names it, as `python -m flows serve` does.
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "serve"], start_new_session=True)
    layout.pid_file("serve").parent.mkdir(parents=True)
    layout.pid_file("serve").write_text(f"{proc.pid}\n")
    layout.pid_file("mlflow").write_text(f"{os.getpid()}\n")  # a live PID that is not an MLflow server
    assert servers.running_pid(layout, "serve") == proc.pid
    assert servers.running_pid(layout, "mlflow") is None and servers.running_pid(layout, "prefect") is None

    assert servers.stop_all(layout) == ["serve"]
    assert proc.poll() is not None  # reaped by stop()
    assert not layout.pid_file("serve").exists() and not layout.pid_file("mlflow").exists()


def test_layout_remembers_its_ports(tmp_path):
    servers.Layout(tmp_path, prefect_port=4999, mlflow_port=5999).save()
    loaded = servers.Layout.load(tmp_path)
    assert (loaded.prefect_url, loaded.mlflow_url) == ("http://127.0.0.1:4999", "http://127.0.0.1:5999")
    assert servers.environment(loaded)["PREFECT_HOME"] == str(tmp_path.resolve() / ".smdm" / "prefect")
    assert servers.Layout.load(tmp_path, prefect_port=4321).prefect_port == 4321
