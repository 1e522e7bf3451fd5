"""Reference tests of the samplers: the KV cache against full forwards, batch independence, and the
MDM samplers' laws against an enumerable joint (3 positions, V = 3)."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chisquare
from torch import nn

from model.config import ModelConfig
from model.likelihood import mdm_greedy_decode
from model.sampling import MDM_SAMPLERS, generate_arm, generate_mdm, infill_mdm
from model.transformer import Transformer

V = 20


def tiny(family, seed=0, n_layer=2):
    torch.manual_seed(seed)
    return Transformer(ModelConfig(n_layer=n_layer, n_head=2, d_model=32, d_ffn=64, vocab_size=V,
                                   context=32, family=family)).eval()


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def prompts(n=8, seed=1):
    """n prompts of lengths 1..4, so batches hold several length groups."""
    g = gen(seed)
    return [torch.randint(0, V, (1 + i % 4,), generator=g).tolist() for i in range(n)]


class Counting(nn.Module):
    """Wraps a model and records every input it is called with."""

    def __init__(self, model):
        super().__init__()
        self.model, self.cfg, self.calls = model, model.cfg, []

    def forward(self, tokens):
        self.calls.append(tokens.clone())
        return self.model(tokens)


# ---------------------------------------------------------------------------------------------
# ARM

def test_cached_forward_matches_full_forward():
    model = tiny("arm")
    x = torch.randint(0, V, (3, 12), generator=gen())
    cache = model.new_cache(3)
    parts = [model.forward_cached(x[:, a:b], cache) for a, b in ((0, 5), (5, 6), (6, 9), (9, 12))]
    torch.testing.assert_close(torch.cat(parts, 1), model(x), atol=1e-5, rtol=1e-5)
    assert cache.length == 12


def test_cache_refused_for_the_mdm():
    with pytest.raises(ValueError, match="causal"):
        tiny("mdm").new_cache(1)


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.0, None, None), (1.0, None, None), (1.0, 5, 0.9)])
def test_arm_kv_cache_equals_no_cache(temperature, top_k, top_p):
    model, ps = tiny("arm"), prompts()
    runs = [generate_arm(model, ps, 12, generator=gen(3), temperature=temperature, top_k=top_k, top_p=top_p,
                         kv_cache=cache) for cache in (True, False)]
    assert runs[0] == runs[1]
    assert all(len(row) == 12 for row in runs[0])


def test_arm_top_k_1_and_a_tiny_nucleus_are_greedy():
    model, ps = tiny("arm"), prompts()
    greedy = generate_arm(model, ps, 8, generator=gen())
    for kw in (dict(top_k=1), dict(top_p=1e-9)):
        assert generate_arm(model, ps, 8, generator=gen(), temperature=2.0, **kw) == greedy
    assert generate_arm(model, ps, 8, generator=gen(), temperature=2.0) != greedy


def test_arm_batch_of_8_equals_8_batches_of_1():
    model, ps = tiny("arm"), prompts()
    batched = generate_arm(model, ps, 10, generator=gen(5), temperature=1.0)
    alone = [generate_arm(model, [p], 10, generator=gen(5), temperature=1.0)[0] for p in ps]
    assert batched == alone
    assert generate_arm(model, ps[::-1], 10, generator=gen(5), temperature=1.0) == batched[::-1]
    assert generate_arm(model, ps, 10, generator=gen(6), temperature=1.0) != batched  # the seed matters


def test_arm_eos_truncation():
    model, ps = tiny("arm"), prompts()
    full = generate_arm(model, ps, 12, generator=gen(7), temperature=1.0)
    eos = full[0][3]
    cut = generate_arm(model, ps, 12, generator=gen(7), temperature=1.0, eos_id=eos)
    for a, b in zip(full, cut):
        assert b == (a[:a.index(eos) + 1] if eos in a else a)
    assert cut[0][-1] == eos and len(cut[0]) <= 4


def test_arm_bad_inputs():
    with pytest.raises(ValueError, match="non-empty prompt"):
        generate_arm(tiny("arm"), [[]], 3, generator=gen())
    with pytest.raises(ValueError, match="causal"):
        generate_arm(tiny("mdm"), [[1]], 3, generator=gen())


# ---------------------------------------------------------------------------------------------
# MDM: invariances

SETTINGS = [("ancestral", 6), ("confidence", 6), ("first_hitting", 12)]  # (sampler, steps) for length 12


@pytest.mark.parametrize("sampler,steps", SETTINGS)
@pytest.mark.parametrize("cfg_scale,block_length", [(0.0, None), (0.5, 4)])
def test_mdm_batch_of_8_equals_8_batches_of_1(sampler, steps, cfg_scale, block_length):
    model, ps = tiny("mdm"), prompts()
    kw = dict(steps=steps, sampler=sampler, temperature=1.0, cfg_scale=cfg_scale, block_length=block_length)
    batched = generate_mdm(model, ps, 12, generator=gen(5), **kw)
    alone = [generate_mdm(model, [p], 12, generator=gen(5), **kw)[0] for p in ps]
    assert batched == alone
    assert generate_mdm(model, ps[::-1], 12, generator=gen(5), max_batch=3, **kw) == batched[::-1]
    assert all(len(row) == 12 and all(0 <= t < V for t in row) for row in batched)  # never [MASK] (= V)


@pytest.mark.parametrize("sampler,steps", SETTINGS)
def test_one_block_equals_no_blocks(sampler, steps):
    model, ps = tiny("mdm"), prompts()
    runs = [generate_mdm(model, ps, 12, steps=steps, generator=gen(2), sampler=sampler, temperature=1.0,
                         block_length=b) for b in (None, 12)]
    assert runs[0] == runs[1]


def test_blocks_fill_left_to_right():
    model = Counting(tiny("mdm"))
    generate_mdm(model, [[1, 2]], 12, steps=6, generator=gen(), sampler="ancestral", block_length=4)
    for k, call in enumerate(model.calls):  # steps 0-1 on block 0, 2-3 on block 1, ...
        block = k // 2
        assert (call[0, 2 + 4 * (block + 1):] == V).all()  # later blocks untouched
        assert (call[0, 2:2 + 4 * block] != V).all()  # earlier blocks complete


def masks_per_call(model):
    return [int((call == V).sum(1).max()) for call in model.calls]


def test_confidence_with_steps_equal_to_length_reveals_one_token_per_step():
    model = Counting(tiny("mdm"))
    generate_mdm(model, prompts(), 12, steps=12, generator=gen(), sampler="confidence", temperature=1.0)
    # One batch per prompt length (1..4), each counted down 12..1, in every row.
    counts = [int((call == V).sum(1).min()) for call in model.calls]
    assert counts == list(range(12, 0, -1)) * 4
    assert masks_per_call(model) == counts  # every row of a batch, not just one


def test_confidence_schedule_is_per_row_and_linear():
    model = Counting(tiny("mdm"))
    generate_mdm(model, [[3, 4], [5, 6]], 10, steps=4, generator=gen(), sampler="confidence")
    assert [int((call == V).sum(1).min()) for call in model.calls] == [10, 7, 4, 2]  # reveals 3, 3, 2, 2
    assert masks_per_call(model) == [10, 7, 4, 2]


def test_first_hitting_reveals_one_token_per_pass():
    model = Counting(tiny("mdm"))
    generate_mdm(model, [[3, 4]], 8, steps=8, generator=gen(), sampler="first_hitting", temperature=1.0)
    assert masks_per_call(model) == list(range(8, 0, -1))


def test_zero_guidance_is_no_guidance():
    """w = 0 runs one pass of B rows (guided_logits' short cut), w > 0 two halves in one call."""
    for w, rows in ((0.0, 8), (0.5, 16)):
        model = Counting(tiny("mdm"))
        generate_mdm(model, [[1, 2, 3]] * 8, 6, steps=3, generator=gen(), sampler="confidence", cfg_scale=w)
        assert {len(call) for call in model.calls} == {rows}
        if w:  # the second half is the prompt replaced by [MASK]
            assert (model.calls[0][8:, :3] == V).all() and (model.calls[0][:8, :3] == torch.tensor([1, 2, 3])).all()
    base = generate_mdm(tiny("mdm"), prompts(), 6, steps=3, generator=gen(), sampler="confidence")
    assert generate_mdm(tiny("mdm"), prompts(), 6, steps=3, generator=gen(), sampler="confidence",
                        cfg_scale=0.0) == base
    assert generate_mdm(tiny("mdm"), prompts(), 6, steps=3, generator=gen(), sampler="confidence",
                        cfg_scale=3.0) != base


@pytest.mark.parametrize("sampler,steps", SETTINGS)
def test_mdm_eos_truncation(sampler, steps):
    model, ps = tiny("mdm"), prompts()
    full = generate_mdm(model, ps, 12, steps=steps, generator=gen(4), sampler=sampler, temperature=1.0)
    eos = full[0][5]
    cut = generate_mdm(model, ps, 12, steps=steps, generator=gen(4), sampler=sampler, temperature=1.0, eos_id=eos)
    assert cut == [a[:a.index(eos) + 1] if eos in a else a for a in full]


class ExtraColumn(nn.Module):
    """A model whose head also scores [MASK]: refused rather than ever emitting it."""

    def __init__(self, model):
        super().__init__()
        self.model, self.cfg = model, model.cfg

    def forward(self, tokens):
        logits = self.model(tokens)
        return torch.cat([logits, torch.full_like(logits[..., :1], 100.0)], -1)


def test_a_head_that_scores_mask_is_refused():
    with pytest.raises(ValueError, match="vocab_size"):
        generate_mdm(ExtraColumn(tiny("mdm")), [[1]], 4, steps=4, generator=gen(), sampler="ancestral")


def test_mdm_bad_inputs():
    model = tiny("mdm")
    with pytest.raises(ValueError, match="cannot exceed the 2 masked tokens"):
        generate_mdm(model, [[1]], 8, steps=12, block_length=2, generator=gen(), sampler="confidence")
    with pytest.raises(ValueError, match="cannot exceed the 4 masked tokens"):
        generate_mdm(model, [[1]], 4, steps=5, generator=gen(), sampler="confidence")
    with pytest.raises(ValueError, match="steps must equal length"):
        generate_mdm(model, [[1]], 8, steps=4, generator=gen(), sampler="first_hitting")
    with pytest.raises(ValueError, match="multiple of the number of blocks"):
        generate_mdm(model, [[1]], 8, steps=3, block_length=4, generator=gen(), sampler="ancestral")
    with pytest.raises(ValueError, match="divisor"):
        generate_mdm(model, [[1]], 8, steps=4, block_length=3, generator=gen(), sampler="ancestral")
    with pytest.raises(ValueError, match="sampler must be one of"):
        generate_mdm(model, [[1]], 8, steps=4, generator=gen(), sampler="greedy")
    with pytest.raises(ValueError, match="MDM"):
        generate_mdm(tiny("arm"), [[1]], 8, steps=4, generator=gen(), sampler="ancestral")


SPEEDUPS = [dict(reuse_unchanged=r, head_at_masked=h) for r, h in ((True, True), (True, False), (False, True))]


@pytest.mark.parametrize("sampler,steps", SETTINGS + [("ancestral", 48)])
@pytest.mark.parametrize("cfg_scale,block_length", [(0.0, None), (0.5, 4)])
def test_exact_speedups_change_no_token(sampler, steps, cfg_scale, block_length):
    """Each speed-up alone and both together give the plain path's tokens, seed for seed."""
    model, ps = tiny("mdm"), prompts()
    for seed, temperature in ((0, 0.0), (1, 1.0)):
        kw = dict(steps=steps, sampler=sampler, temperature=temperature, cfg_scale=cfg_scale,
                  block_length=block_length)
        plain = generate_mdm(model, ps, 12, generator=gen(seed), reuse_unchanged=False, head_at_masked=False, **kw)
        for flags in SPEEDUPS:
            assert generate_mdm(model, ps, 12, generator=gen(seed), **flags, **kw) == plain, (seed, flags)


@pytest.mark.parametrize("cfg_scale", [0.0, 0.5])
def test_ancestral_with_many_steps_skips_most_forward_rows(cfg_scale):
    model, ps, length = Counting(tiny("mdm")), prompts(), 8
    stats, plain = {}, {}
    kw = dict(steps=4 * length, sampler="ancestral", temperature=1.0, cfg_scale=cfg_scale)
    generate_mdm(model, ps, length, generator=gen(), stats=stats, **kw)
    assert sum(len(call) for call in model.calls) == stats["forward_rows"]  # the count is what the model saw
    generate_mdm(model, ps, length, generator=gen(), reuse_unchanged=False, stats=plain, **kw)
    cost = 2 if cfg_scale else 1
    assert stats["passes"] == plain["passes"] == 4 * length * len(ps)
    assert plain["forward_rows"] == cost * plain["passes"]
    # at most `length` steps of a row reveal something, so at most length + 1 of its 4 * length passes run
    assert stats["forward_rows"] <= cost * (length + 1) * len(ps) < plain["forward_rows"] / 2


def test_first_hitting_and_confidence_skip_nothing():
    """Each of their steps reveals a token in every row: nothing to reuse, nothing lost."""
    for sampler in ("first_hitting", "confidence"):
        stats = {}
        generate_mdm(tiny("mdm"), prompts(), 8, steps=8, generator=gen(), sampler=sampler, stats=stats)
        assert stats == {"passes": 64, "forward_rows": 64}


def test_an_empty_prompt_generates_from_masks_alone():
    rows = generate_mdm(tiny("mdm"), [[], []], 4, steps=4, generator=gen(), sampler="ancestral", temperature=1.0)
    assert rows[0] == rows[1] and len(rows[0]) == 4 and all(0 <= t < V for t in rows[0])


def test_sampler_names():
    assert set(MDM_SAMPLERS) == {s for s, _ in SETTINGS}


def test_paper_schedule_reveals_the_floor_rule_and_its_empty_steps_cost_nothing():
    model = Counting(tiny("mdm"))
    stats = {}
    out = generate_mdm(model, [[3, 4]], 6, steps=8, generator=gen(), sampler="confidence", schedule="paper",
                       stats=stats)
    # floor(masked / steps left): 6/8, 6/7 -> 0; 6/6 -> 1; 5/5 -> 1; ... every token by the last step
    assert masks_per_call(model) == [6, 5, 4, 3, 2, 1]  # the two empty steps reuse the first pass
    assert stats == {"passes": 8, "forward_rows": 6} and len(out[0]) == 6
    with pytest.raises(ValueError, match="confidence sampler only"):
        generate_mdm(model, [[1]], 4, steps=4, generator=gen(), sampler="ancestral", schedule="paper")


def test_paper_and_linear_schedules_agree_at_one_token_per_step():
    model, ps = tiny("mdm"), prompts()
    runs = [generate_mdm(model, ps, 8, steps=8, generator=gen(), sampler="confidence", temperature=1.0,
                         schedule=schedule) for schedule in ("linear", "paper")]
    assert runs[0] == runs[1]


def naive_greedy(model, prompt, target_length):
    """LAMBADA greedy decoding as a plain loop: unmask the position whose argmax is most probable."""
    row = torch.tensor(list(prompt) + [V] * target_length)
    for _ in range(target_length):
        probs = model(row[None])[0].softmax(-1)  # (L, V)
        best, token = probs.max(-1)
        best[row != V] = -1.0
        pos = int(best.argmax())
        row[pos] = token[pos]
    return tuple(row[len(prompt):].tolist())


def test_greedy_decode_is_the_confidence_sampler_and_a_naive_loop():
    model, ps = tiny("mdm"), prompts()
    requests = [(p, [0] * (2 + i % 5)) for i, p in enumerate(ps)]
    decoded = [g.decoded for g in mdm_greedy_decode(model, requests, max_batch=3)]
    assert decoded == [naive_greedy(model, p, len(c)) for p, c in requests]
    sampled = [tuple(generate_mdm(model, [p], len(c), steps=len(c), generator=gen(), sampler="confidence")[0])
               for p, c in requests]
    assert decoded == sampled
    guided = [g.decoded for g in mdm_greedy_decode(model, requests, cfg_scale=0.5)]
    assert guided == [tuple(generate_mdm(model, [p], len(c), steps=len(c), generator=gen(), sampler="confidence",
                                         cfg_scale=0.5)[0]) for p, c in requests]


def test_infill_keeps_fixed_tokens_fills_blanks_and_guides_on_all_of_them():
    model, ps = Counting(tiny("mdm")), prompts()
    templates = [p + [None, None, 7, None] + p + [7] for p in ps]
    filled = infill_mdm(model, templates, steps=3, generator=gen(), sampler="confidence", cfg_scale=0.5)
    for template, row in zip(templates, filled):
        assert len(row) == len(template) and all(0 <= t < V for t in row)
        assert all(t == f for t, f in zip(template, row) if t is not None)
    first = model.calls[0]
    half = len(first) // 2
    assert (first[:half, -1] == 7).all() and (first[half:] == V).all()  # unconditional: every fixed token masked
    # infilling at the end is generation: the same tokens (greedy, so the noise keys do not matter)
    assert [row[len(p):] for p, row in zip(ps, infill_mdm(tiny("mdm"), [p + [None] * 6 for p in ps], steps=6,
                                                           generator=gen(), sampler="confidence"))] == \
        generate_mdm(tiny("mdm"), ps, 6, steps=6, generator=gen(), sampler="confidence")
    with pytest.raises(ValueError, match="at least one blank"):
        infill_mdm(tiny("mdm"), [[1, 2]], steps=1, generator=gen(), sampler="confidence")
    with pytest.raises(ValueError, match="steps must equal length=2"):
        infill_mdm(tiny("mdm"), [[1, None, None]], steps=3, generator=gen(), sampler="first_hitting")


# ---------------------------------------------------------------------------------------------
# MDM: laws on an enumerable joint

T, VT, P = 3, 3, 10  # generated positions, toy vocabulary, prompt length (3^10 distinct prompts)
OUTCOMES = torch.tensor(list(itertools.product(range(VT), repeat=T)))  # (27, T)


def toy_joint():
    """Strongly dependent: 70% on x0 = x1 = x2, the rest spread at random over all 27 outcomes."""
    probs = torch.rand(len(OUTCOMES), generator=gen(11), dtype=torch.float64) ** 2 + 0.02
    diagonal = (OUTCOMES == OUTCOMES[:, :1]).all(1).double()
    return 0.7 * diagonal / diagonal.sum() + 0.3 * probs / probs.sum()  # (27,)


class Oracle(nn.Module):
    """The exact denoiser of `toy_joint` on the last T positions; the prompt is ignored.

    Logits at a masked position are log p(x_i = v | the unmasked generated positions).
    """

    def __init__(self, joint):
        super().__init__()
        self.cfg = ModelConfig(n_layer=1, n_head=1, d_model=2, d_ffn=2, vocab_size=VT, context=P + T)
        self.joint = joint

    def forward(self, tokens):
        noisy = tokens[:, -T:]  # (R, T)
        fits = ((noisy[:, None] == VT) | (noisy[:, None] == OUTCOMES[None])).all(-1)  # (R, 27)
        marginals = torch.einsum("rk,ktv->rtv", fits * self.joint, F.one_hot(OUTCOMES, VT).double())
        logits = torch.zeros(len(tokens), tokens.shape[1], VT, dtype=torch.float64)
        logits[:, -T:] = marginals.clamp_min(1e-300).log()  # (R, T, V)
        return logits


def toy_samples(sampler, steps, n=20000):
    """Counts (27,) of n draws, one per distinct prompt (equal prompts would share their noise)."""
    digits = VT ** torch.arange(P)
    ps = (torch.arange(n)[:, None] // digits % VT).tolist()  # (n, P)
    rows = generate_mdm(Oracle(toy_joint()), ps, T, steps=steps, generator=gen(0), sampler=sampler,
                        temperature=1.0, max_batch=n)
    index = (torch.tensor(rows) * VT ** torch.arange(T - 1, -1, -1)).sum(1)  # (n,): base-3 code = OUTCOMES row
    return torch.bincount(index, minlength=len(OUTCOMES)).double()


def chi2_p(counts, law):
    return chisquare(counts.numpy(), (law * counts.sum()).numpy()).pvalue


def test_first_hitting_samples_the_joint():
    assert chi2_p(toy_samples("first_hitting", T), toy_joint()) > 1e-3


def test_one_step_ancestral_samples_the_product_of_marginals_not_the_joint():
    """Negative control: with one step every token is drawn at once, independently."""
    counts, joint = toy_samples("ancestral", 1), toy_joint()
    assert chi2_p(counts, joint) < 1e-6
    marginals = [torch.zeros(VT, dtype=torch.float64).index_add_(0, OUTCOMES[:, i], joint) for i in range(T)]
    product = marginals[0][OUTCOMES[:, 0]] * marginals[1][OUTCOMES[:, 1]] * marginals[2][OUTCOMES[:, 2]]
    assert chi2_p(counts, product) > 1e-3


def two_step_ancestral_law(joint):
    """Exact law of ancestral sampling with T = 2: each position revealed at step 1 w.p. 1/2, drawn
    from its marginal; the rest drawn at step 2, independently, given the revealed ones."""
    law = torch.zeros_like(joint)
    for first in itertools.product((False, True), repeat=T):
        shown = [i for i in range(T) if first[i]]
        for k, x in enumerate(OUTCOMES.tolist()):
            prob = 1.0 / 2 ** T
            for i in range(T):
                given = shown if i not in shown else []  # step-1 tokens see nothing generated
                match = torch.ones(len(OUTCOMES), dtype=torch.bool)
                for g in given:
                    match &= OUTCOMES[:, g] == x[g]
                prob *= float(joint[match & (OUTCOMES[:, i] == x[i])].sum() / joint[match].sum())
            law[k] += prob
    return law


def test_two_step_ancestral_matches_its_exact_law():
    counts, joint = toy_samples("ancestral", 2), toy_joint()
    law = two_step_ancestral_law(joint)
    assert abs(float(law.sum()) - 1) < 1e-12
    assert chi2_p(counts, law) > 1e-3
    assert chi2_p(counts, joint) < 1e-6  # two steps are still visibly not the joint


def test_first_hitting_infill_samples_the_conditional_given_a_fixed_middle_token():
    digits = VT ** torch.arange(P)
    n, fixed = 20000, 1
    templates = [row + [None, fixed, None] for row in (torch.arange(n)[:, None] // digits % VT).tolist()]
    rows = torch.tensor(infill_mdm(Oracle(toy_joint()), templates, steps=2, generator=gen(0),
                                   sampler="first_hitting", temperature=1.0, max_batch=n))[:, -T:]  # (n, T)
    assert (rows[:, 1] == fixed).all()
    index = (rows * VT ** torch.arange(T - 1, -1, -1)).sum(1)
    counts = torch.bincount(index, minlength=len(OUTCOMES)).double()
    joint = toy_joint()
    conditional = torch.where(OUTCOMES[:, 1] == fixed, joint, 0.0)
    keep = conditional > 0
    assert counts[~keep].sum() == 0
    assert chi2_p(counts[keep], conditional[keep] / conditional.sum()) > 1e-3
