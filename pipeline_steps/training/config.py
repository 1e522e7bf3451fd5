"""The `pretrain` section of params.yaml as frozen dataclasses; defaults equal profiles/default.yaml."""
from __future__ import annotations

from dataclasses import dataclass, field

from model.config import FAMILIES, MODEL_SIZES
from model.flops import budget_flops, steps_for_budget
from pipeline_steps.core.params import ParamsError

MIN_STEPS = 5
"""Fewest optimizer steps a run may get: a budget rounded to whole steps stays within 10% of C."""


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up and cosine decay (PAPER.md section 2)."""

    lr: float = 3e-3
    """Peak learning rate (paper text 4e-4, the authors' code 2e-4; tiny models take larger)."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak."""
    warmup_fraction: float = 0.05
    """Warm-up length as a fraction of the run's steps ..."""
    min_warmup_steps: int = 20
    """... but at least this many steps (capped at a tenth of short runs)."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay."""
    decay_norms: bool = True
    """Decay the 1-d parameters (norm weights) too: the authors' code decays every parameter;
    false exempts them, the common practice elsewhere (e.g. nanoGPT), for comparison."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""

    def __post_init__(self) -> None:
        if not 0 < self.lr < 1:
            raise ValueError(f"lr must be in (0, 1), got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")

    def warmup_steps(self, total: int) -> int:
        return max(1, min(max(round(self.warmup_fraction * total), self.min_warmup_steps), total // 10 or 1))


@dataclass(frozen=True)
class TrainConfig:
    """What every pretraining run of a profile shares."""

    seq_len: int = 64
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
    log_every: int = 25
    """Steps between logged training losses."""
    checkpoint_dir: str = "cache/checkpoints"
    """Resume checkpoints and finished runs' copies live here (per run key), outside DVC outputs,
    so a killed stage resumes and its rerun restores the finished runs DVC deleted with its outputs."""
    keep_checkpoints: bool = False
    """Keep resume checkpoints after a run finishes, and the finished copies after the group has
    (large at paper scale); by default both go once the group's outputs are complete."""
    threads: int = 1
    """torch intra-op threads on CPU; 0 = torch's default (tiny models on a busy 2-core machine
    run several times faster with 1: see benchmarks/RESULTS.md)."""
    parallel_runs: int = 2
    """Runs of one group trained at once, each in its own process (CPU, one device only): on 2
    cores 2 workers cut a group's wall time 1.4x for minute-long groups and up to about 1.8x
    for the cpu-study's (benchmarks/RESULTS.md)."""

    def __post_init__(self) -> None:
        for name in ("seq_len", "global_batch", "devices", "num_nodes", "checkpoint_every", "log_every",
                     "parallel_runs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.mask_eps < 1:  # else p = (1 - eps) t + eps leaves (0, 1] and the 1/p-weighted loss is no ELBO
            raise ValueError(f"mask_eps must be in [0, 1), got {self.mask_eps}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 (0: no clipping), got {self.grad_clip}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0: torch's default), got {self.threads}")
        ranks = self.devices * self.num_nodes
        if self.global_batch % ranks:
            raise ValueError(f"global_batch {self.global_batch} is not divisible by devices x num_nodes = {ranks} "
                             "(each rank takes an equal share)")
        if self.parallel_runs > 1 and (self.devices > 1 or self.num_nodes > 1):
            raise ValueError("parallel_runs > 1 needs devices = num_nodes = 1 (runs, not ranks, share the machine)")


@dataclass(frozen=True)
class ValidationConfig:
    """Validation loss: ARM exact NLL; MDM negative ELBO with fixed Monte Carlo noise."""

    windows: int = 128
    """Validation sequences (the first windows of the val split, the same for every run)."""
    mc_samples: int = 32
    """K: Monte Carlo samples of (t, mask) per sequence for the MDM (the paper: 128)."""
    noise_seed: int = 1234
    """Seed of the validation noise, shared by every run of a grid (common random numbers)."""
    batch_size: int = 64
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
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if self.kind not in ("grid", "base"):
            raise ValueError(f"kind must be 'grid' or 'base', got {self.kind!r}")
        if self.flops <= 0:
            raise ValueError(f"flops must be positive, got {self.flops}")
        if not self.sizes:
            raise ValueError("sizes must name at least one model size")
        if not 0 <= self.stochastic_length_ratio <= 1:
            raise ValueError(f"stochastic_length_ratio must be in [0, 1], got {self.stochastic_length_ratio}")
        if self.stochastic_length_ratio > 0 and self.family == "arm":
            raise ValueError(f"stochastic_length_ratio is an MDM setting; the ARM group has {self.stochastic_length_ratio} "
                             "(expected 0)")
        for size in (*self.sizes, *self.lr):
            if size not in MODEL_SIZES:
                raise ValueError(f"unknown model size {size!r}; known sizes: {sorted(MODEL_SIZES)}")
        repeated = sorted({size for size in self.sizes if self.sizes.count(size) > 1})
        if repeated:  # each size trains into out_dir/<size>
            raise ValueError(f"sizes lists {repeated} more than once; each size trains once per group")
        stray = sorted(set(self.lr) - set(self.sizes))
        if stray:
            raise ValueError(f"lr names size(s) {stray} that are not in sizes {list(self.sizes)}")


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

    def __post_init__(self) -> None:
        # A run takes whole steps of B L tokens: with too few it trains on a budget it does not
        # have (1 step at 100x its FLOPs, say), so every run of every group must get MIN_STEPS.
        batch, seq_len = self.train.global_batch, self.train.seq_len
        for name, group in self.groups.items():
            for size in group.sizes:
                n_params = MODEL_SIZES[size].n_params
                steps = steps_for_budget(group.flops, n_params, batch, seq_len)
                if steps < MIN_STEPS:
                    per_step = budget_flops(n_params, batch * seq_len)
                    raise ValueError(
                        f"groups.{name}: {group.family} {size} at {group.flops:.3g} FLOPs gets {steps} optimizer "
                        f"step(s) of {batch} x {seq_len} tokens ({per_step:.3g} FLOPs each, "
                        f"{steps * per_step / group.flops:.2g}x the budget); expected >= {MIN_STEPS} steps: "
                        f"flops >= {MIN_STEPS * per_step:.3g} or a smaller size")

    def group(self, name: str) -> GroupConfig:
        """The group `name`; an unknown name is an error listing the groups."""
        if name not in self.groups:
            raise ParamsError(f"pretrain.groups: no group {name!r}; groups: {sorted(self.groups)}")
        return self.groups[name]
