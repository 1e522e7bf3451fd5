"""Model configuration and the named sizes (the paper's 30 plus CPU-sized ones)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

FAMILIES = ("mdm", "arm")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the Llama-style Transformer shared by both families."""

    n_layer: int
    """Number of Transformer blocks."""
    n_head: int
    """Attention heads (full multi-head: as many key/value heads as query heads)."""
    d_model: int
    """Residual width d."""
    d_ffn: int
    """SwiGLU hidden width (4 d for all paper sizes but 75M)."""
    vocab_size: int = 32000
    """V: output logits; the MDM's embedding has one more row, the [MASK] token (id V)."""
    context: int = 2048
    """Longest sequence the model is trained on."""
    family: str = "mdm"
    """`mdm` (bidirectional, [MASK] row) or `arm` (causal)."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    rope_base: float = 10000.0
    """Rotary embedding base."""

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "d_model", "d_ffn", "vocab_size", "context"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if (self.d_model // self.n_head) % 2:
            raise ValueError(f"head_dim={self.d_model // self.n_head} must be even for rotary")
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def causal(self) -> bool:
        return self.family == "arm"

    @property
    def mask_id(self) -> int | None:
        """Token id of [MASK] (MDM only): the extra embedding row."""
        return self.vocab_size if self.family == "mdm" else None

    @property
    def embedding_rows(self) -> int:
        return self.vocab_size + (1 if self.family == "mdm" else 0)

    @property
    def n_params(self) -> int:
        """N: non-embedding parameters, norm weights included (the paper's count)."""
        d = self.d_model
        return self.n_layer * (4 * d * d + 3 * d * self.d_ffn + 2 * d) + d

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)


# (n_layer, n_head, d_model, d_ffn), keyed by N in millions as the paper names them.
_PAPER_SHAPES = {
    "6M": (6, 4, 256, 1024), "19M": (8, 6, 384, 1536), "34M": (8, 8, 512, 2048),
    "48M": (9, 9, 576, 2304), "66M": (10, 10, 640, 2560), "75M": (16, 8, 640, 1600),
    "85M": (13, 10, 640, 2560), "113M": (12, 12, 768, 3072), "142M": (15, 12, 768, 3072),
    "170M": (18, 12, 768, 3072), "180M": (14, 14, 896, 3584), "206M": (16, 14, 896, 3584),
    "231M": (18, 14, 896, 3584), "268M": (16, 16, 1024, 4096), "302M": (18, 16, 1024, 4096),
    "336M": (20, 16, 1024, 4096), "472M": (18, 10, 1280, 5120), "551M": (21, 10, 1280, 5120),
    "571M": (18, 11, 1408, 5632), "629M": (24, 10, 1280, 5120), "666M": (21, 11, 1408, 5632),
    "717M": (19, 12, 1536, 6144), "761M": (24, 11, 1408, 5632), "831M": (22, 12, 1536, 6144),
    "944M": (25, 12, 1536, 6144), "1028M": (20, 14, 1792, 7168), "1233M": (24, 14, 1792, 7168),
    "1476M": (22, 16, 2048, 8192), "1678M": (25, 16, 2048, 8192), "2121M": (28, 17, 2176, 8704),
}

# CPU-sized shapes (n_layer, n_head, d) with ffn = 4 d, named by their N like the paper's sizes:
# 6.5k ... 4.72M, about 2x apart, for IsoFLOP grids spanning 8x or more in N on 2 cores.
_CPU_SHAPES = [
    (1, 2, 20), (1, 2, 24), (1, 2, 28), (1, 2, 32), (1, 2, 36), (2, 2, 32), (2, 2, 36),
    (2, 2, 40), (2, 3, 48), (2, 4, 56), (3, 4, 64), (4, 4, 80), (4, 6, 96), (4, 4, 112),
    (5, 8, 128), (6, 8, 160), (8, 8, 192),
]


def _size_name(cfg: ModelConfig) -> str:
    n = cfg.n_params
    return f"{round(n / 1e3)}k" if n < 1e6 else f"{n / 1e6:.3g}M"


MODEL_SIZES: dict[str, ModelConfig] = {
    name: ModelConfig(n_layer=l, n_head=h, d_model=d, d_ffn=f)
    for name, (l, h, d, f) in _PAPER_SHAPES.items()
}
for _l, _h, _d in _CPU_SHAPES:
    _cfg = ModelConfig(n_layer=_l, n_head=_h, d_model=_d, d_ffn=4 * _d)
    MODEL_SIZES[_size_name(_cfg)] = _cfg
MODEL_SIZES["debug"] = MODEL_SIZES["16k"]


def config_for(size: str, family: str, vocab_size: int, context: int) -> ModelConfig:
    """The named size as a `family` model for a given tokenizer and context."""
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; known sizes: {sorted(MODEL_SIZES)}")
    return MODEL_SIZES[size].replace(family=family, vocab_size=vocab_size, context=context)
