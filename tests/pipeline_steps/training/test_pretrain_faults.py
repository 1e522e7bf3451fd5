"""A pretrain stage killed mid-group: its training workers die with it and write nothing after,
and the rerun (after DVC deleted the stage's outputs) trains only the runs that had not finished."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.pipeline_steps.test_pretrain import ROOT, pretrain_cmd, run_cli, write_params

WALL_CLOCK = {"seconds", "tokens_per_second", "matmul_flops_per_second"}
FAULT_HISTORY = {"resumed", "restored"}  # how this attempt got its run, not what the run is


def start_stage(folder: Path, params: Path, data: dict, **env: str) -> subprocess.Popen:
    env = {**os.environ, "SMDM_TRACKING": "off", "PYTHONPATH": str(ROOT), **env}
    return subprocess.Popen(pretrain_cmd(folder, params, data), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_until(condition, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"the stage {'ended' if proc.poll() is not None else 'timed out'} before {what}")


def workers(proc: subprocess.Popen) -> list[psutil.Process]:
    """The stage's spawned training workers (not multiprocessing's resource tracker)."""
    try:
        return [p for p in psutil.Process(proc.pid).children(recursive=True) if "spawn_main" in " ".join(p.cmdline())]
    except psutil.Error:
        return []


def tree(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every path under the folders with its size and mtime: what a stray write would change."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for folder in folders if folder.exists()
            for p in folder.rglob("*")}


def kill_stage(proc: subprocess.Popen) -> list[psutil.Process]:
    """SIGKILL the stage process alone (as an OOM killer would); the workers it left alive."""
    spawned = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(spawned, timeout=5)
    for survivor in alive:  # never leave them running, whatever the test says
        survivor.kill()
    return alive


@pytest.mark.slow
def test_killed_stage_takes_its_workers_with_it(tiny_data, tmp_path):
    # thousands of steps per run: both workers are mid-training when the stage dies
    group = {"family": "mdm", "kind": "grid", "flops": 2.0e10, "sizes": ["6k", "9k"]}
    proc = start_stage(tmp_path, write_params(tmp_path, group, parallel_runs=2), tiny_data)
    try:
        wait_until(lambda: len(workers(proc)) == 2 and len(list(tmp_path.glob("ckpt/*/last.ckpt"))) == 2,
                   proc, "both workers wrote a checkpoint")
        outputs = tree(tmp_path / "models")
        alive = kill_stage(proc)
        assert not alive, f"workers outlived the stage: {[p.pid for p in alive]}"
        after = tree(tmp_path / "models", tmp_path / "ckpt")
        time.sleep(2)
        assert tree(tmp_path / "models", tmp_path / "ckpt") == after  # nothing writes any more
        assert tree(tmp_path / "models") == outputs  # and workers never wrote into the stage's outputs
        assert not (tmp_path / "runs.jsonl").exists()
    finally:
        if proc.poll() is None:
            kill_stage(proc)


@pytest.mark.slow
def test_sigterm_stops_the_workers_at_once_and_ends_their_runs_killed(tiny_data, tmp_path, monkeypatch):
    """SIGTERM unwinds the stage (its MLflow runs end KILLED) instead of waiting for the runs to end."""
    from mlflow.tracking import MlflowClient

    for name in ("SMDM_PARENT_RUN_ID", "SMDM_STAGE_RUN_ID", "SMDM_EXPERIMENT"):
        monkeypatch.delenv(name, raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    group = {"family": "mdm", "kind": "grid", "flops": 2.0e10, "sizes": ["6k", "9k"]}
    proc = start_stage(tmp_path, write_params(tmp_path, group, parallel_runs=2), tiny_data,
                       SMDM_TRACKING="on", MLFLOW_TRACKING_URI=uri)
    try:
        wait_until(lambda: len(workers(proc)) == 2 and len(list(tmp_path.glob("ckpt/*/last.ckpt"))) == 2,
                   proc, "both workers wrote a checkpoint")
        spawned = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == -signal.SIGTERM
        gone, alive = psutil.wait_procs(spawned, timeout=5)
        assert not alive
    finally:
        if proc.poll() is None:
            kill_stage(proc)
    client = MlflowClient(tracking_uri=uri)
    found = client.search_runs([client.get_experiment_by_name("smdm").experiment_id])
    status = {r.data.tags["mlflow.runName"]: r.info.status for r in found if r.data.tags.get("smdm_stage")}
    assert status == {"pretrain@g": "KILLED", "mdm-6k-g": "KILLED", "mdm-9k-g": "KILLED"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_rerun_after_outputs_deleted_trains_only_unfinished_runs(tiny_data, tmp_path):
    # 21 steps for 101k, 322 for 6k: the first run finishes while the second is mid-training
    group = {"family": "mdm", "kind": "grid", "flops": 8.0e8, "sizes": ["101k", "6k"]}
    straight, killed, ckpt = tmp_path / "straight", tmp_path / "killed", tmp_path / "ckpt"
    for folder in (straight, killed):
        folder.mkdir()
    # one checkpoint folder (it is part of the settings a run_key covers), empty again after each group
    assert run_cli(straight, write_params(straight, group, checkpoint_dir=str(ckpt)), tiny_data).returncode == 0
    assert not list(ckpt.iterdir())

    params = write_params(killed, group, checkpoint_dir=str(ckpt))
    proc = start_stage(killed, params, tiny_data)
    try:
        wait_until(lambda: (killed / "models" / "101k" / "run.json").exists(), proc, "101k finished")
        assert not kill_stage(proc)
    finally:
        if proc.poll() is None:
            kill_stage(proc)
    assert not (killed / "models" / "6k").exists(), "6k finished before the kill: give it more steps"
    kept = [json.loads(p.read_text()) for p in ckpt.glob("*/finished/run.json")]
    assert [r["size"] for r in kept] == ["101k"]  # outside the outputs

    shutil.rmtree(killed / "models")  # what DVC does before it reruns a failed stage
    out = run_cli(killed, params, tiny_data)
    assert out.returncode == 0, out.stderr[-3000:]

    records = {r["size"]: r for r in map(json.loads, open(killed / "runs.jsonl"))}
    assert records["101k"] == {**kept[0], "restored": True}  # the first attempt's record: not trained again
    assert records["6k"]["restored"] is False
    expected = {r["size"]: r for r in map(json.loads, open(straight / "runs.jsonl"))}
    assert list(records) == list(expected) == ["101k", "6k"]
    for size, record in records.items():
        assert sha256(killed / "models" / size / "model.safetensors") == \
            sha256(straight / "models" / size / "model.safetensors")
        artifact = json.loads((killed / "models" / size / "run.json").read_text())
        drop = WALL_CLOCK | FAULT_HISTORY
        assert {k: v for k, v in record.items() if k not in drop} == \
            {k: v for k, v in expected[size].items() if k not in drop} == \
            {k: v for k, v in artifact.items() if k not in drop}
    assert not list(ckpt.iterdir())  # the group finished: its copies are gone


CHILD = """
import ctypes, os, sys, time
from pipeline_steps.training.runs import die_with_parent
die_with_parent(os.getppid(), pdeathsig={pdeathsig})
signal = ctypes.c_int(0)
if sys.platform.startswith("linux"):
    ctypes.CDLL(None).prctl(2, ctypes.byref(signal))  # PR_GET_PDEATHSIG
print("ready", signal.value, flush=True)
time.sleep(300)
"""


@pytest.mark.slow
@pytest.mark.parametrize("pdeathsig", [True, False], ids=["prctl", "portable-fallback"])
def test_die_with_parent_follows_a_killed_parent(tmp_path, pdeathsig):
    """The kernel's parent-death signal is set (Linux); without it the watching thread alone (what
    other systems rely on) ends the orphan."""
    if pdeathsig and not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    child = CHILD.format(pdeathsig=pdeathsig)
    parent = ("import subprocess, sys, time; "
              f"subprocess.Popen([sys.executable, '-c', {child!r}], stdout=open({str(tmp_path / 'out')!r}, 'w')); "
              "time.sleep(300)")
    proc = subprocess.Popen([sys.executable, "-c", parent], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        wait_until(lambda: (tmp_path / "out").exists() and "ready" in (tmp_path / "out").read_text(), proc,
                   "the child was ready")
        if sys.platform.startswith("linux"):
            assert (tmp_path / "out").read_text().split() == ["ready", str(int(signal.SIGKILL) if pdeathsig else 0)]
        assert not kill_stage(proc)
    finally:
        if proc.poll() is None:
            kill_stage(proc)
