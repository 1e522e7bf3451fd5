"""Log-likelihood of a continuation c given a clean prompt (PAPER.md section 5).

A request is a pair (prompt token ids, continuation token ids). The MDM has three estimators of
log p(c | prompt), all batched over requests and all taking a CFG scale (model/guidance.py):
- `mdm_elbo_log_likelihood`: the Monte Carlo ELBO with t stratified in blocks (a lower bound),
- `mdm_l_uniform_log_likelihood`: the same ELBO drawn as "mask exactly l tokens", weight |c|/l,
- `mdm_chain_rule_log_likelihood`: left-to-right chain rule, one forward row per token,
plus `mdm_greedy_decode` for LAMBADA accuracy. The ARM gets the exact likelihood and its greedy
check. Cost is counted in forward rows (a CFG row counts twice).

A bidirectional model has no attention mask here, so requests are batched only with requests of
the same row length; `pad_to` right-pads every row with [MASK] ("mask padding", PAPER.md
Table 10), which also puts every request in one group. Pad positions are never scored.
Monte Carlo noise comes from a generator seeded by the request's own tokens, so an estimate does
not depend on which other requests share its batch, their order, or the batch size.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from model.guidance import guidance_cost, guided_log_probs
from model.requests import model_device, request_generator
from model.sampling import confidence_step, reverse_process

Request = tuple[Sequence[int], Sequence[int]]
"""(prompt token ids, continuation token ids)."""


LIKELIHOOD_METHODS = ("mc", "l_uniform", "chain")
"""MDM scores of a continuation: Monte Carlo ELBO, l-uniform ELBO, left-to-right chain rule."""


@dataclass(frozen=True)
class LikelihoodEstimate:
    """log p(c | prompt) of one request (or an ELBO of it) and what it cost."""

    logprob: float
    """The estimate, in nats."""
    stderr: float
    """Monte Carlo standard error; 0 for exact computations, nan after a single block."""
    n_samples: int
    """Monte Carlo samples drawn; 0 for exact computations."""
    forward_passes: int
    """Model rows evaluated, CFG's unconditional rows included."""


@dataclass(frozen=True)
class GreedyResult:
    """Greedy decode of a target (LAMBADA): did it reproduce the target exactly?"""

    correct: bool
    """The decoded tokens equal the target tokens."""
    decoded: tuple[int, ...]
    """The decoded continuation."""
    forward_passes: int
    """Model rows evaluated, CFG's unconditional rows included."""


@dataclass(frozen=True)
class MonteCarloConfig:
    """Sampling budget and noise of the Monte Carlo estimators (params.yaml `evaluate.mc`)."""

    n_samples: int = 16
    """Most samples per request (the authors use 1024; the paper profile too); a multiple of
    `block_size`."""
    block_size: int = 8
    """B: samples per block; t is stratified within a block with a fresh offset u per block."""
    eps: float = 0.0
    """t = eps + (1 - eps) s: the authors use 0 (exact ELBO, but the 1/t weight's variance is
    infinite); eps > 0 bounds it and slightly changes the bound. Unused by the l-uniform one."""
    target_stderr: float | None = None
    """Stop at the first block boundary where the standard error is at most this (None: never).
    Refused for the `mc` estimator at eps = 0 (see `check_early_stopping`): use `l_uniform`."""
    min_blocks: int = 4
    """Blocks drawn before early stopping may trigger (the stderr of 2-3 blocks is too noisy)."""
    seed: int = 0
    """Base seed, hashed with each request's tokens."""

    def __post_init__(self) -> None:
        if self.block_size <= 0 or self.n_samples <= 0 or self.n_samples % self.block_size:
            raise ValueError(f"n_samples={self.n_samples} must be a positive multiple of "
                             f"block_size={self.block_size}")
        if not 0 <= self.eps < 1:
            raise ValueError(f"eps must be in [0, 1), got {self.eps}")
        if self.target_stderr is not None and self.target_stderr <= 0:
            raise ValueError(f"target_stderr must be positive, got {self.target_stderr}")
        if self.min_blocks < 2:
            raise ValueError(f"min_blocks must be at least 2 (a stderr needs two), got {self.min_blocks}")


