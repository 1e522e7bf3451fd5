"""A tracking database that is corrupt or locked ends a stage as one line naming the file and
saying how to run without tracking, before the stage writes anything; a lock is waited out."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline_steps.core import run_tracking
from tests.cli_errors import cli, one_line_error

# `scaling` is the cheapest stage: it opens its run before it reads its inputs.
SCALING = ["-m", "pipeline_steps.scaling", "--runs", "runs", "--out", "out", "--metrics", "metrics/scaling.json"]
LOCK = """import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


@pytest.fixture(scope="module")
def database(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables (making them takes seconds); tests copy it."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}")
    return path


def hold_lock(db: Path, seconds: float) -> subprocess.Popen:
    """Another process holding SQLite's exclusive lock on `db` for `seconds`."""
    holder = subprocess.Popen([sys.executable, "-c", LOCK, str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def nothing_written(folder: Path) -> bool:
    return not (folder / "out").exists() and not (folder / "metrics").exists()


def test_a_corrupt_database_is_one_line_naming_it(tmp_path):
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"not a database, whatever it was " * 512)
    # MLFLOW_TRACKING_URI="" : the default store, `mlflow.db` in the working directory
    out = cli(SCALING, tmp_path, SMDM_TRACKING="on", MLFLOW_TRACKING_URI="")
    one_line_error(out, f"MLflow tracking database {db} ", "file is not a database", "SMDM_TRACKING=off")
    assert db.read_bytes() == b"not a database, whatever it was " * 512 and nothing_written(tmp_path)


@pytest.mark.slow
def test_a_locked_database_is_retried_then_one_line_naming_it(tmp_path, database):
    db = tmp_path / "mlflow.db"
    db.write_bytes(database.read_bytes())
    holder = hold_lock(db, 120)
    try:
        started = time.monotonic()
        out = cli(SCALING, tmp_path, SMDM_TRACKING="on", MLFLOW_TRACKING_URI="")
        seconds = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    line = one_line_error(out, f"MLflow tracking database {db} is locked by another process", "SMDM_TRACKING=off")
    tries = int(re.search(r"after (\d+) tries", line).group(1))
    assert tries >= 2 and run_tracking.LOCK_WAIT_S <= seconds < 60, (line, seconds)
    assert nothing_written(tmp_path)


@pytest.mark.slow
def test_a_lock_released_while_retrying_is_waited_out(tmp_path, database, monkeypatch):
    db = tmp_path / "mlflow.db"
    db.write_bytes(database.read_bytes())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    holder = hold_lock(db, 8)  # longer than SQLite's own 5 s wait: only a second try gets through
    try:
        started = time.monotonic()
        client = run_tracking.open_client()
        assert client.get_experiment_by_name("Default") is not None
        assert time.monotonic() - started > 6
    finally:
        holder.kill()
        holder.wait()
