"""Two FLOP counts: the paper's C = 6 N D for budgets, and every matmul for achieved FLOP/s."""
from __future__ import annotations

from model.config import ModelConfig


def budget_flops(n_params: int, tokens: int) -> float:
    """C = 6 N D with N the non-embedding parameters (the same for MDM and ARM)."""
    return 6.0 * n_params * tokens


def steps_for_budget(flops: float, n_params: int, batch_size: int, seq_len: int) -> int:
    """Optimizer steps that spend `flops` at B * L tokens per step (at least one)."""
    return max(1, round(flops / (6.0 * n_params * batch_size * seq_len)))


def forward_matmul_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Multiply-adds x 2 of one forward pass per token, at sequence length `seq_len`.

    Counts the projections, the MLP, the attention scores and values (all L keys per query,
    as the dense kernels compute them, halved for a causal kernel) and the output head.
    """
    d, f = cfg.d_model, cfg.d_ffn
    per_layer = 2 * (3 * d * d + d * d + 3 * d * f)  # qkv, out, gate/up/down
    attention = 2 * 2 * seq_len * d  # scores q.k and weighted sum of v
    if cfg.causal:
        attention /= 2
    head = 2 * d * cfg.vocab_size
    return cfg.n_layer * (per_layer + attention) + head


def training_matmul_flops(cfg: ModelConfig, batch_size: int, seq_len: int) -> float:
    """Forward + backward (2x forward) matmul FLOPs of one training step."""
    return 3.0 * forward_matmul_flops_per_token(cfg, seq_len) * batch_size * seq_len
