"""MLflow with a PostgreSQL backend store: a real `mlflow server --backend-store-uri postgresql://...`
on a throwaway PostgreSQL cluster, and a real stage (`tokenizer`) tracked through it.

The cluster is Debian's PostgreSQL server (`make test` installs it when missing): initdb in a
temporary folder, `postgres` on 127.0.0.1 and a free port, its socket in that folder. initdb and
postgres refuse to run as root, so under root (CI) they run as the `postgres` system user (else
`nobody`) through setpriv. Every server here starts in its own session and its whole process
group is killed in teardown; the folder is removed.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from flows.servers import healthy
from pipeline_steps.core import run_tracking
from tests.conftest import write_corpus

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


TOOLS = ("initdb", "postgres", "pg_isready", "createdb")


def postgres_bin() -> Path | None:
    """The newest Debian PostgreSQL server's bin folder (/usr/lib/postgresql/N/bin), else the
    folder an `initdb` on PATH links to (other systems), if it holds every tool used here."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    initdb = found[-1] if found else shutil.which("initdb")
    folder = Path(initdb).resolve().parent if initdb else None
    return folder if folder is not None and all((folder / tool).exists() for tool in TOOLS) else None


PG_BIN = postgres_bin()
needs_postgres = pytest.mark.skipif(
    PG_BIN is None, reason="PostgreSQL server binaries (initdb, postgres, pg_isready, createdb) not installed; `make test` "
                           "installs Debian's `postgresql` package")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unprivileged() -> tuple[list[str], pwd.struct_passwd | None]:
    """A command prefix that drops root to a system user (none when not root), and that user."""
    if os.geteuid() != 0:
        return [], None
    for name in ("postgres", "nobody"):
        try:
            user = pwd.getpwnam(name)
        except KeyError:
            continue
        return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"], user
    pytest.fail("running as root and neither a `postgres` nor a `nobody` user exists to run PostgreSQL as")


