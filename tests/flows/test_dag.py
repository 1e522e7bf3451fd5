"""The flow's stage graph is DVC's: same stages (foreach/matrix expanded), same edges."""
from __future__ import annotations

import json

import networkx as nx
import pytest

from flows import dag
from flows.records import read_metrics
from flows.smdm import dvc_status, profile_of
from tests.flows.toy_repo import EDGES, STAGES, dvc, dvc_dag


def test_graph_has_the_stages_and_edges_dvc_dag_reports(toy_repo):
    graph = dag.load_dag(toy_repo)
    nodes, edges = dvc_dag(toy_repo)  # a separate `dvc dag --dot` process
    assert set(graph.nodes) == nodes == set(STAGES)
    assert set(graph.edges) == edges == EDGES


def test_run_order_is_topological_and_stable(toy_repo):
    graph = dag.load_dag(toy_repo)
    order = dag.run_order(graph)
    assert sorted(order) == sorted(STAGES)
    assert all(order.index(up) < order.index(down) for up, down in graph.edges)
    assert order == dag.run_order(dag.load_dag(toy_repo))


def test_stage_info_names_metrics_and_input_data(toy_repo):
    graph = dag.load_dag(toy_repo)
    report = graph.nodes["report"]["info"]
    assert report.metrics == ("metrics/report.json",)
    assert report.data_deps == ("out/grid_p_1.txt", "out/proc_b.txt")
    assert graph.nodes["gen"]["info"].data_deps == ()  # step.py is code, not data


def test_select_takes_upstream_and_whole_groups():
    graph = nx.DiGraph(list(EDGES))
    assert set(dag.select(graph, ["report"]).nodes) == {"report", "grid@p-1", "proc@b", "proc@a", "gen"}
    assert set(dag.select(graph, ["grid"]).nodes) == {"gen", "proc@a", "grid@p-1", "grid@p-2", "grid@q-1", "grid@q-2"}
    assert set(dag.select(graph, None).nodes) == set(STAGES)
    with pytest.raises(ValueError, match="no stage 'nope'"):
        dag.select(graph, ["nope"])


def test_data_hash_follows_dvc_lock(toy_repo, monkeypatch):
    monkeypatch.setenv("SMDM_TRACKING", "off")
    assert dag.data_hash(toy_repo, "proc@a") is None  # not run yet: no hashes in dvc.lock
    dvc(["repro", "proc@a"], toy_repo)
    first = dag.data_hash(toy_repo, "proc@a")
    assert first and dag.data_hash(toy_repo, "gen") is None  # gen reads no stage's output
    (toy_repo / "params.yaml").write_text((toy_repo / "params.yaml").read_text().replace("n: 3", "n: 4"))
    dvc(["repro", "proc@a"], toy_repo)  # gen.txt now says n=4
    assert dag.data_hash(toy_repo, "proc@a") not in (None, first)


def test_dvc_status_reads_dvcs_own_words():
    assert dvc_status("gen", ["Stage 'gen' didn't change, skipping"]) == "skipped"
    assert dvc_status("gen", ["Stage 'gen' is cached - skipping run, checking out outputs"]) == "restored"
    assert dvc_status("gen", ["Running stage 'gen':", "> python step.py"]) == "ran"
    assert dvc_status("gen", ["Stage 'gen2' didn't change, skipping"]) == "ran"


def test_profile_of_reads_the_header(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("# Written by `smdm-profile debug` from profiles/: edit the profile, not this file.\na: 1\n")
    assert profile_of(params) == "debug"
    params.write_text("a: 1\n")
    assert profile_of(params) == "params.yaml"


def test_read_metrics_flattens_numbers(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"val": {"loss": 1.5, "ppl": 4}, "ok": True, "name": "x", "n": 3}))
    assert read_metrics(path) == {"val/loss": 1.5, "val/ppl": 4.0, "n": 3.0}
    path.write_text("not: json")
    assert read_metrics(path) == {}
