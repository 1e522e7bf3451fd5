"""Stage `pretrain@<group>`: train MDMs or ARMs of named sizes for a FLOPs budget.

A group is one family at one budget with one or more sizes (the IsoFLOP grid groups runs to
save ~10 s of start-up per process); each run trains for C / (6 N B L) steps, is validated on
the same tokens with the same noise as every other run (common random numbers), and leaves a
model artifact, a run record and its own MLflow run. A killed group resumes: finished runs are
kept, the interrupted one restarts from its last checkpoint.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline_steps.files import atomic_write_json, atomic_write_text
from pipeline_steps.params import ParamsError, build_config, load_params, section
from pipeline_steps.tracking import NullTracker
from pipeline_steps.training_system import OptimConfig


@dataclass(frozen=True)
class TrainConfig:
    """What every pretraining run of a profile shares."""

    seq_len: int = 128
    """L: tokens per training sequence (the paper: 2048)."""
    global_batch: int = 16
    """B: sequences per optimizer step across all devices (the paper: 256)."""
    mask_eps: float = 1e-3
    """MDM: mask probability p = (1 - eps) t + eps."""
    seed: int = 3407
    """Seed of data order, initialisation and noise."""
    precision: str = "32-true"
    """Lightning precision (`bf16-mixed` on GPUs)."""
    accelerator: str = "cpu"
    """Lightning accelerator: cpu, gpu or auto."""
    devices: int = 1
    """Devices per node (data parallel when > 1)."""
    num_nodes: int = 1
    """Nodes for multi-node data parallel training."""
    strategy: str = "auto"
    """Lightning strategy: auto, ddp, fsdp."""
    grad_clip: float = 1.0
    """Gradient norm clip."""
    checkpoint_every: int = 100
    """Steps between resume checkpoints."""
    log_every: int = 10
    """Steps between logged training losses."""
    checkpoint_dir: str = "cache/checkpoints"
    """Resume checkpoints live here, outside DVC outputs, so a killed stage can resume."""
    keep_checkpoints: bool = False
    """Keep resume checkpoints after a run finishes (large at paper scale)."""
    threads: int = 0
    """torch intra-op threads on CPU; 0 = torch's default (tiny models on a busy 2-core machine
    run several times faster with 1: see benchmarks/RESULTS.md)."""
    parallel_runs: int = 1
    """Runs of one group trained at once, each in its own process (CPU, one device only): on 2
    cores 2 workers cut a group's wall time 1.4x for minute-long groups and up to about 1.8x
    for the cpu-study's (benchmarks/RESULTS.md)."""

    def __post_init__(self) -> None:
        for name in ("seq_len", "global_batch", "devices", "num_nodes", "checkpoint_every", "log_every",
                     "parallel_runs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.parallel_runs > 1 and (self.devices > 1 or self.num_nodes > 1):
            raise ValueError("parallel_runs > 1 needs devices = num_nodes = 1 (runs, not ranks, share the machine)")


@dataclass(frozen=True)
class ValidationConfig:
    """Validation loss: ARM exact NLL; MDM negative ELBO with fixed Monte Carlo noise."""

    windows: int = 64
    """Validation sequences (the first windows of the val split, the same for every run)."""
    mc_samples: int = 16
    """K: Monte Carlo samples of (t, mask) per sequence for the MDM (the paper: 128)."""
    noise_seed: int = 1234
    """Seed of the validation noise, shared by every run of a grid (common random numbers)."""
    batch_size: int = 32
    """Sequences per forward pass while validating."""

    def __post_init__(self) -> None:
        for name in ("windows", "mc_samples", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class GroupConfig:
    """One family at one budget: an IsoFLOP slice, or a base model when it has one size."""

    family: str
    """`mdm` or `arm`."""
    kind: str
    """`grid` (an IsoFLOP slice the scaling fit reads) or `base` (a model for later stages)."""
    flops: float
    """Budget C = 6 N D per run."""
    sizes: tuple[str, ...]
    """Named sizes (model.config.MODEL_SIZES) trained at this budget."""
    stochastic_length_ratio: float = 0.0
    """MDM: share of steps whose batch is cut to a random length (the paper's 1.1B: 0.01)."""
    lr: dict[str, float] = field(default_factory=dict)
    """Per-size peak learning rates overriding `optim.lr` (tiny models take larger ones)."""

    def __post_init__(self) -> None:
        if self.family not in ("mdm", "arm"):
            raise ValueError(f"family must be 'mdm' or 'arm', got {self.family!r}")
        if self.kind not in ("grid", "base"):
            raise ValueError(f"kind must be 'grid' or 'base', got {self.kind!r}")
        if self.flops <= 0:
            raise ValueError(f"flops must be positive, got {self.flops}")
        if not self.sizes:
            raise ValueError("sizes must name at least one model size")
        if not 0 <= self.stochastic_length_ratio <= 1:
            raise ValueError(f"stochastic_length_ratio must be in [0, 1], got {self.stochastic_length_ratio}")
        from model.config import MODEL_SIZES

        for size in (*self.sizes, *self.lr):
            if size not in MODEL_SIZES:
                raise ValueError(f"unknown model size {size!r}; known sizes: {sorted(MODEL_SIZES)}")


@dataclass(frozen=True)
class PretrainConfig:
    """The `pretrain` section of params.yaml."""

    train: TrainConfig
    """Shared training settings."""
    optim: OptimConfig
    """Optimiser and schedule."""
    validation: ValidationConfig
    """Validation loss settings."""
    groups: dict[str, GroupConfig]
    """Named groups; dvc.yaml runs one stage per group (foreach)."""


def load_pretrain_config(params_file: str) -> PretrainConfig:
    return build_config(PretrainConfig, section(load_params(params_file), "pretrain"), "pretrain")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group", required=True, help="name of a group under pretrain.groups")
    parser.add_argument("--params", default="params.yaml", help="params file (section `pretrain`)")
    parser.add_argument("--shards", default="data/shards", help="shard folder with meta.json")
    parser.add_argument("--tokenizer", default="data/tokenizer", help="folder with tokenizer.model")
    parser.add_argument("--out", help="artifact folder (default models/pretrain/<group>)")
    parser.add_argument("--runs", help="run records JSONL (default runs/<kind>/<group>.jsonl)")
    parser.add_argument("--metrics", help="metrics JSON (default metrics/pretrain/<group>.json)")
    args = parser.parse_args(argv)
    cfg = load_pretrain_config(args.params)
    if args.group not in cfg.groups:
        raise ParamsError(f"pretrain.groups: no group {args.group!r}; groups: {sorted(cfg.groups)}")
    from pipeline_steps.pretrain_runs import run_group
    from pipeline_steps.run_tracking import stage_tracker

    group = cfg.groups[args.group]
    # Lightning's DDP launcher re-runs this command for ranks > 0: they train and write nothing.
    if int(os.environ.get("LOCAL_RANK", 0)) or int(os.environ.get("NODE_RANK", 0)):
        run_group(cfg, args.group, Path(args.shards), Path(args.tokenizer),
                  Path(args.out or f"models/pretrain/{args.group}"), NullTracker())
        return
    meta_file = Path(args.shards) / "meta.json"
    data_hash = json.loads(meta_file.read_text()).get("data_hash") if meta_file.exists() else None
    with stage_tracker(f"pretrain@{args.group}", {"family": group.family}, data_hash=data_hash) as tracker:
        records = run_group(cfg, args.group, Path(args.shards), Path(args.tokenizer),
                            Path(args.out or f"models/pretrain/{args.group}"), tracker)
    atomic_write_text(args.runs or f"runs/{group.kind}/{args.group}.jsonl",
                      "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    metrics = {f"{r['size']}/{k}": r[k] for r in records for k in ("train/loss", "val/loss", "val/loss_stderr")}
    atomic_write_json(args.metrics or f"metrics/pretrain/{args.group}.json", metrics)


if __name__ == "__main__":
    main()
