"""lm-eval models `smdm_mdm` and `smdm_arm`: our model artifacts behind lm-eval's `LM` interface.

lm-eval 0.4.13 has no plugin discovery, so these classes exist in its registry only in a process
that imported this module: run lm-eval through `python -m pipeline_steps.scoring.lm_eval_cli` (the
`smdm-lm-eval` console script), with local task YAMLs from `pipeline_steps.scoring.lm_eval_tasks`:

    smdm-lm-eval --model smdm_mdm --model_args pretrained=PATH,method=chain \\
        --tasks smdm_arc_easy --include_path DIR --device cpu --batch_size 64 --output_path OUT

`pretrained` is a model artifact folder (model/artifact.py, with its tokenizer.model); lm-eval
names its output folders after it. `--batch_size` is the number of model rows per forward pass
(the estimators' `max_batch`), not a number of requests: one MDM request is up to 1024 rows.

MDM model args: `method=mc|l_uniform|chain` (PAPER.md section 5), `mc_samples`, `mc_block`,
`mc_eps`, `target_stderr` (early stopping; refused for the mc estimator at mc_eps=0, which
`loglikelihood_rolling` uses unless method=l_uniform) and `seed`, each defaulting to
MonteCarloConfig's (the default profile's `evaluate.mc`; a block divides the samples; the paper:
1024 and 32), `cfg_scale=0`, `pad_to=` (mask padding, at most the model context),
`greedy=true` (false skips the greedy decode behind `is_greedy`, which multiple-choice metrics
never read).

`generate_until` (generation tasks) samples with model/sampling.py (gen_kwargs: lm_eval_generation.py). MDM model args:
`sampler=confidence|ancestral|first_hitting`, `steps` (default: one per generated token),
`block_length` (semi-autoregressive blocks, default one block), `temperature=0`; it reuses
`cfg_scale` (one guidance scale per model, likelihood and generation alike; `pad_to` is for
likelihoods only) and `seed`. ARM model args: `temperature=0`, `top_k`, `top_p`, `seed=0`. A
task's gen_kwargs `until`, `max_gen_toks` (default 256), `temperature` and `do_sample` (false:
temperature 0) override them; any other key is refused. The MDM fills exactly `max_gen_toks`
positions, the ARM stops there; both stop at EOS, and the text is cut before the first stop
string. See `generate_until` for how prompts are fitted to the context.

Tokenization is `encode_request`, the same rule as our own evaluator, so both score identical
token sequences.
"""
from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from functools import partial
from pathlib import Path

# Fill the registry first: registering into an empty one hides lm-eval's built-in models.
import lm_eval.models  # noqa: F401
import sentencepiece as spm
import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from model.artifact import TOKENIZER, load_artifact
from model.likelihood import (
    LIKELIHOOD_METHODS,
    MonteCarloConfig,
    Request,
    arm_greedy_match,
    arm_log_likelihood,
    check_early_stopping,
    mdm_chain_rule_log_likelihood,
    mdm_elbo_log_likelihood,
    mdm_greedy_decode,
    mdm_l_uniform_log_likelihood,
)
from model.sampling import MDM_SAMPLERS, generate_arm, generate_mdm, mdm_schedule
from pipeline_steps.scoring.evaluator import fit_context, split_request
from pipeline_steps.scoring.lm_eval_generation import (
    check_temperature,
    cut_at_stop,
    generation_settings,
    repeat_generator,
)

log = logging.getLogger(__name__)

METHODS = LIKELIHOOD_METHODS
REQUESTS_PER_CALL = 256
"""Requests handed to an estimator at once: it builds all of their rows of a Monte Carlo round
as one tensor (requests x block x length), which must stay small; results do not depend on it.
Generation takes prompts in chunks of this size too (a progress bar step)."""


# ---------------------------------------------------------------------------------------------
# Tokenization shared with pipeline_steps/scoring/evaluator.py.

def encode_request(sp: spm.SentencePieceProcessor, context: str, continuation: str,
                   max_tokens: int) -> tuple[Request, bool]:
    """((BOS + context tokens, continuation tokens), was cut): the evaluator's own rule
    (pipeline_steps/scoring/evaluator.py `split_request` + `fit_context`), so lm-eval and our evaluator
    score identical token sequences.

    `max_tokens` is the longest row a model scores: the MDM's context (or `pad_to`), the ARM's
    context + 1 (its input drops the last token).
    """
    if max_tokens < 2:
        raise ValueError(f"a row needs room for a prompt and a continuation token, got {max_tokens}")
    return fit_context(split_request(sp, context, continuation), max_tokens)


# ---------------------------------------------------------------------------------------------
# The shared adapter: lm-eval's requests in, estimator and sampler calls in chunks, floats and texts out.

