"""Wall time of one pretraining group with its runs one at a time vs `train.parallel_runs` at once.

Each contender is the `pretrain` stage's own command on the same group, in a fresh folder, with
MLflow off; the two take turns (benchmarks/timing.py). The ratio is sequential / parallel wall
time: about the number of cores when the runs are balanced and nothing else needs the machine.

    python -m benchmarks.parallel_runs --shards /tmp/final2/data/shards \
        --tokenizer /tmp/final2/data/tokenizer
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from benchmarks.timing import interleaved, machine_line, median, paired_ratio, spread
from model.config import FAMILIES
from pipeline_steps.core.profile import render

ROOT = Path(__file__).resolve().parents[1]


def group_command(folder: Path, shards: str, tokenizer: str, group: dict, parallel: int) -> list[str]:
    params = render("default", ROOT / "profiles")
    params["pretrain"]["train"].update(parallel_runs=parallel, checkpoint_dir=str(folder / "ckpt"))
    params["pretrain"]["groups"] = {"bench": group}
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    return [sys.executable, "-m", "pipeline_steps.pretrain", "--group", "bench",
            "--params", str(folder / "params.yaml"), "--shards", shards, "--tokenizer", tokenizer,
            "--out", str(folder / "models"), "--runs", str(folder / "runs.jsonl"),
            "--metrics", str(folder / "metrics.json")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True, help="shard folder of a DAG run (data/shards)")
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder (data/tokenizer)")
    parser.add_argument("--family", default="arm", choices=FAMILIES)
    parser.add_argument("--flops", type=float, default=1.0e11, help="budget per run")
    parser.add_argument("--sizes", nargs="+", default=["42k", "51k", "74k", "101k"])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    group = {"family": args.family, "kind": "grid", "flops": args.flops, "sizes": args.sizes}
    env = {**os.environ, "SMDM_TRACKING": "off", "PYTHONPATH": str(ROOT)}

    def contender(parallel: int):
        def run() -> None:
            with tempfile.TemporaryDirectory() as tmp:
                cmd = group_command(Path(tmp), args.shards, args.tokenizer, group, parallel)
                out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(out.stderr[-3000:])
        return run

    print(machine_line())
    print(f"group: {group}")
    samples = interleaved({"sequential": contender(1), "parallel 2": contender(2)},
                          repeats=args.repeats, warmup=0)
    for name, values in samples.items():
        print(f"{name:12s} wall {median(values):7.1f} s  (spread {spread(values):.2f})")
    print(f"sequential / parallel: {paired_ratio(samples, 'sequential', 'parallel 2'):.2f}")
    print(machine_line())


if __name__ == "__main__":
    main()
