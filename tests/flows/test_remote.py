"""A worker with its own clone gets finished stages through a DVC remote, not by rerunning."""
from __future__ import annotations

import pytest

from flows.smdm import run_stage, use_remote
from tests.flows.toy_repo import dvc, git_commit, run, runs_log

pytestmark = pytest.mark.slow


def test_worker_clone_restores_stages_from_the_remote(toy_repo, tmp_path, monkeypatch):
    monkeypatch.setenv("SMDM_TRACKING", "off")
    dvc(["remote", "add", "shared", str(tmp_path / "remote")], toy_repo)  # not the default remote
    git_commit(toy_repo, "a shared DVC remote")
    worker = tmp_path / "worker"
    run(["git", "clone", "-q", str(toy_repo), str(worker)], tmp_path)

    # What the flow does with dvc_remote="shared", without Prefect around the task (`.fn`).
    for root in (toy_repo, worker):
        use_remote(root, "shared")
    for stage in ("gen", "proc@a"):
        assert run_stage.fn(stage, str(toy_repo), dvc_remote="shared").status == "ran"
    for stage in ("gen", "proc@a"):
        assert run_stage.fn(stage, str(worker), dvc_remote="shared").status == "restored"
    assert runs_log(worker) == []  # nothing recomputed on the worker
    assert (worker / "out" / "proc_a.txt").read_text() == (toy_repo / "out" / "proc_a.txt").read_text()
