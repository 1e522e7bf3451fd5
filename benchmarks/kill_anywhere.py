"""Kill anywhere (benchmarks/RESULTS.md section 13): the debug-profile DAG killed with SIGKILL at
random points and rerun each time, against one uninterrupted run of the same seeds.

    python -m benchmarks.kill_anywhere --kills 8 --seed 0 [--work /tmp/kill-anywhere]

Two fresh git + DVC copies of this checkout (the debug profile, the corpus download cache
shared). The reference runs `dvc repro` once. The other runs `dvc repro` in its own process
group and, when the next target starts (--kills stages drawn at random from the reference's,
taken in DAG order: training, evaluation, fine-tuning, generation alike), kills the whole group with SIGKILL after a
random delay; then it reruns. After every kill it checks that no process of the run survives; after every rerun that
no stage DVC had finished (its lock entry written) ran again. At the end: no MLflow run is left
RUNNING, and the reports and metrics equal the reference's, timing fields and timing-based
verdicts excepted, numbers within --rtol.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TIMING = re.compile(r"seconds|time|_s$|date|duration|speed")
"""Keys whose values are wall-clock measurements: never compared."""


def project(folder: Path, env: dict[str, str]) -> Path:
    """A fresh git + DVC copy of this checkout with the debug profile."""
    if folder.exists():
        shutil.rmtree(folder)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, folder / name)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"],
                [sys.executable, "-m", "pipeline_steps.core.profile", "debug"]):
        subprocess.run(cmd, cwd=folder, env=env, check=True, capture_output=True)
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["corpus"]["download_dir"] = str(ROOT / "cache" / "downloads")
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return folder


def environment(folder: Path) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "SMDM_TRACKING": "on",
           "GIT_AUTHOR_NAME": "k", "GIT_AUTHOR_EMAIL": "k@k", "GIT_COMMITTER_NAME": "k", "GIT_COMMITTER_EMAIL": "k@k"}
    env.pop("SMDM_PARENT_RUN_ID", None)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    return env


def repro(folder: Path, target: str | None, delay: float) -> dict:
    """One `dvc repro`; with `target`, SIGKILL its process group `delay` s after that stage starts."""
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=folder, env=environment(folder),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    started, finished, killed_in, timer, current = [], [], None, None, None
    for line in proc.stdout:
        if match := re.search(r"Running stage '([^']+)'", line):
            if current is not None:
                finished.append(current)  # DVC starts the next stage only after locking the last one
            current = match.group(1)
            started.append(current)
            if target and timer is None and current == target:
                killed_in = current
                timer = threading.Timer(delay, os.killpg, (proc.pid, signal.SIGKILL))
                timer.start()
        elif "Updating lock file" in line and current is not None:
            finished.append(current)
            current = None
    code = proc.wait()
    if timer is not None:
        timer.cancel()
    return {"code": code, "started": started, "finished": finished, "killed_in": killed_in,
            "interrupted": current, "survivors": survivors(proc.pid, folder)}


def survivors(pgid: int, folder: Path) -> list[str]:
    """Processes still in the killed group or working in the project folder."""
    time.sleep(0.5)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            same_group = os.getpgid(int(entry.name)) == pgid
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if same_group or cwd.startswith(str(folder)):
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
            found.append(f"{entry.name}: {command}")
    return found


def numbers(folder: Path) -> dict[str, float | str]:
    """Every metric and report value except timings, flattened by path."""
    flat: dict[str, float | str] = {}

    def walk(value, key: str) -> None:
        if isinstance(value, dict):
            for sub, item in value.items():
                if not TIMING.search(str(sub)):
                    walk(item, f"{key}/{sub}")
        elif isinstance(value, list):
            for k, item in enumerate(value):
                walk(item, f"{key}[{k}]")
        elif isinstance(value, (int, float, str)) and not isinstance(value, bool):
            flat[key] = value

    for path in sorted([*(folder / "metrics").rglob("*.json"), *(folder / "reports").rglob("results.json")]):
        walk(json.loads(path.read_text()), str(path.relative_to(folder)))
    paper = json.loads((folder / "reports" / "paper.json").read_text())
    for claim in paper["claims"]:
        if not claim["timing"]:
            flat[f"paper/{claim['result']}/{claim['claim']}"] = claim["verdict"]
    return flat


def compare(ref: dict, got: dict, rtol: float) -> list[str]:
    diffs = []
    for key in sorted(set(ref) | set(got)):
        a, b = ref.get(key), got.get(key)
        if isinstance(a, float) and isinstance(b, float):
            if abs(a - b) > rtol * max(abs(a), abs(b), 1e-12):
                diffs.append(f"{key}: {a!r} vs {b!r}")
        elif a != b:
            diffs.append(f"{key}: {a!r} vs {b!r}")
    return diffs


def running_runs(folder: Path) -> int:
    with sqlite3.connect(folder / "mlflow.db") as db:
        return db.execute("select count(*) from runs where status = 'RUNNING'").fetchone()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay", type=float, default=6.0, help="seconds after a stage starts")
    parser.add_argument("--rtol", type=float, default=1e-6)
    parser.add_argument("--work", type=Path, default=Path("/tmp/kill-anywhere"))
    parser.add_argument("--reuse-reference", action="store_true", help="keep an earlier uninterrupted run")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    ref = args.work / "reference"
    if not (args.reuse_reference and (ref / "reports" / "paper.json").is_file()):
        ref = project(ref, environment(ref))
        started = time.monotonic()
        first = repro(ref, None, 0.0)
        print(f"reference: rc {first['code']}, {len(first['started'])} stages, {time.monotonic() - started:.0f} s",
              flush=True)
    order = list(yaml.safe_load((ref / "dvc.lock").read_text())["stages"])  # every stage the DAG ran
    folder = project(args.work / "killed", environment(args.work / "killed"))
    problems, log, done = [], [], set()
    # the targets: --kills stages drawn at random, in DAG order, so that kills spread over
    # training, evaluation, fine-tuning and generation alike
    targets = sorted(rng.sample(order, min(args.kills, len(order))), key=order.index)
    for k, kind in enumerate(targets):
        if kind in done:  # an earlier kill landed past it
            continue
        delay = rng.uniform(0.2, args.max_delay)
        run = repro(folder, kind, delay)
        again = sorted(done & set(run["started"]))
        done |= set(run["finished"])
        row = (f"kill {k + 1}: {kind} +{delay:.1f} s -> killed in {run['killed_in'] or '(not reached)'}, "
               f"interrupted {run['interrupted']}, rc {run['code']}, reran finished: {again or 'none'}, "
               f"survivors: {len(run['survivors'])}")
        print(row, flush=True)
        log.append(row)
        problems += [f"kill {k + 1}: finished stage ran again: {s}" for s in again]
        problems += [f"kill {k + 1}: survivor {s}" for s in run["survivors"]]
        if run["code"] == 0:
            print("  (the run completed before the kill)", flush=True)
            break
    final = repro(folder, None, 0.0)
    again = sorted(done & set(final["started"]))
    problems += [f"final: finished stage ran again: {s}" for s in again]
    print(f"final rerun: rc {final['code']}, ran {final['started']}", flush=True)
    records = [json.loads(line) for path in (folder / "runs").rglob("*.jsonl") for line in path.read_text().splitlines()]
    print(f"training runs: {len(records)}; continued from a checkpoint: {sum(bool(r.get('resumed')) for r in records)}; "
          f"kept from an interrupted stage: {sum(bool(r.get('restored')) for r in records)}", flush=True)
    if final["code"] != 0:
        problems.append(f"final rerun exited {final['code']}")
    problems += [f"{n} MLflow runs left RUNNING"] if (n := running_runs(folder)) else []
    diffs = compare(numbers(ref), numbers(folder), args.rtol) if final["code"] == 0 else ["no final report"]
    print(f"differences from the uninterrupted run (rtol {args.rtol:g}): {len(diffs)}")
    for line in diffs[:40]:
        print("  " + line)
    print("problems:" if problems else "no problems", *problems, sep="\n  ")
    return 1 if problems or diffs else 0


if __name__ == "__main__":
    raise SystemExit(main())
