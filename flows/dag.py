"""The stage graph of dvc.yaml, as DVC itself builds it.

DVC expands foreach/matrix stages, resolves `${}` against params.yaml and `vars`, and draws
the edges (an output of one stage used as a dependency of another). Asking DVC for that graph,
instead of parsing dvc.yaml here, keeps the Prefect flow and `dvc repro` from drifting apart.

Nodes are stage names as `dvc repro` and `dvc dag` spell them (`pretrain@mdm_base`,
`grid@p-1`); edges point from upstream to downstream, the order stages run in.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx


@dataclass(frozen=True)
class StageInfo:
    """What the flow needs to know about one stage, beyond its edges."""

    name: str
    """DVC's address of the stage (`stage` or `stage@key`)."""
    metrics: tuple[str, ...] = ()
    """Metrics files of the stage, relative to the project root."""
    data_deps: tuple[str, ...] = field(default=())
    """Dependencies that another stage produces: the stage's input data (not its code)."""


def _open_repo(root: Path):
    from dvc.repo import Repo

    return Repo(str(root))


def _overlaps(a: str, b: str) -> bool:
    """Same path, or one inside the other (a directory output used file by file, or whole)."""
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def _relative(root: Path, fs_path: str) -> str:
    return Path(fs_path).resolve().relative_to(root.resolve()).as_posix()


def address(root: Path, stage) -> str:
    """The stage's name as `dvc repro` takes it from the project root (DVC's own
    `stage.addressing` is relative to the working directory, which need not be the root)."""
    from dvc.stage import PipelineStage

    dvcfile = _relative(root, stage.path)
    if not isinstance(stage, PipelineStage):
        return dvcfile  # a `.dvc` file
    return stage.name if dvcfile == "dvc.yaml" else f"{dvcfile}:{stage.name}"


def load_dag(root: str | Path = ".") -> nx.DiGraph:
    """The stages of the DVC project at `root` and their edges; node attribute `info`."""
    root = Path(root).resolve()
    repo = _open_repo(root)
    try:
        dvc_graph = repo.index.graph  # stage -> the stages it depends on
        graph = nx.DiGraph()
        for stage in dvc_graph.nodes:
            graph.add_node(address(root, stage), info=_stage_info(root, stage, dvc_graph.successors(stage)))
        for stage, upstream in dvc_graph.edges:
            graph.add_edge(address(root, upstream), address(root, stage))
    finally:
        repo.close()
    return graph


def _stage_info(root: Path, stage, upstream_stages) -> StageInfo:
    upstream_outs = [_relative(root, out.fs_path) for up in upstream_stages for out in up.outs]
    deps = [_relative(root, dep.fs_path) for dep in stage.deps if not _is_params(dep)]
    data_deps = tuple(sorted(d for d in deps if any(_overlaps(d, o) for o in upstream_outs)))
    metrics = tuple(sorted(_relative(root, out.fs_path) for out in stage.outs if out.metric))
    return StageInfo(name=address(root, stage), metrics=metrics, data_deps=data_deps)


def _is_params(dep) -> bool:
    from dvc.dependency.param import ParamsDependency

    return isinstance(dep, ParamsDependency)


def select(graph: nx.DiGraph, stages: list[str] | None) -> nx.DiGraph:
    """The stages asked for with everything upstream of them; all stages when none are named.

    A name is a stage (`pretrain@mdm_base`) or a foreach/matrix group (`pretrain`: every
    `pretrain@...`), the way `dvc repro` reads its targets.
    """
    if not stages:
        return graph.copy()
    wanted: set[str] = set()
    for name in stages:
        matches = [n for n in graph.nodes if n == name or n.startswith(f"{name}@")]
        if not matches:
            raise ValueError(f"no stage {name!r} in dvc.yaml; stages: {sorted(graph.nodes)}")
        for match in matches:
            wanted |= {match} | nx.ancestors(graph, match)
    return graph.subgraph(wanted).copy()


def run_order(graph: nx.DiGraph) -> list[str]:
    """Upstream first; ties broken by name so two runs of one DAG list stages alike."""
    return list(nx.lexicographical_topological_sort(graph))


def data_hash(root: str | Path, name: str) -> str | None:
    """A hash of the DVC hashes (dvc.lock) of the stage's input data; None if it has none."""
    root = Path(root).resolve()
    repo = _open_repo(root)
    try:
        stage = next(s for s in repo.index.stages if address(root, s) == name)
        deps = {_relative(root, d.fs_path): d.hash_info.value for d in stage.deps if not _is_params(d)}
        info = _stage_info(root, stage, repo.index.graph.successors(stage))
    finally:
        repo.close()
    pairs = [f"{path}:{deps[path]}" for path in info.data_deps]
    if not pairs or any(deps[path] is None for path in info.data_deps):
        return None
    return hashlib.sha256("\n".join(pairs).encode()).hexdigest()[:16]
