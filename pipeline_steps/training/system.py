"""The Lightning "system" that trains one MDM or ARM: holds the backbone, calls model/ losses.

The Trainer owns precision, devices, strategy, clipping, checkpointing and resume; this module
only says what a step is and how the learning rate moves. Everything random in a step is seeded
by (seed, step), so a run killed and resumed from its last checkpoint ends with the same weights.
"""
from __future__ import annotations

import math
from collections import Counter

import lightning as L
import torch

from model.objectives import training_loss_and_length
from model.transformer import Transformer
from pipeline_steps.training.config import OptimConfig
from pipeline_steps.training.token_windows import StepBatches, TokenStream


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of the peak learning rate at `step` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class TrainingSystem(L.LightningModule):
    """One training run: backbone + objective + optimiser + this rank's data."""

    def __init__(self, model: Transformer, optim: OptimConfig, stream: TokenStream, seq_len: int,
                 global_batch: int, total_steps: int, seed: int, eps: float = 1e-3,
                 stochastic_length_ratio: float = 0.0) -> None:
        super().__init__()
        self.model, self.optim, self.stream = model, optim, stream
        self.seq_len, self.global_batch, self.total_steps = seq_len, global_batch, total_steps
        self.seed, self.eps, self.stochastic_length_ratio = seed, eps, stochastic_length_ratio
        self.recent_losses: list[torch.Tensor] = []
        """The last 20 steps' losses, kept on the device: no host sync per step."""
        self.lengths: Counter[int] = Counter()
        """Steps trained per sequence length (L, or a stochastic-length cut); kept in checkpoints."""

    def train_dataloader(self):
        batches = StepBatches(self.stream, self.seq_len, self.global_batch, self.total_steps, self.seed,
                              rank=self.global_rank, world=self.trainer.world_size,
                              start_step=lambda: self.trainer.global_step)
        return torch.utils.data.DataLoader(batches, batch_size=None, num_workers=0)

    def training_step(self, window: torch.Tensor, batch_idx: int) -> torch.Tensor:
        step = self.trainer.global_step
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        rows = window.shape[0]
        loss, length = training_loss_and_length(self.model, window, generator, self.eps, self.stochastic_length_ratio,
                                                global_batch=self.global_batch, row_offset=self.global_rank * rows)
        self.lengths[length] += 1  # every rank draws the same length for the whole global batch
        self.log("train/loss", loss, prog_bar=True, sync_dist=self.trainer.world_size > 1)
        self.recent_losses = (self.recent_losses + [loss.detach()])[-20:]
        return loss

    @property
    def trained_tokens(self) -> int:
        """Tokens of the global batches trained on so far: B x the sum of the lengths used."""
        return self.global_batch * sum(length * steps for length, steps in self.lengths.items())

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["lengths"] = dict(self.lengths)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.lengths = Counter(checkpoint["lengths"])

    def configure_optimizers(self):
        return adamw_with_schedule(self.model, self.optim, self.total_steps)


def adamw_with_schedule(model: torch.nn.Module, optim: OptimConfig, total_steps: int) -> dict:
    """AdamW with warm-up and cosine decay per step, as Lightning's configure_optimizers returns it."""
    def decayed(p: torch.Tensor) -> bool:  # 1-d parameters are the norm weights (the model has no biases)
        return p.ndim >= 2 or optim.decay_norms

    decay = [p for p in model.parameters() if decayed(p)]
    no_decay = [p for p in model.parameters() if not decayed(p)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": optim.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        # fused: one kernel for the whole update, 3x faster than foreach at 9k-51k on CPU
        # (benchmarks/RESULTS.md section 8); deterministic, so resume stays bitwise
        lr=optim.lr, betas=(optim.beta1, optim.beta2), fused=True)
    warmup = optim.warmup_steps(total_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup, optim.min_lr_ratio))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
