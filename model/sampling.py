"""Generation: the ARM token by token (KV cache) and the MDM's reverse process (PAPER.md section 6).

Every sampler takes a model and an explicit `torch.Generator`, and every row gets its own noise:
one draw of the caller's generator, hashed with the row's prompt tokens, seeds a per-row
generator (`model.requests.request_generator`). A row's output therefore never depends on the
other rows, their order, the batch size or how prompts are grouped; two rows with the same prompt
get the same output in one call (draw again with another generator for more samples).

Temperature 0 is argmax; temperature > 0 is Gumbel-max with float64 noise, drawn only where a
token is actually chosen. Outputs stop right after the first EOS, the EOS included, so a finished
sequence can be told from one cut by the length budget.

MDM samplers (`MDM_SAMPLERS`), all never re-masking a revealed token:
- `ancestral`: t goes 1 -> 0 in equal steps; from t to s each masked token is revealed with
  probability 1 - s/t (all at the last step), its value drawn from the (guided) categorical.
- `confidence` (MaskGIT): a candidate at every masked position; each row reveals its k most
  confident ones (confidence: the candidate's untempered probability), k = ceil(masked / steps
  left): at least one per step, all by the last (`schedule="paper"`: the authors' floor rule).
- `first_hitting`: one uniformly chosen masked position per pass, its value drawn: the exact
  reverse process of a time-independent MDM, one pass per token (`steps` must equal `length`).
Semi-autoregressive blocks fill the generated span left to right, steps split evenly.
`infill_mdm` fills blanks anywhere between fixed tokens, and LAMBADA's greedy decoding
(`model.likelihood.mdm_greedy_decode`) is the confidence sampler at temperature 0: all three run
`reverse_process`.

Exact speed-ups, both on by default, each tested token for token against the plain path and timed
by benchmarks/sampler_speedups.py. `reuse_unchanged`: the MDM has no time input, so a row whose canvas did not change
since its last forward pass would get the same logits again; it keeps them and only the rows that
changed go through the network (with CFG both halves are kept, as the guided mix). Every row still
draws its noise for every step, so the random streams stay aligned and the tokens are identical to
the plain path's (as far as the network is batch-invariant: the "8 batches of 1" property). This
saves ancestral sampling's steps that reveal nothing, many when steps exceed the length, and the
paper schedule's empty steps. `head_at_masked`: only masked positions of the current block are
ever read, so the output head (d x V per position, a large share of a small model) runs there only;
its matmul has another shape than the full pass, so it is exact as far as that matmul rounds each
row alike (it does on this CPU: the tests; a GPU library may pick other kernels per shape).
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import nn

from model.guidance import guidance_cost, guided_logits
from model.requests import model_device, request_generator

MDM_SAMPLERS = ("ancestral", "confidence", "first_hitting")
"""The MDM's reverse-process samplers, by `generate_mdm`'s `sampler` name."""


# ---------------------------------------------------------------------------------------------
# Shared pieces: devices, grouping, per-row noise, token draws, EOS truncation.

def _length_groups(prompts: Sequence[Sequence[int]], max_batch: int) -> list[list[int]]:
    """Indices of prompts of equal length, in batches of at most `max_batch`: no padding needed."""
    if max_batch <= 0:
        raise ValueError(f"max_batch must be positive, got {max_batch}")
    groups: dict[int, list[int]] = defaultdict(list)
    for i, prompt in enumerate(prompts):
        groups[len(prompt)].append(i)
    return [g[s:s + max_batch] for g in groups.values() for s in range(0, len(g), max_batch)]


def _check_prompts(prompts: Sequence[Sequence[int]], vocab_size: int) -> None:
    for prompt in prompts:
        if any(not 0 <= int(t) < vocab_size for t in prompt):
            raise ValueError(f"prompt token ids must lie in [0, {vocab_size}) (no [MASK] in a prompt)")


def _check_head(logits: torch.Tensor, vocab_size: int) -> None:
    """The head has exactly vocab_size outputs, so [MASK] (id vocab_size) can never be drawn."""
    if logits.shape[-1] != vocab_size:
        raise ValueError(f"the model returns {logits.shape[-1]} logits per position, expected vocab_size={vocab_size}")


def _row_generators(prompts: Sequence[Sequence[int]], generator: torch.Generator,
                    device: torch.device) -> list[torch.Generator]:
    """One generator per prompt on the model's device, from one draw of `generator` and its tokens."""
    seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
    return [torch.Generator(device).manual_seed(request_generator(p, (), seed).initial_seed()) for p in prompts]