def _rows_per_pass(batch_size: int | str | None) -> int:
    if batch_size is None:
        return 64
    if str(batch_size).startswith("auto"):
        raise ValueError("batch_size 'auto' is not supported: give the model rows per forward pass")
    rows = int(batch_size)
    if rows <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return rows


def _resolve_device(device: str | None) -> str:
    """lm-eval passes `cuda:0` unless told `--device cpu`; on a CPU-only machine that means the CPU."""
    if device is None or (device.startswith("cuda") and not torch.cuda.is_available()):
        if device is not None:
            log.warning("device %s requested but CUDA is not available: using the CPU", device)
        return "cpu"
    return device


class _ArtifactLM(LM):
    """One artifact folder, its tokenizer, and the chunked loops lm-eval's four calls share."""

    family = ""
    max_tokens: int
    """Longest prompt + continuation one request may have (see encode_request); set per family."""
    gen_tokens: int
    """Longest prompt + generation: the MDM's canvas, or the ARM's context + 1 (the last new token
    is never fed back)."""
    temperature: float = 0.0
    seed: int = 0

    def __init__(self, pretrained: str, batch_size: int | str | None = None,
                 max_batch_size: int | None = None, device: str | None = None) -> None:
        super().__init__()
        folder = Path(str(pretrained))  # lm-eval coerces an all-digit value to int
        self.model, self.config = load_artifact(folder, _resolve_device(device))
        if self.model.cfg.family != self.family:
            raise ValueError(f"{folder} holds a {self.model.cfg.family!r} model; "
                             f"smdm_{self.family} needs {self.family!r}")
        self.sp = spm.SentencePieceProcessor(model_file=str(folder / TOKENIZER))
        if self.sp.get_piece_size() > self.model.cfg.vocab_size:
            raise ValueError(f"{folder}: tokenizer has {self.sp.get_piece_size()} pieces, "
                             f"more than the model's vocabulary of {self.model.cfg.vocab_size}")
        self.rows = _rows_per_pass(batch_size)  # max_batch_size only caps lm-eval's 'auto': unused
        self.eos = self.sp.eos_id() if self.sp.eos_id() >= 0 else None
        self._device = next(self.model.parameters()).device

    def _score(self, requests: Sequence[Request]) -> list[tuple[float, bool]]:
        raise NotImplementedError

    def _window_logprobs(self, windows: Sequence[Request]) -> list[float]:
        raise NotImplementedError

    def _chunked(self, fn, requests: Sequence[Request], desc: str) -> list:
        """`fn` over chunks of requests sorted by length (equal lengths share forward passes)."""
        order = sorted(range(len(requests)), key=lambda i: len(requests[i][0]) + len(requests[i][1]))
        out = [None] * len(requests)
        starts = range(0, len(order), REQUESTS_PER_CALL)
        for start in tqdm(starts, desc=desc, disable=len(starts) <= 1):
            part = order[start:start + REQUESTS_PER_CALL]
            for i, value in zip(part, fn([requests[i] for i in part])):
                out[i] = value
        return out

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        fitted = [encode_request(self.sp, *req.args[:2], self.max_tokens) for req in requests]
        encoded = [request for request, _ in fitted]
        if cut := sum(was_cut for _, was_cut in fitted):
            log.warning("%d of %d requests were cut from the left to the model's %d tokens",
                        cut, len(fitted), self.max_tokens)
        results = self._chunked(self._score, encoded, f"smdm_{self.family} loglikelihood")
        for req, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", req.args, result)
        return results

    def loglikelihood_rolling(self, requests) -> list[float]:
        """log p(text) as a sum over lm-eval's disjoint rolling windows.

        The first window is conditioned on BOS alone, each later one on as many preceding tokens
        as fit `max_tokens`; every token is scored exactly once.
        """
        if self.sp.bos_id() < 0:
            raise ValueError("rolling log-likelihood needs a tokenizer with a BOS to condition on")
        windows, owner = [], []
        for k, req in enumerate(requests):
            tokens = self.sp.encode(req.args[0])
            for pair in get_rolling_token_windows(tokens, self.sp.bos_id(), self.max_tokens - 1, 1):
                windows.append(make_disjoint_window(pair))
                owner.append(k)
        totals = [0.0] * len(requests)  # an empty text has log-likelihood 0
        values = self._chunked(self._window_logprobs, windows, f"smdm_{self.family} rolling")
        for k, value in zip(owner, values):
            totals[k] += value
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def _generation_length(self, max_gen_toks: int) -> int:
        """Tokens to generate: max_gen_toks, capped to leave room for one prompt token."""
        return min(max_gen_toks, self.gen_tokens - 1)

    def _generate(self, prompts: list[list[int]], length: int, temperature: float,
                  generator: torch.Generator) -> list[list[int]]:
        raise NotImplementedError

    def _decode(self, tokens: list[int]) -> str:
        # ids past the tokenizer (a model vocabulary larger than it) have no text; EOS ends the row
        return self.sp.decode([t for t in tokens if t < self.sp.get_piece_size() and t != self.eos])

    def generate_until(self, requests) -> list[str]:
        """One text per (context, gen_kwargs) request, cut before its first stop string.

        The prompt is encode_request's (BOS + context tokens); prompt + generation must fit
        `gen_tokens`, so the generation is capped first and the prompt then cut from the left
        (fit_context's rule with the generated span as the continuation). Requests with equal
        length and temperature share sampler calls; rows never depend on their neighbours.
        """
        jobs: dict[tuple[int, float, int], list[int]] = defaultdict(list)  # (length, temperature, repeat)
        prompts, untils, seen, cut = [], [], Counter(), 0
        for k, req in enumerate(requests):
            context, gen_kwargs = req.args[:2]
            until, max_gen_toks, temperature = generation_settings(gen_kwargs, self.temperature)
            length = self._generation_length(max_gen_toks)
            span = [0] * length  # placeholders: fit_context only needs the generation's length
            (prompt, _), was_cut = fit_context((split_request(self.sp, context, "")[0], span), self.gen_tokens)
            repeat = seen[length, temperature, tuple(prompt)] if temperature > 0 else 0  # greedy: all alike
            seen[length, temperature, tuple(prompt)] += 1
            jobs[length, temperature, repeat].append(k)
            prompts.append(prompt)
            untils.append(until)
            cut += was_cut or length < max_gen_toks
        if cut:
            log.warning("%d of %d generation requests were cut to the model's %d tokens (max_gen_toks capped, "
                        "prompt cut from the left)", cut, len(requests), self.gen_tokens)
        texts = [""] * len(requests)
        for (length, temperature, repeat), members in jobs.items():
            generate = partial(self._generate_chunk, length=length, temperature=temperature, repeat=repeat)
            rows = self._chunked(generate, [(prompts[k], []) for k in members], f"smdm_{self.family} generate_until")
            for k, tokens in zip(members, rows):
                texts[k] = cut_at_stop(self._decode(tokens), untils[k])
        for req, text in zip(requests, texts):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return texts

    def _generate_chunk(self, requests: Sequence[Request], length: int, temperature: float,
                        repeat: int) -> list[list[int]]:
        return self._generate([prompt for prompt, _ in requests], length, temperature,
                              repeat_generator(self.seed, repeat))


