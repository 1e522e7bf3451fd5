"""Reference tests of the MDM objective on an enumerable toy (V = 3, L = 3)."""
import itertools
import math

import pytest
import torch
from torch import nn

from model.config import ModelConfig, config_for
from model.objectives import (
    arm_loss,
    arm_validation_nll,
    draw_mask_noise,
    mdm_loss,
    mdm_loss_given_noise,
    mdm_validation_elbo,
    stratified_noise,
)
from model.transformer import Transformer

V, L = 3, 3
SEQUENCES = list(itertools.product(range(V), repeat=L))


def toy_distribution(seed=0):
    gen = torch.Generator().manual_seed(seed)
    probs = torch.rand(len(SEQUENCES), generator=gen, dtype=torch.float64) ** 2 + 0.02
    return probs / probs.sum()


class ExactPosterior(nn.Module):
    """Returns log p(x0_i = v | unmasked tokens of x_t) of a known distribution at every position."""

    def __init__(self, probs, temperature=1.0):
        super().__init__()
        self.cfg = ModelConfig(n_layer=1, n_head=1, d_model=2, d_ffn=2, vocab_size=V, context=L)
        self.probs, self.temperature = probs, temperature

    def forward(self, noisy):
        out = torch.zeros(*noisy.shape, V, dtype=torch.float64)
        for b, row in enumerate(noisy.tolist()):
            weights = torch.zeros(L, V, dtype=torch.float64)
            for seq, p in zip(SEQUENCES, self.probs):
                if all(tok == V or tok == s for tok, s in zip(row, seq)):
                    weights[torch.arange(L), torch.tensor(seq)] += p
            out[b] = torch.log_softmax(weights.clamp_min(1e-300).log() / self.temperature, dim=-1)
        return out


def enumerated_loss(model, x0, eps=0.0):
    """E over t and masks of the MDM loss of one sequence, by enumerating the 2^L masks.

    With p = (1 - eps) t + eps uniform on [eps, 1], a mask with m masked tokens has weight
    integral of p^(m-1) (1-p)^(L-m) dp / (1 - eps) (the 1/p of the loss folded in).
    """
    total = 0.0
    x = torch.tensor([x0])
    for bits in itertools.product([False, True], repeat=L):
        m = sum(bits)
        if m == 0:
            continue
        grid = torch.linspace(eps, 1, 20001, dtype=torch.float64)
        weight = torch.trapezoid(grid ** (m - 1) * (1 - grid) ** (L - m), grid).item() / (1 - eps)
        masked = torch.tensor([bits])
        noisy = torch.where(masked, torch.full_like(x, V), x)
        logp = model(noisy).double().log_softmax(-1)[0]
        ce = -sum(logp[i, x0[i]].item() for i in range(L) if bits[i])
        total += weight * ce
    return total / L


def test_exact_model_elbo_equals_true_nll_for_every_sequence():
    probs = toy_distribution()
    oracle = ExactPosterior(probs)
    for seq, p in zip(SEQUENCES, probs):
        assert enumerated_loss(oracle, seq) == pytest.approx(-math.log(p) / L, rel=1e-6)


def test_perturbed_model_elbo_exceeds_entropy_on_average():
    probs = toy_distribution()
    perturbed = ExactPosterior(probs, temperature=1.7)
    entropy = -(probs * probs.log()).sum().item() / L
    elbo = sum(p.item() * enumerated_loss(perturbed, seq) for seq, p in zip(SEQUENCES, probs))
    assert elbo > entropy + 1e-3


def test_random_network_elbo_exceeds_entropy_on_average():
    torch.manual_seed(1)
    probs = toy_distribution()
    net = Transformer(ModelConfig(n_layer=1, n_head=2, d_model=16, d_ffn=32, vocab_size=V, context=L))
    entropy = -(probs * probs.log()).sum().item() / L
    with torch.no_grad():
        elbo = sum(p.item() * enumerated_loss(net, seq) for seq, p in zip(SEQUENCES, probs))
    assert elbo > entropy


