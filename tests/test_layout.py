"""The layout rules of the README ("Layout"), checked on the source: the stage modules
are the DAG, packages never import stages, nothing imports in a cycle, and every stage's DVC
deps cover every project module it imports (so a helper can never be missing from them)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STEPS = ROOT / "pipeline_steps"
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
STAGE_MODULES = sorted(p.stem for p in STEPS.glob("*.py"))
FIRST_PARTY = ("model", "pipeline_steps", "flows")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for top in FIRST_PARTY for p in (ROOT / top).rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """Project modules `name` imports anywhere in its body (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in MODULES and t != name}
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def closure(name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        for child in GRAPH[todo.pop()] - seen:
            seen.add(child)
            todo.append(child)
    return seen


def test_the_stage_modules_are_exactly_the_dag():
    assert STAGE_MODULES == sorted(STAGES)
    params = yaml.safe_load((ROOT / "profiles" / "default.yaml").read_text())
    assert set(STAGE_MODULES) == set(params)  # each stage is also its params section
    for stage in STAGE_MODULES:
        tree = ast.parse((STEPS / f"{stage}.py").read_text())
        functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert {"run", "main"} <= set(functions), stage
        args = [a.arg for a in functions["run"].args.args]
        assert args[0] == "cfg" and "tracker" in args, f"{stage}.run{args}"


def test_packages_never_import_stage_modules():
    stages = {f"pipeline_steps.{s}" for s in STAGE_MODULES}
    for name, imported in GRAPH.items():
        if name.startswith("pipeline_steps.") and name not in stages:
            assert not imported & stages, f"{name} imports the stage(s) {sorted(imported & stages)}"


def test_core_and_model_import_only_downwards():
    for name, imported in GRAPH.items():
        if name.startswith("pipeline_steps.core"):
            assert all(i.startswith("pipeline_steps.core") for i in imported), name
        if name.startswith("model"):
            assert all(i.startswith("model") for i in imported), name
            source = MODULES[name].read_text()
            for engine in ("lightning", "mlflow", "prefect", "dvc"):
                assert f"import {engine}" not in source and f"from {engine}" not in source, name


def test_no_import_cycles():
    for name in GRAPH:
        assert name not in closure(name), f"{name} imports itself through {sorted(closure(name))}"


@pytest.mark.parametrize("stage", STAGE_MODULES)
def test_dvc_deps_name_folders_that_cover_every_imported_module(stage):
    body = STAGES[stage].get("do", STAGES[stage])
    code_deps = [d for d in body["deps"] if d.split("/")[0] in FIRST_PARTY]
    for dep in code_deps:
        assert (ROOT / dep).is_dir() or dep == f"pipeline_steps/{stage}.py", \
            f"{stage}: dep {dep} names a helper file, not its package folder"
    for imported in closure(f"pipeline_steps.{stage}") | {f"pipeline_steps.{stage}"}:
        path = MODULES[imported].relative_to(ROOT).as_posix()
        assert any(path == d or path.startswith(d.rstrip("/") + "/") for d in code_deps), \
            f"{stage} imports {imported} ({path}), which none of its DVC deps covers"
