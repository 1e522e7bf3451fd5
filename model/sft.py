"""Fine-tuning objectives on (prompt, response) rows (PAPER.md section 6).

A row is prompt + response, right-padded with EOS up to the batch's length; the padding belongs to
the response and stays in the loss, so the model learns to stop. `prompt` (B, L) marks the prompt
positions; a row with no prompt position is trained on the whole sequence (the reversal curse's
"whole-sequence" mode, where the pretraining objective applies to every token).

MDM: the prompt stays clean; each response token is masked with probability p (per row, as in
pretraining); the loss is sum over masked response tokens of -log p(x_i | x_t) / p, divided by the
row's response length (not by L: a row's loss does not shrink with its prompt). Optional prompt
dropout replaces a row's whole prompt by [MASK] (standard classifier-free guidance training).
ARM: next-token cross-entropy on the response tokens only, divided by the response length.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from model.transformer import Transformer


def _check(tokens: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    if prompt.shape != tokens.shape or prompt.dtype != torch.bool:
        raise ValueError(f"prompt must be a bool tensor of shape {tuple(tokens.shape)}, got {prompt.dtype} "
                         f"{tuple(prompt.shape)}")
    response = ~prompt  # (B, L)
    if not bool(response.any(1).all()):
        raise ValueError("every row needs at least one response token (EOS counts)")
    return response


def mdm_sft_loss_given_noise(model: Transformer, tokens: torch.Tensor, prompt: torch.Tensor, p: torch.Tensor,
                             masked: torch.Tensor, drop_prompt: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row MDM fine-tuning loss (B,) of `tokens` (B, L) given the noise: p (B, 1), masked (B, L)
    (read at response positions only) and, for prompt dropout, drop_prompt (B,) bool."""
    mask_id = model.cfg.mask_id
    if mask_id is None:
        raise ValueError("mdm_sft_loss needs an MDM (a model with a [MASK] token)")
    response = _check(tokens, prompt)
    noised = masked & response  # (B, L): the prompt is never noised
    hide = noised if drop_prompt is None else noised | (prompt & drop_prompt[:, None])
    hidden = model.features(torch.where(hide, torch.full_like(tokens, mask_id), tokens))  # (B, L, d)
    rows, cols = noised.nonzero(as_tuple=True)  # (M,) each: the head only where the loss is
    ce = F.cross_entropy(model.head(hidden[rows, cols]).float(), tokens[rows, cols], reduction="none")  # (M,)
    weighted = ce / p.view(-1)[rows].float()
    per_row = torch.zeros(tokens.shape[0], device=tokens.device, dtype=weighted.dtype).index_add(0, rows, weighted)
    return per_row / response.sum(1)


def mdm_sft_loss(model: Transformer, tokens: torch.Tensor, prompt: torch.Tensor, generator: torch.Generator,
                 eps: float = 1e-3, prompt_dropout: float = 0.0) -> torch.Tensor:
    """The mean MDM fine-tuning loss of a batch, its noise drawn from `generator` (on the CPU, so a
    seed gives the same noise on any device)."""
    batch, length = tokens.shape
    t = torch.rand(batch, 1, generator=generator)
    p = (1 - eps) * t + eps
    masked = torch.rand(batch, length, generator=generator) < p
    drop = torch.rand(batch, generator=generator) < prompt_dropout if prompt_dropout > 0 else None
    device = tokens.device
    return mdm_sft_loss_given_noise(model, tokens, prompt, p.to(device), masked.to(device),
                                    None if drop is None else drop.to(device)).mean()


def arm_sft_loss(model: Transformer, tokens: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    """The mean ARM fine-tuning loss of a batch: per row, the next-token cross-entropy of its response
    tokens (a response token at position i is predicted from positions < i), over the response
    length. The first token is never a target: a row needs a prompt or a BOS to predict from."""
    response = _check(tokens, prompt)
    logits = model(tokens[:, :-1])  # (B, L - 1, V)
    nll = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
    targets = response[:, 1:]  # (B, L - 1)
    per_row = (nll.view_as(targets) * targets).sum(1) / targets.sum(1).clamp_min(1)
    return per_row.mean()
