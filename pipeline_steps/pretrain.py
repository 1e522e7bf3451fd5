"""Stage `pretrain@<group>`: train MDMs or ARMs of named sizes for a FLOPs budget.

A group is one family at one budget with one or more sizes (the IsoFLOP grid groups runs to
save ~10 s of start-up per process); each run trains for C / (6 N B L) steps, is validated on
the same tokens with the same noise as every other run (common random numbers), and leaves a
model artifact, a run record and its own MLflow run. A killed group resumes: finished runs are
kept (restored from train.checkpoint_dir when DVC deleted the outputs of the failed stage), the
interrupted ones restart from their last checkpoint. Training workers die with the stage's process.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline_steps.core.files import atomic_write_json, atomic_write_text
from pipeline_steps.core.params import build_config, load_params, section
from pipeline_steps.core.stage_cli import guarded, stage_parser
from pipeline_steps.core.tracking import NullTracker, Tracker
from pipeline_steps.training.config import PretrainConfig
from pipeline_steps.training.runs import die_with_parent, forget_finished, run_group, secondary_rank
from pipeline_steps.training.token_windows import read_meta

METRIC_KEYS = ("train/loss", "val/loss", "val/loss_stderr")


def run(cfg: PretrainConfig, group: str, shards_dir: str | Path, tokenizer_dir: str | Path,
        out_dir: str | Path, runs_file: str | Path, tracker: Tracker) -> dict[str, float]:
    """Train every run of `group` into `out_dir/<size>`, write its run records; flat metrics."""
    records = run_group(cfg, group, Path(shards_dir), Path(tokenizer_dir), Path(out_dir), tracker)
    if records is None:  # a data-parallel rank other than 0: it trained and writes nothing
        return {}
    atomic_write_text(runs_file, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    forget_finished(cfg, records)  # the outputs are complete: a rerun no longer needs the copies
    return {f"{r['size']}/{key}": r[key] for r in records for key in METRIC_KEYS}


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("pretrain", __doc__, {
        "--group": (None, "name of a group under pretrain.groups (required)"),
        "--shards": ("data/shards", "shard folder with meta.json"),
        "--tokenizer": ("data/tokenizer", "folder with tokenizer.model"),
        "--out": (None, "artifact folder (default: models/pretrain/<group>)"),
        "--runs": (None, "run records JSONL (default: runs/<kind>/<group>.jsonl)")},
        metrics="metrics/pretrain/<group>.json")  # <group> filled in below
    args = parser.parse_args(argv)
    if args.group is None:
        parser.error("--group is required")

    def body() -> None:
        cfg = build_config(PretrainConfig, section(load_params(args.params), "pretrain"), "pretrain")
        group = cfg.group(args.group)
        out = args.out or f"models/pretrain/{args.group}"
        runs = args.runs or f"runs/{group.kind}/{args.group}.jsonl"
        # Lightning's DDP launcher re-runs this command for ranks > 0: they train and write nothing.
        if secondary_rank():
            if int(os.environ.get("LOCAL_RANK", 0)):  # started by rank 0's process (or torchrun): die with it
                die_with_parent(os.getppid())
            run(cfg, args.group, args.shards, args.tokenizer, out, runs, NullTracker())
            return
        from pipeline_steps.core.run_tracking import stage_tracker

        data_hash = read_meta(Path(args.shards)).get("data_hash")
        with stage_tracker(f"pretrain@{args.group}", {"family": group.family},
                           data_hash=data_hash) as tracker:
            metrics = run(cfg, args.group, args.shards, args.tokenizer, out, runs, tracker)
        metrics_file = args.metrics.replace("<group>", args.group)
        atomic_write_json(metrics_file, metrics)

    return guarded("pipeline_steps.pretrain", body, args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
