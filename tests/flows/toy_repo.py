"""A tiny git + DVC project for the flow tests: eight stages of one-line Python steps.

Its dvc.yaml uses what the real one does: `foreach` (proc@a, proc@b), `matrix` (grid@p-1 ...
grid@q-2), `${}` interpolation from params.yaml and `vars`, metrics files. Every stage goes
through `step.py`, which appends its name to `runs.log` (a counter DVC does not track), logs a
metric through the project's `stage_tracker`, and inside its run fails while a file
`FAIL-<stage>` exists and waits (printing `waiting`) while a file `WAIT-<stage>` exists.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

STAGES = ["gen", "proc@a", "proc@b", "grid@p-1", "grid@p-2", "grid@q-1", "grid@q-2", "report"]
EDGES = {("gen", "proc@a"), ("gen", "proc@b"), ("proc@a", "grid@p-1"), ("proc@a", "grid@p-2"),
         ("proc@a", "grid@q-1"), ("proc@a", "grid@q-2"), ("grid@p-1", "report"), ("proc@b", "report")}
REPORT_SCORE = 0.75

STEP = '''"""One toy stage: python step.py STAGE OUT [INPUT FILES or WORDS...]."""
import json, pathlib, sys, time
from pipeline_steps.core.run_tracking import stage_tracker

stage, out, inputs = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3:]
with open("runs.log", "a") as log:
    log.write(stage + "\\n")
print(f"step {stage}: {len(inputs)} inputs", flush=True)
out.parent.mkdir(parents=True, exist_ok=True)
text = stage + "".join(pathlib.Path(i).read_text() if pathlib.Path(i).is_file() else i for i in inputs)
with stage_tracker(stage) as tracker:
    if pathlib.Path(f"WAIT-{stage}").exists():
        print("waiting", flush=True)
    while pathlib.Path(f"WAIT-{stage}").exists():
        time.sleep(0.1)
    if pathlib.Path(f"FAIL-{stage}").exists():
        sys.exit(f"step {stage}: failing on purpose")
    if out.suffix == ".json":
        metrics = {"score": %(score)r, "inputs": float(len(inputs))}
        out.write_text(json.dumps(metrics))
    else:
        metrics = {"chars": float(len(text))}
        out.write_text(text)
    tracker.log_metrics(metrics)
'''

DVC_YAML = '''vars:
  - ext: txt
stages:
  gen:
    cmd: python step.py gen ${out}/gen.${ext} n=${gen.n}
    deps:
      - step.py
    params:
      - gen.n
    outs:
      - ${out}/gen.${ext}
  proc:
    foreach: ${items}
    do:
      cmd: python step.py proc@${item} ${out}/proc_${item}.${ext} ${out}/gen.${ext}
      deps:
        - ${out}/gen.${ext}
      outs:
        - ${out}/proc_${item}.${ext}
  grid:
    matrix:
      m: [p, q]
      k: [1, 2]
    cmd: python step.py grid@${item.m}-${item.k} ${out}/grid_${item.m}_${item.k}.${ext} ${out}/proc_a.${ext}
    deps:
      - ${out}/proc_a.${ext}
    outs:
      - ${out}/grid_${item.m}_${item.k}.${ext}
  report:
    cmd: python step.py report metrics/report.json ${out}/grid_p_1.${ext} ${out}/proc_b.${ext}
    deps:
      - ${out}/grid_p_1.${ext}
      - ${out}/proc_b.${ext}
    metrics:
      - metrics/report.json:
          cache: false
'''

PARAMS = "out: out\nitems: [a, b]\ngen:\n  n: 3\n"
IGNORED = "/.smdm/\nmlflow.db\n/mlartifacts/\nruns.log\nFAIL-*\nWAIT-*\n/remote/\n"


def run(cmd: list[str], cwd: Path) -> str:
    # Stage commands call `python`: make it this interpreter, venv activated or not.
    env = {**os.environ, "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{cmd} failed in {cwd}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def dvc(args: list[str], cwd: Path) -> str:
    return run([sys.executable, "-m", "dvc", *args], cwd)


def git_commit(root: Path, message: str) -> None:
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=smdm-test", "-c", "user.email=test@localhost", "commit", "-qm", message], root)


def make_repo(root: Path) -> Path:
    """Write, `git init`, `dvc init` and commit the toy project at `root`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "step.py").write_text(STEP % {"score": REPORT_SCORE})
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "params.yaml").write_text(PARAMS)
    (root / "profiles").mkdir(exist_ok=True)
    (root / "profiles" / "default.yaml").write_text(PARAMS)  # `smdm-profile default` works here
    (root / ".gitignore").write_text(IGNORED)
    run(["git", "init", "-q", "-b", "main"], root)
    dvc(["init", "-q"], root)
    dvc(["config", "core.analytics", "false"], root)
    git_commit(root, "toy project")
    return root.resolve()


def dvc_dag(root: Path) -> tuple[set[str], set[tuple[str, str]]]:
    """Nodes and edges (upstream, downstream) as the `dvc dag --dot` command prints them."""
    nodes, edges = set(), set()
    for line in dvc(["dag", "--dot"], root).splitlines():
        line = line.strip().rstrip(";")
        if "->" in line:
            upstream, downstream = (part.strip().strip('"') for part in line.split("->"))
            edges.add((upstream, downstream))
        elif line.startswith('"'):
            nodes.add(line.strip('"'))
    return nodes, edges


def runs_log(root: Path) -> list[str]:
    path = root / "runs.log"
    return path.read_text().split() if path.exists() else []
