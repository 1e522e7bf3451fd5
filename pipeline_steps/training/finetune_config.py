"""The `finetune` section of params.yaml as frozen dataclasses; defaults equal profiles/default.yaml."""
from __future__ import annotations

from dataclasses import dataclass

from model.config import FAMILIES
from pipeline_steps.core.params import ParamsError
from pipeline_steps.training.config import OptimConfig
from pipeline_steps.training.sft_data import SOURCES


@dataclass(frozen=True)
class FinetuneTrainConfig:
    """What every fine-tuning run of a profile shares."""

    seed: int = 3407
    """Seed of data order and noise."""
    mask_eps: float = 1e-3
    """MDM: mask probability p = (1 - eps) t + eps, as in pretraining."""
    precision: str = "32-true"
    """Lightning precision (`bf16-mixed` on GPUs)."""
    accelerator: str = "cpu"
    """Lightning accelerator: cpu, gpu or auto."""
    devices: int = 1
    """Devices (data parallel when > 1: each rank takes an equal share of every batch)."""
    strategy: str = "auto"
    """Lightning strategy: auto, ddp, fsdp."""
    grad_clip: float = 1.0
    """Gradient norm clip."""
    checkpoint_every: int = 200
    """Steps between resume checkpoints."""
    log_every: int = 25
    """Steps between logged training losses."""
    checkpoint_dir: str = "cache/checkpoints"
    """Resume checkpoints live here (per run key, outside DVC outputs): a killed stage resumes."""
    keep_checkpoints: bool = False
    """Keep the resume checkpoints once the artifact is written."""
    threads: int = 1
    """torch intra-op threads on CPU; 0 = torch's default."""

    def __post_init__(self) -> None:
        for name in ("devices", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.mask_eps < 1:
            raise ValueError(f"mask_eps must be in [0, 1), got {self.mask_eps}")
        if self.grad_clip < 0 or self.threads < 0:
            raise ValueError("grad_clip and threads must be >= 0")


@dataclass(frozen=True)
class ConditionalDataConfig:
    """Prompt/continuation windows of the corpus's train documents (sft_data.conditional_rows)."""

    pairs: int = 2000
    """Windows, one per train document long enough (seeded choice)."""
    prompt_tokens: int = 16
    """Prompt length (BOS comes on top)."""
    response_tokens: int = 32
    """Response length (EOS comes on top); prompt + response + 2 must fit the base's context."""
    seed: int = 0
    """Seed of the document and offset choice."""

    def __post_init__(self) -> None:
        if min(self.pairs, self.prompt_tokens, self.response_tokens) < 1:
            raise ValueError("pairs, prompt_tokens and response_tokens must be >= 1")


@dataclass(frozen=True)
class FinetuneGroup:
    """One fine-tuning run: a pretrained base, data, and how long."""

    family: str
    """`mdm` or `arm`: what the base must be."""
    base: str
    """The pretrain artifact fine-tuned: a base group (`mdm_base`) or `<group>/<size>`."""
    data: str
    """`reversal` (data/tasks/reversal/all_prompts_train), `math` (data/tasks/math/train.txt, both
    stages) or `conditional` (train documents)."""
    epochs: int
    """Passes over the rows."""
    batch: int = 32
    """Rows per optimizer step."""
    lr: float | None = None
    """Peak learning rate of optim's schedule; None: optim.lr."""
    context: int | None = None
    """Sequence length the model is loaded for (rotary positions extrapolate past the base's
    training context until this run trains them); None: the base's context."""
    whole_sequence: bool = False
    """Train on the whole sequence (no prompt kept clean or left out of the loss): the reversal
    curse's setting; false keeps the prompt clean and scores the response only."""
    prompt_dropout: float = 0.0
    """MDM: probability that a row's whole prompt is replaced by [MASK] (standard CFG training)."""

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if self.data not in SOURCES:
            raise ValueError(f"data must be one of {SOURCES}, got {self.data!r}")
        if self.epochs < 1 or self.batch < 1:
            raise ValueError(f"epochs and batch must be >= 1, got {self.epochs} and {self.batch}")
        if self.lr is not None and not 0 < self.lr < 1:
            raise ValueError(f"lr must be in (0, 1), got {self.lr}")
        if self.context is not None and self.context < 4:
            raise ValueError(f"context must be >= 4 tokens, got {self.context}")
        if not 0 <= self.prompt_dropout < 1:
            raise ValueError(f"prompt_dropout must be in [0, 1), got {self.prompt_dropout}")
        if self.prompt_dropout and (self.family == "arm" or self.whole_sequence):
            raise ValueError("prompt_dropout is an MDM setting for prompted rows (family mdm, whole_sequence false)")


@dataclass(frozen=True)
class FinetuneConfig:
    """The `finetune` section of params.yaml."""

    train: FinetuneTrainConfig
    """Shared training settings."""
    optim: OptimConfig
    """Optimiser and schedule (each group sets its own peak lr)."""
    conditional: ConditionalDataConfig
    """The conditional fine-tuning data."""
    groups: dict[str, FinetuneGroup]
    """Named runs; dvc.yaml runs one stage per group (foreach)."""

    def group(self, name: str) -> FinetuneGroup:
        """The group `name`; an unknown name is an error listing the groups."""
        if name not in self.groups:
            raise ParamsError(f"finetune.groups: no group {name!r}; groups: {sorted(self.groups)}")
        return self.groups[name]
