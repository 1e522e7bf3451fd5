"""Stage `finetune@<group>`: fine-tune a pretrained MDM or ARM (PAPER.md sections 6-8).

A group names its base (a pretrain artifact), its data and how long: the reversal curse's whole
sequences (data/tasks/reversal/all_prompts_train) or prompt/continuation windows of the corpus's
train documents, with the prompt kept clean and, for standard CFG, dropped to [MASK] with a
probability (model/sft.py). The run is a Lightning fit, resumable from its last checkpoint; it
writes models/finetune/<group>, a model artifact whose config.json says what it was fine-tuned
from and on what (pipeline_steps/training/finetune_runs.py).
"""
from __future__ import annotations

import os
from pathlib import Path

from pipeline_steps.core.files import atomic_write_json
from pipeline_steps.core.params import build_config, load_params, section
from pipeline_steps.core.stage_cli import guarded, stage_parser
from pipeline_steps.core.tracking import NullTracker, Tracker
from pipeline_steps.training.finetune_config import FinetuneConfig
from pipeline_steps.training.finetune_runs import finetune_one
from pipeline_steps.training.runs import die_with_parent, secondary_rank


def run(cfg: FinetuneConfig, group: str, pretrain_dir: str | Path, tasks_dir: str | Path, corpus_dir: str | Path,
        out_dir: str | Path, tracker: Tracker) -> dict[str, float]:
    """Fine-tune `group` into `out_dir`; flat metrics."""
    record = finetune_one(cfg, group, Path(pretrain_dir), Path(tasks_dir), Path(corpus_dir), Path(out_dir), tracker)
    return {key: float(record[key]) for key in ("train/loss", "steps", "rows", "seconds")}


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("finetune", __doc__, {
        "--group": (None, "name of a group under finetune.groups (required)"),
        "--models": ("models/pretrain", "pretrain artifacts, <group>/<size>"),
        "--tasks": ("data/tasks", "task folder (reversal/)"),
        "--corpus": ("data/corpus", "corpus folder (train.jsonl)"),
        "--out": (None, "artifact folder (default: models/finetune/<group>)")},
        metrics="metrics/finetune/<group>.json")  # <group> filled in below
    args = parser.parse_args(argv)
    if args.group is None:
        parser.error("--group is required")

    def body() -> None:
        cfg = build_config(FinetuneConfig, section(load_params(args.params), "finetune"), "finetune")
        group = cfg.group(args.group)
        out = args.out or f"models/finetune/{args.group}"
        # Lightning's DDP launcher re-runs this command for ranks > 0: they train and write nothing.
        if secondary_rank():
            if int(os.environ.get("LOCAL_RANK", 0)):
                die_with_parent(os.getppid())
            run(cfg, args.group, args.models, args.tasks, args.corpus, out, NullTracker())
            return
        from pipeline_steps.core.run_tracking import stage_tracker

        with stage_tracker(f"finetune@{args.group}", {"family": group.family}) as tracker:
            metrics = run(cfg, args.group, args.models, args.tasks, args.corpus, out, tracker)
        atomic_write_json(args.metrics.replace("<group>", args.group), metrics)
        print(f"finetune@{args.group}: {int(metrics['steps'])} steps on {int(metrics['rows'])} rows, "
              f"train loss {metrics['train/loss']:.3f}, {metrics['seconds']:.0f} s")

    return guarded("pipeline_steps.finetune", body, args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
