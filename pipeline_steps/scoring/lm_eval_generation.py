"""lm-eval's generation requests for the smdm models: gen_kwargs, stop strings, repeated requests.

The settings lm-eval hands `generate_until` (`until`, `max_gen_toks`, `temperature`, `do_sample`)
read here, so that pipeline_steps/scoring/lm_eval_models.py keeps only the adapter.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

GEN_KWARGS = ("until", "max_gen_toks", "temperature", "do_sample")
"""The lm-eval gen_kwargs that `generate_until` understands; any other key is an error."""
DEFAULT_MAX_GEN_TOKS = 256
"""Tokens generated when a task's gen_kwargs give no `max_gen_toks` (lm-eval's default)."""


def check_temperature(value: float) -> float:
    if not (math.isfinite(float(value)) and float(value) >= 0):
        raise ValueError(f"temperature must be finite and >= 0 (0 is greedy), got {value}")
    return float(value)


def generation_settings(gen_kwargs: dict, temperature: float) -> tuple[list[str], int, float]:
    """(stop strings, max_gen_toks, temperature) of one request's gen_kwargs; `temperature` is the
    model arg, which the task's own temperature overrides; do_sample=False is greedy, do_sample=True
    without any temperature above 0 samples at 1."""
    unknown = sorted(set(gen_kwargs) - set(GEN_KWARGS))
    if unknown:
        raise ValueError(f"gen_kwargs {unknown[0]!r} is not supported by smdm models; expected only {', '.join(GEN_KWARGS)}")
    until = gen_kwargs.get("until") or []
    until = [until] if isinstance(until, str) else list(until)
    max_gen_toks = int(gen_kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
    if max_gen_toks <= 0:
        raise ValueError(f"gen_kwargs max_gen_toks must be positive, got {max_gen_toks}")
    if gen_kwargs.get("do_sample") is False:
        return until, max_gen_toks, 0.0
    if gen_kwargs.get("do_sample") is True and "temperature" not in gen_kwargs and temperature == 0:
        temperature = 1.0  # a task that asks to sample, with no temperature of its own: the model's distribution
    return until, max_gen_toks, check_temperature(gen_kwargs.get("temperature", temperature))


def cut_at_stop(text: str, until: Sequence[str]) -> str:
    """`text` up to the first occurrence of any non-empty stop string."""
    ends = [i for stop in until if stop and (i := text.find(stop)) >= 0]
    return text[:min(ends)] if ends else text


def repeat_generator(seed: int, repeat: int) -> torch.Generator:
    """A fresh generator for the `repeat`-th copy of one sampled request (lm-eval's `repeats`).

    The samplers seed each row from one draw of the generator and the row's prompt, so identical
    prompts in one call come out identical; copy k skips k draws to get a sample of its own.
    Fresh per call, so a text depends on its prompt, settings, seed and copy alone.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.randint(0, 2**62, (repeat,), generator=generator)
    return generator