def _gumbel(gen: torch.Generator, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    u = torch.rand(shape, generator=gen, dtype=torch.float64, device=device)
    return -torch.log(-torch.log(u))  # u = 0 gives -inf: that token simply loses


def _draw_tokens(logits: torch.Tensor, where: torch.Tensor, gens: Sequence[torch.Generator],
                 temperature: float) -> torch.Tensor:
    """A token (B, n) at every `where` (B, n) position of logits (B, n, V); 0 elsewhere.

    Each row's Gumbel noise comes from its own generator and covers only its `where` positions,
    so how much noise a row consumes depends on that row alone.
    """
    tokens = torch.zeros(where.shape, dtype=torch.long, device=logits.device)  # (B, n)
    if temperature == 0:
        tokens[where] = logits[where].argmax(-1)  # only the positions asked for: the rest is never read
        return tokens
    for b, gen in enumerate(gens):
        idx = where[b].nonzero().squeeze(1)  # (r,)
        if idx.numel():
            scores = logits[b, idx].double() / temperature  # (r, V)
            tokens[b, idx] = (scores + _gumbel(gen, tuple(scores.shape), logits.device)).argmax(-1)
    return tokens


def _row_uniforms(gens: Sequence[torch.Generator], n: int, device: torch.device) -> torch.Tensor:
    """(B, n) uniforms, row b from gens[b]."""
    return torch.stack([torch.rand(n, generator=g, dtype=torch.float64, device=device) for g in gens])


def _truncate(tokens: list[int], eos_id: int | None) -> list[int]:
    if eos_id is not None and eos_id in tokens:
        return tokens[:tokens.index(eos_id) + 1]
    return tokens


def _check_temperature(temperature: float) -> None:
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be finite and >= 0, got {temperature}")


# ---------------------------------------------------------------------------------------------
# ARM: token by token, with or without a KV cache.

def _filter_logits(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """logits (B, V) with everything outside the top-k / the nucleus of the tempered distribution
    set to -inf (ties at the k-th logit kept)."""
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p is not None:
        probs = (logits.double() / temperature).softmax(-1)  # (B, V)
        sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # (B, V): mass strictly above each token
        drop = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, before >= top_p)
        logits = logits.masked_fill(drop, -math.inf)
    return logits


@torch.no_grad()
def generate_arm(model: nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
                 generator: torch.Generator, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, kv_cache: bool = True, eos_id: int | None = None,
                 max_batch: int = 64) -> list[list[int]]:
    """Up to `max_new_tokens` tokens after each (non-empty) prompt, stopping after an EOS (kept).

    With `kv_cache` each step feeds only the new token (`Transformer.forward_cached`); without it
    each step runs the whole sequence, the reference the cache is tested against (same tokens).
    top_k / top_p filter the (tempered) distribution; they do nothing at temperature 0.
    """
    cfg = model.cfg
    if not cfg.causal:
        raise ValueError("generate_arm needs a causal model (family 'arm')")
    _check_temperature(temperature)
    if top_k is not None and top_k <= 0:
        raise ValueError(f"top_k must be positive, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("the ARM needs a non-empty prompt (at least a BOS) to predict the first token")
    _check_prompts(prompts, cfg.vocab_size)
    device, out = model_device(model), [[] for _ in prompts]
    gens = _row_generators(prompts, generator, device)
    for group in _length_groups(prompts, max_batch):
        tokens = torch.tensor([[int(t) for t in prompts[i]] for i in group], device=device)  # (B, P)
        rows = _arm_rows(model, tokens, [gens[i] for i in group], max_new_tokens, temperature,
                         top_k, top_p, kv_cache, eos_id)
        for i, row in zip(group, rows):
            out[i] = row
    return out


def _arm_rows(model: nn.Module, tokens: torch.Tensor, gens: Sequence[torch.Generator], max_new_tokens: int,
              temperature: float, top_k: int | None, top_p: float | None, kv_cache: bool,
              eos_id: int | None) -> list[list[int]]:
    """The ARM loop for one batch of equal-length prompts (B, P)."""
    cache = model.new_cache(tokens.shape[0]) if kv_cache and max_new_tokens > 0 else None
    done = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)  # (B,)
    new: list[torch.Tensor] = []
    step_input = tokens
    for step in range(max_new_tokens):
        logits = model.forward_cached(step_input, cache) if cache is not None else model(tokens)  # (B, n, V)
        _check_head(logits, model.cfg.vocab_size)
        last = logits[:, -1].to(torch.promote_types(logits.dtype, torch.float32))  # (B, V)
        if temperature > 0:
            last = _filter_logits(last, temperature, top_k, top_p)
        nxt = _draw_tokens(last[:, None], ~done[:, None], gens, temperature)[:, 0]  # (B,)
        new.append(nxt)
        if eos_id is not None:
            done |= nxt == eos_id
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        step_input, tokens = nxt[:, None], torch.cat([tokens, nxt[:, None]], 1)  # (B, 1), (B, P + step + 1)
    generated = torch.stack(new, 1).tolist() if new else [[] for _ in gens]
    return [_truncate(row, eos_id) for row in generated]


# ---------------------------------------------------------------------------------------------
# MDM: the reverse process on a canvas with [MASK] at the positions to fill, block by block.

Step = Callable[[torch.Tensor, torch.Tensor, int, int, Sequence[torch.Generator], float],
                tuple[torch.Tensor, torch.Tensor]]
"""(log-probs (B, n, V), masked (B, n), step j, steps S, row generators, temperature) ->
(reveal (B, n) bool, tokens (B, n)): one reverse step over a block of n positions. Log-probs are
only meaningful where masked; a step never reads them elsewhere except through argmax candidates
that the reveal mask then drops."""

SCHEDULES = ("linear", "paper")
"""How many tokens the confidence sampler reveals per step: `linear` = ceil(masked / steps left)
(at least one per step), `paper` = the authors' floor(masked * (1 - s/t)) = floor(masked / steps
left) (zero until the masked count reaches the steps left; kept for comparison)."""


def _ancestral_step(log_probs: torch.Tensor, masked: torch.Tensor, j: int, steps: int,
                    gens: Sequence[torch.Generator], temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    # t = 1 - j/S to s = 1 - (j+1)/S: reveal with probability 1 - s/t = 1/(S - j), 1 at the last step.
    reveal = masked & (_row_uniforms(gens, masked.shape[1], log_probs.device) < 1.0 / (steps - j))  # (B, n)
    return reveal, _draw_tokens(log_probs, reveal, gens, temperature)


def confidence_step(log_probs: torch.Tensor, masked: torch.Tensor, j: int, steps: int,
                     gens: Sequence[torch.Generator], temperature: float,
                     schedule: str = "linear") -> tuple[torch.Tensor, torch.Tensor]:
    tokens = _draw_tokens(log_probs, masked, gens, temperature)  # (B, n): a candidate everywhere masked
    # Confidence: the candidate's untempered log-probability, ranked among the masked positions only.
    picked = log_probs.gather(-1, tokens[..., None]).squeeze(-1)  # (B, n)
    confidence = torch.where(masked, picked.clamp_min(torch.finfo(picked.dtype).min), -math.inf)
    left = steps - j
    if schedule == "linear":  # per row: at least one per step, all by the last
        k = (masked.sum(1) + left - 1) // left  # (B,)
    else:  # the authors' floor rule: zero while fewer are masked than steps are left
        k = masked.sum(1) // left  # (B,)
    order = confidence.sort(dim=1, descending=True, stable=True).indices  # ties: leftmost first
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return masked & (rank < k[:, None]), tokens


def _first_hitting_step(log_probs: torch.Tensor, masked: torch.Tensor, j: int, steps: int,
                        gens: Sequence[torch.Generator], temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    # Uniform among the masked positions: the largest of iid uniforms over them.
    u = _row_uniforms(gens, masked.shape[1], log_probs.device).masked_fill(~masked, -1.0)  # (B, n)
    reveal = torch.zeros_like(masked).scatter_(1, u.argmax(1, keepdim=True), True) & masked
    return reveal, _draw_tokens(log_probs, reveal, gens, temperature)


_STEPS: dict[str, Step] = {"ancestral": _ancestral_step, "confidence": confidence_step,
                           "first_hitting": _first_hitting_step}


def _step_function(sampler: str, schedule: str) -> Step:
    if sampler not in _STEPS:
        raise ValueError(f"sampler must be one of {MDM_SAMPLERS}, got {sampler!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if sampler != "confidence":
        if schedule != "linear":
            raise ValueError(f"schedule={schedule!r} applies to the confidence sampler only, not {sampler!r}")
        return _STEPS[sampler]
    return partial(confidence_step, schedule=schedule)


def mdm_schedule(length: int, steps: int, block_length: int | None, sampler: str,
                 schedule: str = "linear") -> tuple[int, int]:
    """(block length, steps per block) of `generate_mdm`'s settings; a ValueError names a bad one."""
    _step_function(sampler, schedule)
    if length <= 0:
        raise ValueError(f"length must be positive, got {length}")
    block = length if block_length is None else block_length
    if block <= 0 or length % block:
        raise ValueError(f"block_length={block_length} must be a positive divisor of length={length}")
    n_blocks = length // block
    if sampler == "first_hitting" and steps != length:
        raise ValueError(f"first_hitting reveals one token per pass, so steps must equal length={length}, got {steps}")
    if steps <= 0 or steps % n_blocks:
        raise ValueError(f"steps={steps} must be a positive multiple of the number of blocks ({n_blocks})")
    if sampler == "confidence" and schedule == "linear" and steps // n_blocks > block:
        raise ValueError(f"confidence sampling reveals at least one token per step, so its {steps // n_blocks} "
                         f"steps per block cannot exceed the {block} masked tokens of a block")
    return block, steps // n_blocks


@torch.no_grad()
def generate_mdm(model: nn.Module, prompts: Sequence[Sequence[int]], length: int, *, steps: int,
                 generator: torch.Generator, sampler: str, temperature: float = 0.0, cfg_scale: float = 0.0,
                 block_length: int | None = None, eos_id: int | None = None, schedule: str = "linear",
                 max_batch: int = 64, reuse_unchanged: bool = True, head_at_masked: bool = True,
                 stats: dict | None = None) -> list[list[int]]:
    """`length` tokens after each prompt by an MDM reverse-process `sampler`, cut after an EOS (kept).

    The canvas is prompt + [MASK] * length; `block_length` (a divisor of length) fills it block by
    block, left to right, each with steps / n_blocks steps (None: one block). With cfg_scale > 0
    every pass is guided (model/guidance.py: the prompt replaced by [MASK] in the second half).
    `schedule` is the confidence sampler's reveal count (`SCHEDULES`).
    Exact speed-ups, each False for the plain reference: `reuse_unchanged` keeps a row's logits
    while its canvas is unchanged (module docstring); `head_at_masked` runs the output head only
    at the block's masked positions. `stats`, when given, receives `passes` (steps x rows: the
    reverse steps taken) and `forward_rows` (rows the network actually computed, CFG's
    unconditional rows included), so passes x guidance_cost - forward_rows is what reuse saved.
    """
    cfg = model.cfg
    if cfg.mask_id is None:
        raise ValueError("generate_mdm needs an MDM (a model with a [MASK] token)")
    _check_temperature(temperature)
    block, block_steps = mdm_schedule(length, steps, block_length, sampler, schedule)
    _check_prompts(prompts, cfg.vocab_size)
    device, out = model_device(model), [[] for _ in prompts]
    gens = _row_generators(prompts, generator, device)
    counts = {"passes": 0, "forward_rows": 0}
    for group in _length_groups(prompts, max(1, max_batch // guidance_cost(cfg_scale))):
        prompt = torch.tensor([[int(t) for t in prompts[i]] for i in group], dtype=torch.long,
                              device=device).view(len(group), -1)
        b, p = prompt.shape
        canvas = torch.cat([prompt, torch.full((b, length), cfg.mask_id, device=device)], 1)  # (B, P + length)
        todo = (torch.arange(p + length, device=device) >= p).expand(b, -1)  # (B, P + length)
        blocks = [slice(start, start + block) for start in range(p, p + length, block)]
        canvas = reverse_process(model, canvas, todo, ~todo, blocks, block_steps, _step_function(sampler, schedule),
                                 [gens[i] for i in group], temperature, cfg_scale, reuse_unchanged,
                                 head_at_masked, counts)
        for i, row in zip(group, canvas[:, p:].tolist()):
            out[i] = _truncate(row, eos_id)
    if stats is not None:
        stats.update(counts)
    return out


@torch.no_grad()
def infill_mdm(model: nn.Module, templates: Sequence[Sequence[int | None]], *, steps: int,
               generator: torch.Generator, sampler: str, temperature: float = 0.0, cfg_scale: float = 0.0,
               schedule: str = "linear", max_batch: int = 64) -> list[list[int]]:
    """Each template completed: its None positions filled by the reverse process, the rest kept.

    The fixed tokens may sit anywhere (before, between, after the blanks) and are the condition
    that CFG masks in its unconditional half. `steps` is checked against every template's number
    of blanks as `generate_mdm` checks it against `length`. Noise is per template, as there.
    """
    cfg = model.cfg
    if cfg.mask_id is None:
        raise ValueError("infill_mdm needs an MDM (a model with a [MASK] token)")
    _check_temperature(temperature)
    step = _step_function(sampler, schedule)
    _check_prompts([[t for t in template if t is not None] for template in templates], cfg.vocab_size)
    keys = [[cfg.mask_id if t is None else int(t) for t in template] for template in templates]
    for blanks in sorted({key.count(cfg.mask_id) for key in keys}):
        if blanks == 0:
            raise ValueError("every template needs at least one blank (None) to fill")
        mdm_schedule(blanks, steps, None, sampler, schedule)
    device, out = model_device(model), [[] for _ in templates]
    gens = _row_generators(keys, generator, device)
    for group in _length_groups(keys, max(1, max_batch // guidance_cost(cfg_scale))):
        canvas = torch.tensor([keys[i] for i in group], device=device)  # (B, L); [MASK] = vocab_size
        todo = canvas == cfg.mask_id
        canvas = reverse_process(model, canvas, todo, ~todo, [slice(0, canvas.shape[1])], steps, step,
                                 [gens[i] for i in group], temperature, cfg_scale, True, True,
                                 {"passes": 0, "forward_rows": 0})
        for i, row in zip(group, canvas.tolist()):
            out[i] = row
    return out


def _refresh(model: nn.Module, canvas: torch.Tensor, condition: torch.Tensor, cfg_scale: float,
             log_probs: torch.Tensor | None, changed: torch.Tensor, span: slice, at: torch.Tensor | None,
             counts: dict[str, int]) -> torch.Tensor:
    """Guided log-probs (B, n, V) over `span` of `canvas` (B, L), at least fp32: the `changed` (B,)
    rows recomputed as a sub-batch, the others kept from `log_probs` (their canvas, hence their
    logits, are what they were). With `at` (B, L), only those positions get the head; elsewhere
    the buffer holds zeros or stale values, which no step reads (steps read masked positions)."""
    idx = changed.nonzero().squeeze(1)  # (r,)
    b, n, vocab = canvas.shape[0], span.stop - span.start, model.cfg.vocab_size
    if log_probs is None:
        log_probs = canvas.new_zeros((b, n, vocab), dtype=torch.float32)
    if idx.numel():
        if at is None:
            logits = guided_logits(model, canvas[idx], condition[idx], cfg_scale)  # (r, L, V)
            _check_head(logits, vocab)
            fresh = logits[:, span].to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)
            if idx.numel() == b:  # every row recomputed: nothing to keep, nothing to copy
                return _counted(fresh, counts, b, b, cfg_scale)
            log_probs = log_probs.to(fresh.dtype)
            log_probs[idx] = fresh
        else:
            where = at[idx]  # (r, L)
            logits = guided_logits(model, canvas[idx], condition[idx], cfg_scale, at=where)  # (N, V)
            _check_head(logits, vocab)
            fresh = logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)
            log_probs = log_probs.to(fresh.dtype)
            rows = torch.zeros(b, dtype=torch.bool, device=canvas.device).index_fill_(0, idx, True)  # (B,)
            log_probs[rows[:, None] & at[:, span]] = fresh  # row-major, as `fresh` was gathered
    return _counted(log_probs, counts, b, idx.numel(), cfg_scale)


def _counted(log_probs: torch.Tensor, counts: dict[str, int], rows: int, computed: int,
             cfg_scale: float) -> torch.Tensor:
    counts["forward_rows"] += computed * guidance_cost(cfg_scale)
    counts["passes"] += rows
    return log_probs


def reverse_process(model: nn.Module, canvas: torch.Tensor, todo: torch.Tensor, condition: torch.Tensor,
                    blocks: Sequence[slice], block_steps: int, step: Step, gens: Sequence[torch.Generator],
                    temperature: float, cfg_scale: float, reuse_unchanged: bool, head_at_masked: bool,
                    counts: dict[str, int]) -> torch.Tensor:
    """The canvas (B, L) with its `todo` (B, L) positions filled, block by block; `block_steps`
    steps per block. [MASK] outside `todo` (mask padding) stays. `condition` (B, L) is what
    CFG masks. Shared by `generate_mdm`, `infill_mdm` and `likelihood.mdm_greedy_decode`."""
    canvas, pending = canvas.clone(), todo.clone()
    mask_id = model.cfg.mask_id
    canvas[todo] = mask_id
    for span in blocks:
        log_probs, changed = None, torch.ones(canvas.shape[0], dtype=torch.bool, device=canvas.device)  # (B,)
        for j in range(block_steps):
            masked = pending[:, span]  # (B, n)
            at = None
            if head_at_masked:
                at = torch.zeros_like(pending)
                at[:, span] = masked
            log_probs = _refresh(model, canvas, condition, cfg_scale, log_probs, changed, span, at, counts)
            reveal, tokens = step(log_probs, masked, j, block_steps, gens, temperature)
            canvas[:, span] = torch.where(reveal, tokens, canvas[:, span])
            pending[:, span] &= ~reveal
            # A reveal is the only way a canvas changes; without reuse every row counts as changed.
            # A row with nothing left to fill in this block needs no logits either.
            changed = (reveal.any(1) & pending[:, span].any(1)) if reuse_unchanged else torch.ones_like(changed)
    return canvas