def check_early_stopping(method: str, mc: MonteCarloConfig) -> None:
    """Refuse `target_stderr` with the `mc` estimator at eps = 0: a biased, untrustworthy stop.

    At eps = 0 the 1/t weight has infinite variance: blocks that happened to miss the rare small-t
    samples (large negative values) have a small standard error AND an estimate that is too high,
    so stopping on the standard error picks them. Measured on the enumerable toy of
    tests/model/test_likelihood.py (3-token continuation, blocks of 8, target 0.3, 1000 seeds):
    +0.19 +- 0.01 nats of bias, 99% of requests stopping early, RMS error 0.45 > target; the
    l-uniform estimator under the same rule: +0.002 +- 0.006, RMS error 0.20. Sizing the sample
    from separate pilot blocks would be unbiased but misses the target 2.3x (RMS error), the
    pilot's standard error being as unreliable. (eps = 0.05 still gives +0.10; eps = 0.2, +0.01.)
    """
    if method == "mc" and mc.target_stderr is not None and mc.eps == 0:
        raise ValueError(f"target_stderr={mc.target_stderr} (early stopping) with method mc needs eps > 0: at "
                         "eps = 0 its 1/t weight has infinite variance and stopping on its standard error is "
                         "biased; use method l_uniform (the same ELBO with bounded weights) or no target_stderr")


# ---------------------------------------------------------------------------------------------
# Rows, groups and the guided forward pass shared by every MDM estimator.

def _require_mdm(model: nn.Module) -> int:
    if model.cfg.mask_id is None:
        raise ValueError("this estimator needs an MDM (a model with a [MASK] token)")
    return model.cfg.mask_id


def _row(request: Request, vocab_size: int, pad: int, pad_to: int | None) -> list[int]:
    """prompt + continuation, right-padded with `pad` up to `pad_to`; validates the request."""
    prompt, cont = request
    row = [int(t) for t in prompt] + [int(t) for t in cont]
    if not cont:
        raise ValueError("a request needs a non-empty continuation")
    if any(not 0 <= t < vocab_size for t in row):
        raise ValueError(f"token ids must lie in [0, {vocab_size})")
    if pad_to is not None:
        if pad_to < len(row):
            raise ValueError(f"pad_to={pad_to} is shorter than a request of {len(row)} tokens")
        row += [pad] * (pad_to - len(row))
    return row