# ---------------------------------------------------------------------------------------------
# The two registered models.

@register_model("smdm_mdm")
class SmdmMDM(_ArtifactLM):
    """A masked diffusion model: log p(c | prompt) by the chosen estimator (PAPER.md section 5).

    `loglikelihood_rolling` is an ELBO, a lower bound on log p(text), drawn with the Monte Carlo
    estimator (`l_uniform` when that is the method, else `mc`; the chain rule would cost a forward
    row per token). Monte Carlo noise is seeded by each request's tokens and `seed`, so a result
    does not depend on the batch, the order or which other requests lm-eval sends. Generation
    fills `max_gen_toks` masked positions by `sampler` in `steps` steps (default: one per token),
    guided by `cfg_scale`, seeded by `seed` and each prompt, equally independent of the batch.
    """

    family = "mdm"

    def __init__(self, pretrained: str, method: str = "mc", mc_samples: int | None = None,
                 mc_block: int | None = None, mc_eps: float | None = None,
                 target_stderr: float | None = None, seed: int | None = None, cfg_scale: float = 0.0,
                 pad_to: int | None = None, greedy: bool = True, sampler: str = "confidence",
                 steps: int | None = None, block_length: int | None = None, temperature: float = 0.0,
                 **lm_eval_args) -> None:
        super().__init__(pretrained, **lm_eval_args)
        if sampler not in MDM_SAMPLERS:
            raise ValueError(f"sampler must be one of {MDM_SAMPLERS}, got {sampler!r}")
        self.sampler, self.temperature = sampler, check_temperature(temperature)
        self.steps = None if steps is None else int(steps)
        self.block_length = None if block_length is None else int(block_length)
        self.gen_tokens = self.model.cfg.context  # pad_to is for likelihoods only
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        context = self.model.cfg.context
        if pad_to is not None and not 2 <= int(pad_to) <= context:
            raise ValueError(f"pad_to must be in [2, {context}] (the model context), got {pad_to}")
        if not 0 <= float(cfg_scale) < float("inf"):
            raise ValueError(f"cfg_scale must be finite and >= 0, got {cfg_scale}")
        self.method, self.cfg_scale, self.greedy = method, float(cfg_scale), bool(greedy)
        self.pad_to = None if pad_to is None else int(pad_to)
        self.max_tokens = self.pad_to or context
        default = MonteCarloConfig()
        samples = default.n_samples if mc_samples is None else int(mc_samples)
        self.mc = MonteCarloConfig(
            n_samples=samples,
            block_size=int(mc_block) if mc_block else math.gcd(samples, default.block_size),
            eps=default.eps if mc_eps is None else float(mc_eps),
            seed=default.seed if seed is None else int(seed),
            target_stderr=default.target_stderr if target_stderr is None else float(target_stderr))
        check_early_stopping("l_uniform" if method == "l_uniform" else "mc", self.mc)  # mc: rolling too
        self.seed = self.mc.seed  # one seed for Monte Carlo and sampling

    def _estimate(self, method: str, requests: Sequence[Request]) -> list[float]:
        common = dict(cfg_scale=self.cfg_scale, pad_to=self.pad_to, max_batch=self.rows)
        if method == "chain":
            estimates = mdm_chain_rule_log_likelihood(self.model, requests, **common)
        elif method == "l_uniform":
            estimates = mdm_l_uniform_log_likelihood(self.model, requests, self.mc, **common)
        else:
            estimates = mdm_elbo_log_likelihood(self.model, requests, self.mc, **common)
        return [e.logprob for e in estimates]

    def _score(self, requests: Sequence[Request]) -> list[tuple[float, bool]]:
        logprobs = self._estimate(self.method, requests)
        if not self.greedy:
            return [(lp, False) for lp in logprobs]
        decoded = mdm_greedy_decode(self.model, requests, cfg_scale=self.cfg_scale, pad_to=self.pad_to,
                                    max_batch=self.rows)
        return [(lp, g.correct) for lp, g in zip(logprobs, decoded)]

    def _window_logprobs(self, windows: Sequence[Request]) -> list[float]:
        return self._estimate("l_uniform" if self.method == "l_uniform" else "mc", windows)

    def _generation_length(self, max_gen_toks: int) -> int:
        """The capped length, in whole blocks where we capped it; checked against the schedule
        here, before any generation, with the model args named."""
        length = super()._generation_length(max_gen_toks)
        if self.block_length and length < max_gen_toks:
            length -= length % self.block_length
        try:
            mdm_schedule(length, self.steps or length, self.block_length, self.sampler)
        except ValueError as err:
            raise ValueError(f"smdm_mdm model args sampler={self.sampler}, steps={self.steps}, block_length="
                             f"{self.block_length} do not fit generating {length} tokens (max_gen_toks, at most "
                             f"what the context leaves): {err}") from None
        return length

    def _generate(self, prompts: list[list[int]], length: int, temperature: float,
                  generator: torch.Generator) -> list[list[int]]:
        return generate_mdm(self.model, prompts, length, steps=self.steps or length, generator=generator,
                            sampler=self.sampler, temperature=temperature, cfg_scale=self.cfg_scale,
                            block_length=self.block_length, eos_id=self.eos, max_batch=self.rows)


