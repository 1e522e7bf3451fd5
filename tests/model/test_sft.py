"""Fine-tuning objectives against naive per-token loops and their pretraining limits."""
import pytest
import torch
import torch.nn.functional as F

from model.config import ModelConfig
from model.objectives import arm_token_nll, mdm_loss_given_noise
from model.sft import arm_sft_loss, mdm_sft_loss, mdm_sft_loss_given_noise
from model.transformer import Transformer

V, L = 20, 10


def tiny(family):
    torch.manual_seed(0)
    return Transformer(ModelConfig(n_layer=2, n_head=2, d_model=32, d_ffn=64, vocab_size=V, context=16,
                                   family=family)).eval()


def batch(prompt_lengths=(3, 0, 6, 1)):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, V, (len(prompt_lengths), L), generator=g)
    prompt = torch.arange(L)[None, :] < torch.tensor(prompt_lengths)[:, None]
    p = torch.rand(len(prompt_lengths), 1, generator=g) * 0.8 + 0.1
    masked = torch.rand(len(prompt_lengths), L, generator=g) < p
    return tokens, prompt, p, masked


def naive_mdm(model, tokens, prompt, p, masked, drop=None):
    out = []
    for b in range(len(tokens)):
        noisy = tokens[b].clone()
        hit = [i for i in range(L) if masked[b, i] and not prompt[b, i]]
        noisy[hit] = V
        if drop is not None and drop[b]:
            noisy[prompt[b]] = V
        logits = model(noisy[None])[0]
        total = sum(F.cross_entropy(logits[i], tokens[b, i]).item() / p[b, 0].item() for i in hit)
        out.append(total / int((~prompt[b]).sum()))
    return torch.tensor(out)


def test_mdm_sft_loss_is_the_naive_loop_and_never_noises_the_prompt():
    model, (tokens, prompt, p, masked) = tiny("mdm"), batch()
    with torch.no_grad():
        loss = mdm_sft_loss_given_noise(model, tokens, prompt, p, masked)
        torch.testing.assert_close(loss, naive_mdm(model, tokens, prompt, p, masked), rtol=1e-5, atol=1e-5)
        everywhere = mdm_sft_loss_given_noise(model, tokens, prompt, p, masked | prompt)
    assert torch.equal(loss, everywhere)  # mask bits at prompt positions are ignored


def test_without_a_prompt_it_is_the_pretraining_loss():
    model, (tokens, _, p, masked) = tiny("mdm"), batch()
    none = torch.zeros_like(masked)
    with torch.no_grad():
        torch.testing.assert_close(mdm_sft_loss_given_noise(model, tokens, none, p, masked),
                                   mdm_loss_given_noise(model, tokens, p, masked))


def test_prompt_dropout_masks_the_whole_prompt_of_the_dropped_rows_only():
    model, (tokens, prompt, p, masked) = tiny("mdm"), batch()
    drop = torch.tensor([True, True, False, True])
    with torch.no_grad():
        dropped = mdm_sft_loss_given_noise(model, tokens, prompt, p, masked, drop)
        torch.testing.assert_close(dropped, naive_mdm(model, tokens, prompt, p, masked, drop), rtol=1e-5, atol=1e-5)
        kept = mdm_sft_loss_given_noise(model, tokens, prompt, p, masked)
    assert dropped[2] == kept[2] and dropped[1] == kept[1]  # not dropped / no prompt: unchanged
    assert dropped[0] != kept[0]


def test_the_sampled_loss_is_seeded_and_trains():
    model, (tokens, prompt, _, _) = tiny("mdm"), batch()
    a = mdm_sft_loss(model, tokens, prompt, torch.Generator().manual_seed(3), prompt_dropout=0.5)
    b = mdm_sft_loss(model, tokens, prompt, torch.Generator().manual_seed(3), prompt_dropout=0.5)
    assert torch.equal(a, b) and a.requires_grad
    a.backward()
    assert model.head.weight.grad.abs().sum() > 0


def test_arm_sft_loss_scores_response_tokens_only():
    model, (tokens, prompt, _, _) = tiny("arm"), batch()
    with torch.no_grad():
        loss = arm_sft_loss(model, tokens, prompt)
        rows = []
        for b in range(len(tokens)):
            logits = model(tokens[b:b + 1, :-1])[0]
            targets = [i for i in range(1, L) if not prompt[b, i]]
            rows.append(sum(F.cross_entropy(logits[i - 1], tokens[b, i]).item() for i in targets) / len(targets))
        torch.testing.assert_close(loss, torch.tensor(rows).mean(), rtol=1e-5, atol=1e-5)
        whole = arm_sft_loss(model, tokens, torch.zeros_like(prompt))
        torch.testing.assert_close(whole, arm_token_nll(model, tokens).mean())  # whole-sequence mode


def test_bad_inputs():
    tokens, prompt, p, masked = batch()
    with pytest.raises(ValueError, match="at least one response token"):
        arm_sft_loss(tiny("arm"), tokens, torch.ones_like(prompt))
    with pytest.raises(ValueError, match="bool tensor"):
        mdm_sft_loss_given_noise(tiny("mdm"), tokens, prompt.long(), p, masked)
    with pytest.raises(ValueError, match="MDM"):
        mdm_sft_loss_given_noise(tiny("arm"), tokens, prompt, p, masked)