def spawn(cmd: list[str], log: Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`cmd` in its own session (so that killing its group stops its children too)."""
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def stop_group(proc: subprocess.Popen, first: int = signal.SIGTERM, timeout: float = 15) -> None:
    """`first` to the process group, SIGKILL to it if the leader outlives `timeout`; reaped."""
    for sig in (first, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=timeout)
            break
        except subprocess.TimeoutExpired:
            continue
    try:  # children left behind by a leader that died (SIGKILL does not wait)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=timeout)


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen, what: str, log: Path, timeout: float) -> None:
    """Poll `ready` until true; fail early, with the log's tail, if the process died."""
    def tail() -> str:
        return "\n".join(log.read_text(errors="replace").splitlines()[-30:])

    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; last lines of {log}:\n{tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout:.0f} s; last lines of {log}:\n{tail()}")
        time.sleep(0.3)


@dataclass(frozen=True)
class Postgres:
    port: int
    user: str = "smdm"
    database: str = "mlflow"

    @property
    def uri(self) -> str:
        # SQLAlchemy 2.1 reads a bare `postgresql://` as psycopg 3; the project installs psycopg2.
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def query(self, sql: str, *args) -> list[tuple]:
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, dbname=self.database)
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, args)
                return cursor.fetchall()
        finally:
            connection.close()


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 with an empty database `mlflow` (trust auth)."""
    prefix, user = unprivileged()
    # Not under pytest's tmp_path: /tmp/pytest-of-root is root's alone (0700), the server user
    # could not enter it. A short path also keeps the socket under the 107-byte limit.
    folder = Path(tempfile.mkdtemp(prefix="smdm-pg-"))
    if user is not None:
        os.chown(folder, user.pw_uid, user.pw_gid)
    data, sockets, log = folder / "data", folder / "sockets", folder / "postgres.log"
    pg = Postgres(free_port())
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    proc = None
    try:
        init = subprocess.run([*prefix, str(PG_BIN / "initdb"), "-D", str(data), "-U", pg.user, "--auth=trust",
                               "--encoding=UTF8", "--no-locale", "--no-sync"],
                              cwd=folder, env=env, capture_output=True, text=True, timeout=120)
        assert init.returncode == 0, f"initdb failed:\n{init.stdout[-2000:]}\n{init.stderr[-3000:]}"
        subprocess.run([*prefix, "mkdir", str(sockets)], check=True)
        proc = spawn([*prefix, str(PG_BIN / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(pg.port),
                      "-k", str(sockets), "-c", "fsync=off", "-c", "synchronous_commit=off",
                      "-c", "full_page_writes=off"], log, folder, env)
        is_ready = [str(PG_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(pg.port), "-U", pg.user]
        wait_until(lambda: subprocess.run(is_ready).returncode == 0, proc, "postgres", log, 60)
        created = subprocess.run([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", pg.user,
                                  pg.database], capture_output=True, text=True, timeout=60)
        assert created.returncode == 0, created.stderr
        yield pg
    finally:
        if proc is not None:
            stop_group(proc, signal.SIGQUIT)  # the postmaster's immediate shutdown; backends share its group
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def mlflow_on_postgres(postgres: Postgres, tmp_path: Path) -> Iterator[str]:
    """`mlflow server` with its backend store in `postgres`, as flows/servers.py starts it; its URL."""
    folder = tmp_path / "mlflow-server"
    folder.mkdir()
    port, log = free_port(), folder / "mlflow.log"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = spawn([sys.executable, "-m", "mlflow", "server", "--workers", "1",
                  "--backend-store-uri", postgres.uri,
                  "--artifacts-destination", str(folder / "mlartifacts"),
                  "--host", "127.0.0.1", "--port", str(port)], log, folder, env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: healthy(f"{url}/health"), proc, "mlflow server", log, 120)
        yield url
    finally:
        stop_group(proc)
    assert not list(folder.glob("*.db")), "the MLflow server wrote a SQLite database next to it"


def git(project: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=project, env=env, capture_output=True, text=True, check=True).stdout


@needs_postgres
def test_a_stage_tracked_by_mlflow_on_postgresql(postgres, mlflow_on_postgres, tmp_path):
    from mlflow.tracking import MlflowClient

    project = tmp_path / "project"
    write_corpus(project / "data" / "corpus")
    (project / "params.yaml").write_text(yaml.safe_dump({"tokenizer": {"kind": "train", "vocab_size": 320}}))
    git(project, "init", "-q")
    git(project, "add", "params.yaml")
    git(project, "commit", "-qm", "params")
    commit = git(project, "rev-parse", "HEAD").strip()

    env = {**os.environ, "SMDM_TRACKING": "on", "MLFLOW_TRACKING_URI": mlflow_on_postgres,
           "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}
    for key in ("SMDM_PARENT_RUN_ID", "SMDM_STAGE_RUN_ID", "SMDM_EXPERIMENT"):
        env.pop(key, None)
    done = subprocess.run([sys.executable, "-m", "pipeline_steps.tokenizer", "--params", "params.yaml",
                           "--corpus", "data/corpus", "--out", "data/tokenizer", "--metrics", "metrics/tokenizer.json"],
                          cwd=project, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-5000:]
    assert (project / "data" / "tokenizer" / "tokenizer.model").exists()
    assert not (project / "mlflow.db").exists(), "the stage tracked into SQLite, not the server"

    client = MlflowClient(tracking_uri=mlflow_on_postgres)
    experiment = client.get_experiment_by_name("smdm")
    assert experiment is not None
    runs = {run.data.tags.get("smdm_kind"): run for run in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"pipeline", "stage"}, runs
    parent, child = runs["pipeline"], runs["stage"]
    assert parent.info.status == "FINISHED" and child.info.status == "FINISHED"
    assert parent.data.tags["git_commit"] == commit
    assert parent.data.tags["smdm_pipeline_key"] == f"{commit[:12]}-{run_tracking.params_hash(project / 'params.yaml')}"
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.data.tags["smdm_stage"] == "tokenizer" and child.data.tags["smdm_status"] == "ran"
    assert child.data.tags["git_commit"] == commit and child.data.tags["git_dirty"] == "false"
    assert child.data.params == {"tokenizer/kind": "train", "tokenizer/vocab_size": "320"}
    assert child.data.metrics == {"vocab_size": 320.0}

    # The rows are PostgreSQL's: no other store (a SQLite file, say) could have answered the above.
    rows = dict(postgres.query("SELECT run_uuid, status FROM runs"))
    assert rows == {parent.info.run_id: "FINISHED", child.info.run_id: "FINISHED"}
    assert postgres.query("SELECT key, value FROM params WHERE run_uuid = %s ORDER BY key", child.info.run_id) == [
        ("tokenizer/kind", "train"), ("tokenizer/vocab_size", "320")]
    assert postgres.query("SELECT key, value FROM latest_metrics WHERE run_uuid = %s", child.info.run_id) == [
        ("vocab_size", 320.0)]
    assert postgres.query("SELECT value FROM tags WHERE run_uuid = %s AND key = 'mlflow.parentRunId'",
                          child.info.run_id) == [(parent.info.run_id,)]