@register_model("smdm_arm")
class SmdmARM(_ArtifactLM):
    """An autoregressive model: exact log p(c | prompt) in one causal pass per request; generation
    token by token with a KV cache (`temperature`, `top_k`, `top_p`, `seed`)."""

    family = "arm"

    def __init__(self, pretrained: str, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int = 0, **lm_eval_args) -> None:
        super().__init__(pretrained, **lm_eval_args)
        self.max_tokens = self.gen_tokens = self.model.cfg.context + 1  # the input drops the last token
        if top_k is not None and int(top_k) <= 0:
            raise ValueError(f"top_k must be positive, got {top_k}")
        if top_p is not None and not 0 < float(top_p) <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        self.temperature, self.seed = check_temperature(temperature), int(seed)
        self.top_k = None if top_k is None else int(top_k)
        self.top_p = None if top_p is None else float(top_p)

    def _score(self, requests: Sequence[Request]) -> list[tuple[float, bool]]:
        logprobs = arm_log_likelihood(self.model, requests, max_batch=self.rows)
        greedy = arm_greedy_match(self.model, requests, max_batch=self.rows)
        return [(e.logprob, g.correct) for e, g in zip(logprobs, greedy)]

    def _window_logprobs(self, windows: Sequence[Request]) -> list[float]:
        return [e.logprob for e in arm_log_likelihood(self.model, windows, max_batch=self.rows)]

    def _generate(self, prompts: list[list[int]], length: int, temperature: float,
                  generator: torch.Generator) -> list[list[int]]:
        return generate_arm(self.model, prompts, length, generator=generator, temperature=temperature,
                            top_k=self.top_k, top_p=self.top_p, eos_id=self.eos, max_batch=self.rows)
