import math

import pytest
import torch

from model.config import config_for
from model.transformer import Transformer, attend


def naive_attention(q, k, v, causal):
    """A loop over batch, head and query position: the reference for `attend`."""
    out = torch.zeros_like(q)
    batch, heads, length, dim = q.shape
    for b in range(batch):
        for h in range(heads):
            for i in range(length):
                keys = range(i + 1) if causal else range(length)
                scores = torch.tensor([float(q[b, h, i] @ k[b, h, j]) / math.sqrt(dim) for j in keys])
                weights = torch.softmax(scores, dim=0)
                out[b, h, i] = sum(w * v[b, h, j] for w, j in zip(weights, keys))
    return out


def test_attention_matches_naive_loop_both_ways():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    for causal in (False, True):
        torch.testing.assert_close(attend(q, k, v, causal), naive_attention(q, k, v, causal))


def test_arm_is_causal_and_mdm_is_not():
    torch.manual_seed(0)
    for family, leaks in (("arm", False), ("mdm", True)):
        model = Transformer(config_for("debug", family, vocab_size=20, context=8)).eval()
        x = torch.randint(0, 20, (1, 8))
        y = x.clone()
        y[0, -1] = (y[0, -1] + 1) % 20
        changed = (model(x)[0, :-1] - model(y)[0, :-1]).abs().max() > 1e-6
        assert bool(changed) == leaks


def test_init_stds_follow_the_paper():
    torch.manual_seed(0)
    cfg = config_for("1.31M", "mdm", vocab_size=2000, context=16)
    model = Transformer(cfg)
    d, n_layer = cfg.d_model, cfg.n_layer
    assert abs(model.embed.weight.std().item() - math.sqrt(2 / (5 * d))) < 0.01 * math.sqrt(2 / (5 * d)) * 5
    down = model.blocks[0].mlp.down.weight.std().item()
    assert abs(down - 1 / (math.sqrt(d) * n_layer)) / down < 0.05


def test_mdm_head_never_predicts_mask():
    model = Transformer(config_for("debug", "mdm", vocab_size=20, context=8))
    logits = model(torch.full((2, 8), 20))
    assert logits.shape == (2, 8, 20)


def test_too_long_input_is_an_error():
    model = Transformer(config_for("debug", "arm", vocab_size=20, context=8))
    try:
        model(torch.zeros(1, 9, dtype=torch.long))
    except ValueError as err:
        assert "context 8" in str(err)
    else:
        raise AssertionError("expected a ValueError")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_flash_attention_agrees_with_sdpa_in_bf16():
    import torch.nn.functional as F

    from model import transformer

    if transformer.flash_attn_func is None:
        pytest.skip("flash-attn is not installed (pip install -e '.[flash]')")
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 4, 256, 64, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3))
    for causal in (False, True):
        reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal)
        torch.testing.assert_close(attend(q, k, v, causal).float(), reference, atol=2e-2, rtol=2e-2)
