"""Training objectives (PAPER.md section 2) and the validation losses built on them.

MDM: mask each token with probability p = (1 - eps) t + eps, t ~ U(0, 1) per sequence; the loss
is the sum over masked positions of -log p(x0_i | x_t) / p, normalised by B * L (all tokens, not
only masked ones). Its expectation is the negative ELBO per token, an upper bound on the NLL.
ARM: next-token cross-entropy. Batches are windows of L + 1 tokens: the ARM predicts tokens
1..L from 0..L-1, the MDM denoises tokens 0..L-1, so both see L tokens per window.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from model.transformer import Transformer


def draw_mask_noise(shape: tuple[int, int], generator: torch.Generator, eps: float = 1e-3,
                    device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence mask probability p (B, 1) and the mask itself (B, L), from `generator`."""
    batch, length = shape
    t = torch.rand(batch, 1, generator=generator, device=device)
    p = (1 - eps) * t + eps
    masked = torch.rand(batch, length, generator=generator, device=device) < p  # (B, L)
    return p, masked


def mdm_loss_given_noise(model: Transformer, tokens: torch.Tensor, p: torch.Tensor,
                         masked: torch.Tensor) -> torch.Tensor:
    """Per-sequence weighted masked CE, summed over positions and divided by L: shape (B,).

    The output head runs at masked positions only: unmasked ones carry no loss, and at small
    widths the head is most of the model's FLOPs.
    """
    mask_id = model.cfg.mask_id
    if mask_id is None:
        raise ValueError("mdm_loss needs an MDM (a model with a [MASK] token)")
    noisy = torch.where(masked, torch.full_like(tokens, mask_id), tokens)  # (B, L)
    hidden = model.features(noisy)  # (B, L, d)
    rows, cols = masked.nonzero(as_tuple=True)  # (M,) each
    logits = model.head(hidden[rows, cols])  # (M, V)
    ce = F.cross_entropy(logits.float(), tokens[rows, cols], reduction="none")  # (M,)
    weighted = ce / p.view(-1)[rows].float()  # 1/p of each masked token's sequence
    per_row = torch.zeros(tokens.shape[0], device=tokens.device, dtype=weighted.dtype)
    return per_row.index_add(0, rows, weighted) / tokens.shape[1]


def draw_training_noise(global_batch: int, length: int, generator: torch.Generator, eps: float = 1e-3,
                        stochastic_length_ratio: float = 0.0) -> tuple[int, torch.Tensor, torch.Tensor]:
    """The noise of one step for the whole global batch: (length used, p (B, 1), mask (B, l)).

    With probability `stochastic_length_ratio` the whole micro-batch is cut to a random length
    l ~ U{1..L} (normalised by B * l), so a bidirectional model also learns short inputs. Drawn
    for the global batch so that every data-parallel split sees the same noise per row.
    """
    draw = torch.rand((), generator=generator).item()
    cut = int(torch.randint(1, length + 1, (), generator=generator))
    if stochastic_length_ratio > 0 and draw < stochastic_length_ratio:
        length = cut
    p, masked = draw_mask_noise((global_batch, length), generator, eps)
    return length, p, masked


def mdm_loss(model: Transformer, window: torch.Tensor, generator: torch.Generator,
             eps: float = 1e-3, stochastic_length_ratio: float = 0.0,
             global_batch: int | None = None, row_offset: int = 0) -> torch.Tensor:
    """The MDM training loss of a (B, L + 1) micro-batch: rows row_offset.. of the global batch."""
    return mdm_loss_and_length(model, window, generator, eps, stochastic_length_ratio, global_batch, row_offset)[0]