def _length_groups(requests: Sequence[Request], pad_to: int | None) -> list[list[int]]:
    """Indices of requests grouped by row length (one group when padding)."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, (prompt, cont) in enumerate(requests):
        groups[pad_to or len(prompt) + len(cont)].append(i)
    return list(groups.values())


def _chunks(model: nn.Module, noisy: torch.Tensor, prompt_mask: torch.Tensor, cfg_scale: float,
            max_batch: int) -> Iterator[tuple[slice, torch.Tensor]]:
    """Guided log-probs of `noisy` (R, L) in slices of at most `max_batch` model rows."""
    rows = max(1, max_batch // guidance_cost(cfg_scale))
    for start in range(0, noisy.shape[0], rows):
        part = slice(start, start + rows)
        yield part, guided_log_probs(model, noisy[part], prompt_mask[part], cfg_scale)  # (r, L, V)


def _scored_sums(model: nn.Module, requests: Sequence[Request], masked: Sequence[torch.Tensor],
                 scored: Sequence[torch.Tensor], cfg_scale: float, pad_to: int | None,
                 max_batch: int) -> torch.Tensor:
    """Per row, the sum of log p(c_j | row) over the `scored` continuation positions.

    Request k (all of one row length) contributes masked[k].shape[0] rows; in each, continuation
    position j is [MASK] where masked[k][row, j]. Returns (sum_k R_k,) in float64.
    """
    mask_id, vocab = model.cfg.mask_id, model.cfg.vocab_size
    clean, hide, score, prompt = [], [], [], []
    for (p, c), m, s in zip(requests, masked, scored):
        base = torch.tensor(_row((p, c), vocab, mask_id, pad_to))  # (L,)
        rows, span = m.shape[0], slice(len(p), len(p) + len(c))
        clean.append(base.expand(rows, -1))  # (R_k, L)
        for out, bits in ((hide, m), (score, s)):
            full = torch.zeros(rows, base.numel(), dtype=torch.bool)  # (R_k, L)
            full[:, span] = bits
            out.append(full)
        prompt.append((torch.arange(base.numel()) < len(p)).expand(rows, -1))  # (R_k, L)
    clean, hide, score, prompt = (torch.cat(x).to(model_device(model)) for x in (clean, hide, score, prompt))
    noisy = torch.where(hide, torch.full_like(clean, mask_id), clean)  # (R, L); pads are [MASK] already
    targets = torch.where(clean == mask_id, torch.zeros_like(clean), clean)  # (R, L): pads never scored
    sums = torch.empty(clean.shape[0], dtype=torch.float64, device=clean.device)
    for part, log_probs in _chunks(model, noisy, prompt, cfg_scale, max_batch):
        picked = log_probs.gather(-1, targets[part, :, None]).squeeze(-1)  # (r, L)
        sums[part] = torch.where(score[part], picked.double(), 0.0).sum(1)
    return sums.cpu()


# ---------------------------------------------------------------------------------------------
# Monte Carlo estimators: blocks of samples, block means as iid draws for the standard error.

Draw = Callable[[torch.Generator, int, int], tuple[torch.Tensor, torch.Tensor]]


def _stratified_t_block(eps: float) -> Draw:
    """t_j = (u + j/B) mod 1, mask each continuation token with prob t, weight 1/t."""
    def draw(gen: torch.Generator, n: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        u = torch.rand((), generator=gen, dtype=torch.float64)
        t = eps + (1 - eps) * ((u + torch.arange(block, dtype=torch.float64) / block) % 1.0)  # (B,)
        masked = torch.rand(block, n, generator=gen, dtype=torch.float64) < t[:, None]  # (B, n)
        return masked, 1.0 / t
    return draw


def _l_uniform_block(gen: torch.Generator, n: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """l ~ U{1..n}, mask exactly l of the n continuation tokens uniformly, weight n / l."""
    l = torch.randint(1, n + 1, (block,), generator=gen)  # (B,)
    ranks = torch.rand(block, n, generator=gen).argsort(1).argsort(1)  # (B, n): a random permutation
    return ranks < l[:, None], n / l.double()  # (B, n), (B,)


def _stderr(block_means: list[float]) -> float:
    if len(block_means) < 2:
        return float("nan")
    return torch.tensor(block_means, dtype=torch.float64).std().item() / math.sqrt(len(block_means))


def _finished(block_means: list[float], mc: MonteCarloConfig) -> bool:
    if len(block_means) * mc.block_size >= mc.n_samples:
        return True
    if mc.target_stderr is None or len(block_means) < mc.min_blocks:
        return False
    return _stderr(block_means) <= mc.target_stderr


@torch.no_grad()
def _monte_carlo(model: nn.Module, requests: Sequence[Request], mc: MonteCarloConfig, draw: Draw,
                 cfg_scale: float, pad_to: int | None, max_batch: int) -> list[LikelihoodEstimate]:
    """Draw blocks for every unfinished request of a length group, one batched round at a time.

    A sample's value is -(weight * sum of masked-token CE); each request's draws come only from
    its own generator, in block order, so batching never changes which masks it sees.
    """
    _require_mdm(model)
    results: list[LikelihoodEstimate | None] = [None] * len(requests)
    for group in _length_groups(requests, pad_to):
        gens = {i: request_generator(*requests[i], mc.seed) for i in group}
        blocks: dict[int, list[float]] = {i: [] for i in group}
        active = group
        while active:
            draws = [draw(gens[i], len(requests[i][1]), mc.block_size) for i in active]
            masks = [m for m, _ in draws]
            sums = _scored_sums(model, [requests[i] for i in active], masks, masks, cfg_scale,
                                pad_to, max_batch)  # (A * B,)
            values = (torch.cat([w for _, w in draws]) * sums).view(len(active), -1)  # (A, B)
            any_masked = torch.cat([m.any(-1) for m in masks]).view(len(active), -1)  # (A, B)
            values = torch.where(any_masked, values, 0.0)  # nothing masked: 0, not 0 * (1/0)
            for i, row in zip(active, values):
                blocks[i].append(row.mean().item())
            active = [i for i in active if not _finished(blocks[i], mc)]
        for i in group:
            n = len(blocks[i]) * mc.block_size
            results[i] = LikelihoodEstimate(sum(blocks[i]) / len(blocks[i]), _stderr(blocks[i]), n,
                                            n * guidance_cost(cfg_scale))
    return results


def mdm_elbo_log_likelihood(model: nn.Module, requests: Sequence[Request],
                            mc: MonteCarloConfig = MonteCarloConfig(), *, cfg_scale: float = 0.0,
                            pad_to: int | None = None, max_batch: int = 64) -> list[LikelihoodEstimate]:
    """Monte Carlo ELBO of log p(c | prompt): mask continuation tokens with prob t, weight 1/t.

    t is stratified within each block (a fresh u per block), so any whole number of blocks covers
    [0, 1) evenly and stopping at a block boundary is not biased towards a range of t (one u for
    all samples would be). The standard error treats block means as iid, which is what they are.
    Caution: with eps = 0 (the authors' choice) the 1/t weight has infinite variance, so standard
    errors from few blocks run low; early stopping on them (`target_stderr`) is refused there
    (`check_early_stopping`), and with a small eps > 0 it is still biased upwards.
    """
    check_early_stopping("mc", mc)
    return _monte_carlo(model, requests, mc, _stratified_t_block(mc.eps), cfg_scale, pad_to, max_batch)


def mdm_l_uniform_log_likelihood(model: nn.Module, requests: Sequence[Request],
                                 mc: MonteCarloConfig = MonteCarloConfig(), *, cfg_scale: float = 0.0,
                                 pad_to: int | None = None, max_batch: int = 64) -> list[LikelihoodEstimate]:
    """The same ELBO drawn as l ~ U{1..|c|} masked tokens with weight |c| / l (LLaDA's estimator).

    Its weights are bounded by |c|, so its standard errors are trustworthy even with few blocks.
    """
    return _monte_carlo(model, requests, mc, _l_uniform_block, cfg_scale, pad_to, max_batch)


# ---------------------------------------------------------------------------------------------
# Deterministic MDM scoring: chain rule and greedy decoding.

@torch.no_grad()
def mdm_chain_rule_log_likelihood(model: nn.Module, requests: Sequence[Request], *, cfg_scale: float = 0.0,
                                  pad_to: int | None = None, max_batch: int = 64) -> list[LikelihoodEstimate]:
    """sum_i log p(c_i | prompt, c_<i, [MASK] for the rest): |c| rows per request, all batched.

    Exact for a model whose conditionals are consistent; for a trained MDM it is one of the
    |c|! orders the ELBO averages over, the natural left-to-right one.
    """
    _require_mdm(model)
    results: list[LikelihoodEstimate | None] = [None] * len(requests)
    for group in _length_groups(requests, pad_to):
        sizes = [len(requests[i][1]) for i in group]
        steps = [torch.arange(n) for n in sizes]
        masked = [s[None, :] >= s[:, None] for s in steps]  # (n, n): row i hides c_i..c_{n-1}
        scored = [s[None, :] == s[:, None] for s in steps]  # (n, n): row i scores c_i
        sums = _scored_sums(model, [requests[i] for i in group], masked, scored, cfg_scale, pad_to, max_batch)
        for i, part in zip(group, sums.split(sizes)):
            results[i] = LikelihoodEstimate(part.sum().item(), 0.0, 0, len(part) * guidance_cost(cfg_scale))
    return results


@torch.no_grad()
def mdm_greedy_decode(model: nn.Module, requests: Sequence[Request], *, cfg_scale: float = 0.0,
                      pad_to: int | None = None, max_batch: int = 64) -> list[GreedyResult]:
    """LAMBADA decoding: the confidence sampler at temperature 0 (model/sampling.py), one token per step.

    From a fully masked target, each step unmasks the position whose argmax has the largest
    (guided) probability and gives it that argmax; ties go to the leftmost position. The steps are
    the longest target of a batch, so each row reveals exactly one token per step until it is
    done (shorter targets finish early and cost nothing more). One forward row per target token.
    """
    mask_id = _require_mdm(model)
    device, results = model_device(model), [None] * len(requests)
    counts = {"passes": 0, "forward_rows": 0}
    for group in _length_groups(requests, pad_to):
        for start in range(0, len(group), max(1, max_batch // guidance_cost(cfg_scale))):
            part = group[start:start + max(1, max_batch // guidance_cost(cfg_scale))]
            rows = torch.tensor([_row(requests[i], model.cfg.vocab_size, mask_id, pad_to) for i in part])
            todo = torch.zeros_like(rows, dtype=torch.bool)  # (R, L): the target positions
            for k, i in enumerate(part):
                p, c = len(requests[i][0]), len(requests[i][1])
                todo[k, p:p + c] = True
            prompt = torch.arange(rows.shape[1]) < torch.tensor([len(requests[i][0]) for i in part])[:, None]
            steps = int(todo.sum(1).max())
            rows = reverse_process(model, rows.to(device), todo.to(device), prompt.to(device),
                                   [slice(0, rows.shape[1])], steps, confidence_step, [], 0.0, cfg_scale,
                                   True, True, counts)
            for k, i in enumerate(part):
                p, c = len(requests[i][0]), len(requests[i][1])
                decoded = tuple(rows[k, p:p + c].tolist())
                results[i] = GreedyResult(decoded == tuple(int(t) for t in requests[i][1]), decoded,
                                          c * guidance_cost(cfg_scale))
    return results


# ---------------------------------------------------------------------------------------------
# ARM: one causal pass is exact.

def _arm_scores(model: nn.Module, requests: Sequence[Request],
                max_batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per request, log p(c_i | prompt, c_<i) (n,) and the argmax prediction (n,) at each c_i.

    Rows of similar length share a batch, right-padded with token 0: a causal model's outputs at
    a position never see what follows, so the padding cannot change any scored position.
    """
    if model.cfg.family != "arm":
        raise ValueError("the exact likelihood needs a causal model (family 'arm')")
    order = sorted(range(len(requests)), key=lambda i: len(requests[i][0]) + len(requests[i][1]))
    out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(requests)
    for start in range(0, len(order), max_batch):
        chunk = order[start:start + max_batch]
        rows = [_row(requests[i], model.cfg.vocab_size, 0, None) for i in chunk]
        if any(len(requests[i][0]) == 0 for i in chunk):
            raise ValueError("the ARM needs a non-empty prompt (at least a BOS) to predict c_0")
        width = max(len(r) for r in rows)
        tokens = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=model_device(model))  # (R, W)
        logits = model(tokens[:, :-1])  # (R, W - 1, V)
        log_probs = logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)
        for k, i in enumerate(chunk):
            p, c = len(requests[i][0]), len(requests[i][1])
            span = log_probs[k, p - 1:p + c - 1]  # (n, V): predictions of c_0..c_{n-1}
            target = tokens[k, p:p + c]  # (n,)
            out[i] = (span.gather(-1, target[:, None]).squeeze(-1).double().cpu(), span.argmax(-1).cpu())
    return out


@torch.no_grad()
def arm_log_likelihood(model: nn.Module, requests: Sequence[Request], *,
                       max_batch: int = 64) -> list[LikelihoodEstimate]:
    """Exact log p(c | prompt) of a causal model: one forward row per request."""
    scores = _arm_scores(model, requests, max_batch)
    return [LikelihoodEstimate(lp.sum().item(), 0.0, 0, 1) for lp, _ in scores]


@torch.no_grad()
def arm_greedy_match(model: nn.Module, requests: Sequence[Request], *,
                     max_batch: int = 64) -> list[GreedyResult]:
    """LAMBADA for the ARM: correct iff the argmax at every target position is the target token."""
    results = []
    for (_, cont), (_, pred) in zip(requests, _arm_scores(model, requests, max_batch)):
        decoded = tuple(pred.tolist())
        results.append(GreedyResult(decoded == tuple(int(t) for t in cont), decoded, 1))
    return results
