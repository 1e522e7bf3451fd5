"""The Llama-style Transformer both families share (PAPER.md section 1).

Reads bottom-up: norm, rotary, attention, MLP, block, model. The MDM and the ARM differ only by
flags on the config: `causal` and one extra embedding row for [MASK].
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ModelConfig

try:  # GPU extra only; SDPA is the fallback everywhere else.
    from flash_attn import flash_attn_func
except ImportError:  # pragma: no cover - depends on the machine
    flash_attn_func = None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 so bf16 activations keep their precision.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return x32.type_as(x) * self.weight


def rotary_tables(length: int, head_dim: int, base: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (length, head_dim), rotating pairs (i, i + head_dim/2)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)  # (L, hd)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, L, hd); cos/sin: (L, hd)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).type_as(x)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """(B, H, L, hd) x3 -> (B, H, L, hd); flash-attn on CUDA in half precision, SDPA otherwise."""
    if flash_attn_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=causal)
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def attend_cached(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q (B, H, n, hd) for the last n of the m key positions k, v (B, H, m, hd) -> (B, H, n, hd).

    Causal with the queries aligned to the END of the keys (query i sits at position m - n + i),
    which `is_causal` does not do when n < m (it aligns them to the start). SDPA everywhere: the
    cached path is for incremental decoding, where one query row makes the kernel choice moot.
    """
    n, m = q.shape[-2], k.shape[-2]
    if n == 1:  # the one new token sees every cached position: no mask at all
        return F.scaled_dot_product_attention(q, k, v)
    allowed = torch.arange(m, device=q.device)[None, :] <= torch.arange(m - n, m, device=q.device)[:, None]  # (n, m)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


@dataclass
class KVCache:
    """Keys and values of every layer at the positions decoded so far (incremental ARM decoding).

    Buffers are allocated for the whole context once (`Transformer.new_cache`); `length` positions
    of them are filled. Only `Transformer.forward_cached` writes to it.
    """

    keys: list[torch.Tensor]
    """Per layer, (B, H, context, hd)."""
    values: list[torch.Tensor]
    """Per layer, (B, H, context, hd)."""
    length: int = 0
    """Positions already processed."""


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim, self.causal = cfg.n_head, cfg.head_dim, cfg.causal
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, length, d = x.shape
        qkv = self.qkv(x).view(b, length, 3, self.n_head, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, L, hd)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = attend(q, k, v, self.causal)  # (B, H, L, hd)
        return self.proj(y.transpose(1, 2).reshape(b, length, d))

    def forward_cached(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, keys: torch.Tensor,
                       values: torch.Tensor, start: int) -> torch.Tensor:
        """`forward` for the n new positions start..start+n of x (B, n, d), the earlier ones read
        from keys/values (B, H, context, hd), which receive the new ones; cos/sin: (n, hd)."""
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.n_head, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, n, hd)
        keys[:, :, start:start + n] = apply_rotary(k, cos, sin)
        values[:, :, start:start + n] = v
        y = attend_cached(apply_rotary(q, cos, sin), keys[:, :, :start + n], values[:, :, :start + n])  # (B, H, n, hd)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_up = nn.Linear(cfg.d_model, 2 * cfg.d_ffn, bias=False)
        self.down = nn.Linear(cfg.d_ffn, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)  # (B, L, ffn) each
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))

    def forward_cached(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, keys: torch.Tensor,
                       values: torch.Tensor, start: int) -> torch.Tensor:
        x = x + self.attn.forward_cached(self.norm1(x), cos, sin, keys, values, start)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """tokens (B, L) -> logits (B, L, V). The MDM embeds [MASK] = V but never predicts it."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.embedding_rows, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        cos, sin = rotary_tables(cfg.context, cfg.head_dim, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PAPER.md init: N(0, sqrt(2/(5d))); output projections N(0, 1/(sqrt(d) n_layer))."""
        d, n_layer = self.cfg.d_model, self.cfg.n_layer
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=math.sqrt(2 / (5 * d)))
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, std=1 / (math.sqrt(d) * n_layer))
            nn.init.normal_(block.mlp.down.weight, std=1 / (math.sqrt(d) * n_layer))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(tokens))  # (B, L, V)

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final normed hidden states (B, L, d): callers that need logits at a few positions
        only (the MDM loss: masked ones) apply `self.head` to those and skip the rest."""
        length = tokens.shape[1]
        if length > self.cfg.context:
            raise ValueError(f"sequence length {length} exceeds the model's context {self.cfg.context}")
        cos, sin = self.rope_cos[:length], self.rope_sin[:length]
        x = self.embed(tokens)  # (B, L, d)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.norm(x)

    def new_cache(self, batch_size: int) -> KVCache:
        """An empty KV cache for `batch_size` rows of a causal model (the ARM)."""
        if not self.cfg.causal:
            raise ValueError("a KV cache needs a causal model (family 'arm'): a bidirectional model's "
                             "earlier positions change with every new token")
        ref = self.embed.weight
        shape = (batch_size, self.cfg.n_head, self.cfg.context, self.cfg.head_dim)
        return KVCache([ref.new_zeros(shape) for _ in self.blocks], [ref.new_zeros(shape) for _ in self.blocks])

    @torch.no_grad()
    def forward_cached(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits (B, n, V) of `tokens` (B, n) placed after the cache's positions, which grow by n.

        Equal to `forward` on the whole sequence at those positions up to float rounding (the
        attention sums run over other shapes): tests/model/test_sampling.py checks both.
        """
        start, n = cache.length, tokens.shape[1]
        if start + n > self.cfg.context:
            raise ValueError(f"sequence length {start + n} exceeds the model's context {self.cfg.context}")
        cos, sin = self.rope_cos[start:start + n], self.rope_sin[start:start + n]
        x = self.embed(tokens)  # (B, n, d)
        for block, keys, values in zip(self.blocks, cache.keys, cache.values):
            x = block.forward_cached(x, cos, sin, keys, values, start)
        cache.length = start + n
        return self.head(self.norm(x))  # (B, n, V)

    def count_non_embedding_params(self) -> int:
        """Parameters outside the embedding and the head: must equal cfg.n_params."""
        skip = {id(self.embed.weight), id(self.head.weight)}
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)