def test_monte_carlo_loss_agrees_with_enumeration_within_its_standard_error():
    torch.manual_seed(2)
    net = Transformer(ModelConfig(n_layer=1, n_head=2, d_model=16, d_ffn=32, vocab_size=V, context=L))
    eps, n = 0.05, 20000  # eps > 0 keeps the 1/p weight's variance finite
    x0 = (2, 0, 1)
    gen = torch.Generator().manual_seed(3)
    tokens = torch.tensor([x0]).repeat(n, 1)
    with torch.no_grad():
        p, masked = draw_mask_noise((n, L), gen, eps)
        samples = mdm_loss_given_noise(net, tokens, p, masked).double()
        exact = enumerated_loss(net, x0, eps)
    stderr = samples.std().item() / math.sqrt(n)
    assert abs(samples.mean().item() - exact) < 4 * stderr, (samples.mean().item(), exact, stderr)


def test_mdm_loss_normalises_by_all_tokens_not_masked_ones():
    """A model that is uniform over V: each masked token costs log V / p, so E[loss] = log V."""
    class Uniform(nn.Module):
        cfg = ModelConfig(n_layer=1, n_head=1, d_model=2, d_ffn=2, vocab_size=5, context=64)

        def features(self, x):
            return torch.zeros(*x.shape, 1)

        def head(self, h):
            return torch.zeros(*h.shape[:-1], 5)

    gen = torch.Generator().manual_seed(0)
    window = torch.randint(0, 5, (4000, 65), generator=gen)
    p, masked = draw_mask_noise((4000, 64), gen, 1e-3)
    per_seq = mdm_loss_given_noise(Uniform(), window[:, :-1], p, masked)
    expected = (masked.sum(1) / p.squeeze(1) * math.log(5) / 64)
    torch.testing.assert_close(per_seq, expected.float())
    assert per_seq.mean().item() == pytest.approx(math.log(5), rel=0.05)


def test_stochastic_length_cuts_some_batches():
    torch.manual_seed(0)
    model = Transformer(config_for("debug", "mdm", vocab_size=10, context=16))
    seen = set()

    def spy(module, inputs):
        seen.add(inputs[0].shape[1])

    model.embed.register_forward_pre_hook(spy)
    gen = torch.Generator().manual_seed(0)
    window = torch.randint(0, 10, (2, 17))
    for _ in range(40):
        mdm_loss(model, window, gen, stochastic_length_ratio=0.5)
    assert 16 in seen and len(seen) > 3


def test_arm_loss_is_next_token_cross_entropy():
    torch.manual_seed(0)
    model = Transformer(config_for("debug", "arm", vocab_size=10, context=8))
    window = torch.randint(0, 10, (3, 9))
    logits = model(window[:, :-1]).log_softmax(-1)
    naive = -sum(logits[b, i, window[b, i + 1]] for b in range(3) for i in range(8)) / 24
    torch.testing.assert_close(arm_loss(model, window), naive)
    assert arm_validation_nll(model, window, batch_size=2) == pytest.approx(naive.item(), rel=1e-5)


def test_validation_noise_is_common_across_runs_and_elbo_batch_invariant():
    p1, m1 = stratified_noise(6, 8, 4, seed=7)
    p2, m2 = stratified_noise(6, 8, 4, seed=7)
    assert torch.equal(p1, p2) and torch.equal(m1, m2)
    torch.manual_seed(0)
    model = Transformer(config_for("debug", "mdm", vocab_size=10, context=8))
    windows = torch.randint(0, 10, (6, 9))
    a = mdm_validation_elbo(model, windows, p1, m1, batch_size=1)
    b = mdm_validation_elbo(model, windows, p1, m1, batch_size=6)
    assert a[0] == pytest.approx(b[0], rel=1e-5) and a[1] > 0
