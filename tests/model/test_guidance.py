"""Unsupervised CFG: exact no-op at w = 0, one batched call otherwise, equal to two naive calls."""
import pytest
import torch

from model.config import ModelConfig
from model.guidance import guidance_cost, guided_log_probs, guided_logits, mask_prompt
from model.transformer import Transformer

V, L = 5, 6


def tiny(family="mdm", seed=0):
    torch.manual_seed(seed)
    return Transformer(ModelConfig(n_layer=1, n_head=2, d_model=16, d_ffn=32, vocab_size=V,
                                   context=L, family=family)).eval()


def inputs(batch=3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (batch, L), generator=gen)
    prompt_lens = torch.tensor([0, 2, 4][:batch])
    prompt_mask = torch.arange(L)[None, :] < prompt_lens[:, None]  # (B, L)
    return tokens, prompt_mask


def count_calls(model):
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    return calls


def test_zero_scale_is_exactly_the_unguided_model_in_one_pass():
    model = tiny()
    tokens, prompt_mask = inputs()
    calls = count_calls(model)
    with torch.no_grad():
        guided = guided_logits(model, tokens, prompt_mask, 0.0)
        plain = model(tokens)
    assert torch.equal(guided, plain)
    assert calls == [3, 3]  # the guided call was a single pass of B rows
    assert guidance_cost(0.0) == 1 and guidance_cost(0.6) == 2


def test_guided_logits_equal_two_naive_calls_and_use_one_batched_call():
    model = tiny()
    tokens, prompt_mask = inputs()
    w = 1.1
    calls = count_calls(model)
    with torch.no_grad():
        guided = guided_logits(model, tokens, prompt_mask, w)
        assert calls == [6]  # conditional and unconditional rows together
        unconditional = tokens.clone()
        for b in range(tokens.shape[0]):
            for i in range(L):
                if prompt_mask[b, i]:
                    unconditional[b, i] = V  # the [MASK] id
        naive = (1 + w) * model(tokens) - w * model(unconditional)
    torch.testing.assert_close(guided, naive, rtol=1e-5, atol=1e-5)
    log_probs = guided_log_probs(model, tokens, prompt_mask, w)
    torch.testing.assert_close(log_probs, naive.log_softmax(-1), rtol=1e-5, atol=1e-5)


def test_rows_without_a_prompt_are_not_changed_by_guidance():
    model = tiny()
    tokens, prompt_mask = inputs()
    with torch.no_grad():
        guided = guided_logits(model, tokens, prompt_mask, 2.0)
        plain = model(tokens)
    torch.testing.assert_close(guided[0], plain[0], rtol=1e-5, atol=1e-5)  # row 0 has no prompt
    assert not torch.allclose(guided[2], plain[2])


def test_mask_prompt_replaces_only_condition_positions():
    tokens, prompt_mask = inputs()
    masked = mask_prompt(tokens, prompt_mask, V)
    assert torch.equal(masked[prompt_mask], torch.full((int(prompt_mask.sum()),), V))
    assert torch.equal(masked[~prompt_mask], tokens[~prompt_mask])
    with pytest.raises(ValueError):
        mask_prompt(tokens, prompt_mask.long(), V)


def test_guidance_refuses_the_arm_and_non_finite_scales():
    tokens, prompt_mask = inputs()
    arm = tiny("arm")
    assert torch.equal(guided_logits(arm, tokens, prompt_mask, 0.0), arm(tokens))
    with pytest.raises(ValueError, match="MASK"):
        guided_logits(arm, tokens, prompt_mask, 0.5)
    with pytest.raises(ValueError, match="finite"):
        guided_logits(tiny(), tokens, prompt_mask, float("nan"))