def mdm_loss_and_length(model: Transformer, window: torch.Tensor, generator: torch.Generator,
                        eps: float = 1e-3, stochastic_length_ratio: float = 0.0,
                        global_batch: int | None = None, row_offset: int = 0) -> tuple[torch.Tensor, int]:
    """`mdm_loss` and the tokens per row it trained on (L, or the cut length l)."""
    tokens = window[:, :-1]
    rows = tokens.shape[0]
    length, p, masked = draw_training_noise(global_batch or rows, tokens.shape[1], generator, eps,
                                            stochastic_length_ratio)
    p = p[row_offset:row_offset + rows].to(tokens.device)
    masked = masked[row_offset:row_offset + rows].to(tokens.device)
    return mdm_loss_given_noise(model, tokens[:, :length], p, masked).mean(), length


def arm_token_nll(model: Transformer, window: torch.Tensor) -> torch.Tensor:
    """Next-token negative log-likelihood per predicted position: (B, L)."""
    logits = model(window[:, :-1])  # (B, L, V)
    targets = window[:, 1:]
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)


def arm_loss(model: Transformer, window: torch.Tensor) -> torch.Tensor:
    return arm_token_nll(model, window).mean()


def training_loss(model: Transformer, window: torch.Tensor, generator: torch.Generator,
                  eps: float = 1e-3, stochastic_length_ratio: float = 0.0,
                  global_batch: int | None = None, row_offset: int = 0) -> torch.Tensor:
    return training_loss_and_length(model, window, generator, eps, stochastic_length_ratio, global_batch,
                                    row_offset)[0]


def training_loss_and_length(model: Transformer, window: torch.Tensor, generator: torch.Generator,
                             eps: float = 1e-3, stochastic_length_ratio: float = 0.0,
                             global_batch: int | None = None, row_offset: int = 0) -> tuple[torch.Tensor, int]:
    """The training loss and the tokens per row it trained on, which the run's token count adds up."""
    if model.cfg.family == "mdm":
        return mdm_loss_and_length(model, window, generator, eps, stochastic_length_ratio, global_batch, row_offset)
    return arm_loss(model, window), window.shape[1] - 1


def stratified_noise(n_seq: int, length: int, n_samples: int, seed: int,
                     eps: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed validation noise: per sequence, K stratified times t_k = (u + k/K) mod 1.

    Returns p (K, n_seq, 1) and masks (K, n_seq, L). The same seed and shape give the same noise
    for every run of a grid (common random numbers), so noise cancels between sizes.
    """
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(1, n_seq, 1, generator=gen)
    k = torch.arange(n_samples, dtype=torch.float32).view(-1, 1, 1)
    t = (u + k / n_samples) % 1.0  # (K, n_seq, 1)
    p = (1 - eps) * t + eps
    masks = torch.rand(n_samples, n_seq, length, generator=gen) < p
    return p, masks


@torch.no_grad()
def mdm_validation_elbo(model: Transformer, windows: torch.Tensor, p: torch.Tensor,
                        masks: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """Negative ELBO per token over `windows` (N, L + 1) with fixed noise, and its MC std error.

    The standard error treats the K per-sample means as independent; stratifying t makes them
    slightly anti-correlated, so the figure is conservative.
    """
    tokens = windows[:, :-1]
    per_sample = torch.zeros(p.shape[0], dtype=torch.float64)
    for k in range(p.shape[0]):
        total = 0.0
        for start in range(0, tokens.shape[0], batch_size):
            stop = start + batch_size
            rows = mdm_loss_given_noise(model, tokens[start:stop], p[k, start:stop].to(tokens.device),
                                        masks[k, start:stop].to(tokens.device))
            total += rows.double().sum().item()
        per_sample[k] = total / tokens.shape[0]
    stderr = per_sample.std(unbiased=True) / per_sample.numel() ** 0.5 if per_sample.numel() > 1 else torch.tensor(float("nan"))
    return per_sample.mean().item(), stderr.item()


@torch.no_grad()
def arm_validation_nll(model: Transformer, windows: torch.Tensor, batch_size: int) -> float:
    """Exact next-token NLL per token over `windows` (N, L + 1)."""
    total, count = 0.0, 0
    for start in range(0, windows.shape[0], batch_size):
        nll = arm_token_nll(model, windows[start:start + batch_size])
        total += nll.double().sum().item()
        count += nll.numel()
    return total / count
