"""Unsupervised classifier-free guidance for the MDM (PAPER.md section 4).

The unconditional model is the same network with the condition (the prompt) replaced by [MASK]
tokens of equal length, so no condition dropout and no second model are needed:

    logits_guided = (1 + w) logits(x | prompt) - w logits(x | masked prompt)

Both passes run as one forward call of 2B rows: one kernel launch instead of two, and the two
halves see identical numerics. Every estimator and sampler goes through `guided_logits`, so a
scale of 0 is exactly the unguided model everywhere (it short-circuits to a single pass).
"""
from __future__ import annotations

import math

import torch
from torch import nn


def guidance_cost(cfg_scale: float) -> int:
    """Model rows evaluated per guided row: 1 without guidance, 2 with it (cost accounting)."""
    return 1 if cfg_scale == 0 else 2


def mask_prompt(tokens: torch.Tensor, prompt_mask: torch.Tensor, mask_id: int) -> torch.Tensor:
    """`tokens` (B, L) with every position of `prompt_mask` (B, L) replaced by [MASK]."""
    if prompt_mask.shape != tokens.shape or prompt_mask.dtype != torch.bool:
        raise ValueError(f"prompt_mask must be a bool tensor of shape {tuple(tokens.shape)}, "
                         f"got {prompt_mask.dtype} {tuple(prompt_mask.shape)}")
    return torch.where(prompt_mask, torch.full_like(tokens, mask_id), tokens)  # (B, L)


def _mask_id_for_guidance(model: nn.Module) -> int:
    mask_id = model.cfg.mask_id
    if mask_id is None:
        raise ValueError("unsupervised CFG needs a [MASK] token: only the MDM can be guided")
    return mask_id


def _logits_at(model: nn.Module, tokens: torch.Tensor, at: torch.Tensor | None) -> torch.Tensor:
    """model(tokens) (B, L, V), or its rows at the `at` (B, L) positions, flattened row-major to
    (N, V). A model exposing `features` and `head` (model.transformer.Transformer) runs its output
    head only there; any other module (a test oracle) is run whole and indexed."""
    if at is None:
        return model(tokens)
    if hasattr(model, "features") and hasattr(model, "head"):
        return model.head(model.features(tokens)[at])
    return model(tokens)[at]


def guided_logits(model: nn.Module, tokens: torch.Tensor, prompt_mask: torch.Tensor,
                  cfg_scale: float, at: torch.Tensor | None = None) -> torch.Tensor:
    """Guided logits (B, L, V) of `tokens` (B, L) whose condition positions are `prompt_mask`.

    With `cfg_scale == 0` this is `model(tokens)` itself, bit for bit (one pass, no arithmetic).
    Otherwise the conditional and unconditional rows share one forward call, and the mix is done
    in at least fp32 so that bf16 logits do not lose the small difference the scale amplifies.
    With `at` (B, L) bool, only the logits at those positions are computed, as (N, V) row-major:
    a sampler needs them at masked positions only, and the head is a large share of a small model.
    """
    if not math.isfinite(cfg_scale):
        raise ValueError(f"cfg_scale must be finite, got {cfg_scale}")
    if cfg_scale == 0:
        return _logits_at(model, tokens, at)  # (B, L, V) or (N, V)
    unconditional = mask_prompt(tokens, prompt_mask, _mask_id_for_guidance(model))  # (B, L)
    logits = _logits_at(model, torch.cat([tokens, unconditional]), None if at is None else torch.cat([at, at]))
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    cond, uncond = logits.chunk(2)  # (B, L, V) or (N, V) each: row-major puts the first half first
    return (1 + cfg_scale) * cond - cfg_scale * uncond


def guided_log_probs(model: nn.Module, tokens: torch.Tensor, prompt_mask: torch.Tensor,
                     cfg_scale: float) -> torch.Tensor:
    """log softmax of the guided logits, (B, L, V), in at least fp32: what estimators score."""
    logits = guided_logits(model, tokens, prompt_mask, cfg_scale)  # (B, L, V)
    return logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)
