"""Sample one continuation of a prompt from a model artifact (PAPER.md section 6).

    smdm-generate --model models/pretrain/mdm_c3/16k --prompt "It is a truth" --sampler confidence --length 32
    smdm-generate --model models/pretrain/arm_c3/16k --prompt "It is a truth" --length 32 --json

The prompt is BOS + encode(text) with the artifact's own tokenizer.model. An MDM fills `--length`
masked positions by a reverse-process sampler (model/sampling.py) in `--steps` steps (default: one
per token), guided by `--cfg`, optionally in semi-autoregressive blocks; an ARM generates up to
`--length` new tokens with its KV cache (`--sampler`, `--steps`, `--cfg` and `--block-length` are the
MDM's and are refused for an ARM). Both stop at EOS. Prompt + length must fit the model's context;
the default length is 32 or what fits. `--json` prints tokens, text, forward passes (model rows
computed: the MDM's after skipping unchanged rows, CFG's unconditional rows included; one per
token for the ARM) and seconds.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

import torch

from model.sampling import MDM_SAMPLERS, generate_arm, generate_mdm, mdm_schedule
from pipeline_steps.core.errors import InputError
from pipeline_steps.core.stage_cli import OneLineParser, guarded
from pipeline_steps.scoring.evaluator import LoadedModel, check_device, load_model

DEFAULT_LENGTH = 32
"""Tokens generated when --length is not given (fewer when the context has less room)."""
MDM_ONLY = ("sampler", "steps", "cfg", "block_length")
"""Options of the MDM's reverse process: given for an ARM, they are a mistake, not a no-op."""


def encode_prompt(lm: LoadedModel, text: str) -> list[int]:
    """BOS + encode(text), checked to leave room for at least one generated token."""
    sp, context = lm.tokenizer, lm.config["context"]
    prompt = ([sp.bos_id()] if sp.bos_id() >= 0 else []) + sp.encode(text)
    if len(prompt) >= context:
        raise InputError(f"--prompt: encodes to {len(prompt)} tokens (BOS included), but the model's context "
                         f"is {context}; expected at most {context - 1} to leave room for generation")
    return prompt


def resolve_length(length: int | None, prompt_len: int, context: int) -> int:
    """--length, or the default that fits; prompt + length must fit the context."""
    if length is None:
        return min(DEFAULT_LENGTH, context - prompt_len)
    if length <= 0:
        raise InputError(f"--length: expected a positive number of tokens, got {length}")
    if prompt_len + length > context:
        raise InputError(f"--length: prompt ({prompt_len} tokens) + length {length} exceeds the model's context "
                         f"{context}; expected a length of at most {context - prompt_len}")
    return length


def check_options(family: str, options: dict[str, Any]) -> None:
    """Options that are wrong whatever the model: checked before it is loaded."""
    temperature = options["temperature"]
    if not (math.isfinite(temperature) and temperature >= 0):
        raise InputError(f"--temperature: expected a finite number >= 0 (0 is greedy), got {temperature}")
    if options.get("steps") is not None and options["steps"] <= 0:
        raise InputError(f"--steps: expected a positive number of reverse steps, got {options['steps']}")
    if family == "arm":
        given = [f"--{name.replace('_', '-')}" for name in MDM_ONLY if options.get(name) is not None]
        if given:
            raise InputError(f"{', '.join(given)}: the MDM's reverse-process options, but the model is an ARM "
                             "(it generates token by token); expected only --length, --temperature, --seed")


def generate_text(lm: LoadedModel, text: str, *, length: int | None = None, sampler: str | None = None,
                  steps: int | None = None, cfg: float | None = None, temperature: float = 0.0, seed: int = 0,
                  block_length: int | None = None) -> dict[str, Any]:
    """One continuation of `text`: {tokens, text, forward_passes, seconds, ...}; a bad setting is an
    InputError naming its flag. MDM defaults: sampler `confidence`, steps = length, no CFG."""
    options = dict(sampler=sampler, steps=steps, cfg=cfg, block_length=block_length, temperature=temperature)
    check_options(lm.family, options)
    prompt = encode_prompt(lm, text)
    length = resolve_length(length, len(prompt), lm.config["context"])
    eos = lm.tokenizer.eos_id() if lm.tokenizer.eos_id() >= 0 else None
    generator, started = torch.Generator().manual_seed(seed), time.perf_counter()
    if lm.family == "arm":
        tokens = generate_arm(lm.model, [prompt], length, generator=generator, temperature=temperature, eos_id=eos)[0]
        settings, passes = {}, len(tokens)  # one row per new token, the cache holding the rest
    else:
        settings = dict(sampler=sampler or "confidence", steps=steps or length, cfg_scale=cfg or 0.0,
                        block_length=block_length)
        _check_schedule(length, settings)
        stats: dict[str, int] = {}
        tokens = generate_mdm(lm.model, [prompt], length, generator=generator, temperature=temperature,
                              eos_id=eos, stats=stats, **settings)[0]
        passes = stats["forward_rows"]
    seconds = time.perf_counter() - started
    return {"model": lm.path, "family": lm.family, "prompt_tokens": len(prompt), "length": length,
            "temperature": temperature, "seed": seed, **settings, "tokens": tokens,
            "text": lm.tokenizer.decode([t for t in tokens if t != eos]), "forward_passes": passes,
            "seconds": seconds}


def _check_schedule(length: int, settings: dict[str, Any]) -> None:
    """The sampler, steps and blocks agree (model/sampling.py's rules), named by their flags."""
    if not math.isfinite(settings["cfg_scale"]):
        raise InputError(f"--cfg: expected a finite guidance scale, got {settings['cfg_scale']}")
    try:
        mdm_schedule(length, settings["steps"], settings["block_length"], settings["sampler"])
    except ValueError as err:
        raise InputError(f"--sampler/--steps/--length/--block-length: {err}") from None


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="smdm-generate", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model artifact folder (config.json, weights, tokenizer.model)")
    parser.add_argument("--prompt", required=True, help="text to continue (BOS is prepended)")
    parser.add_argument("--sampler", choices=MDM_SAMPLERS, help="MDM only: reverse-process sampler (default: confidence)")
    parser.add_argument("--steps", type=int, help="MDM only: reverse steps (default: --length)")
    parser.add_argument("--length", type=int, help=f"MDM: tokens to generate; ARM: most new tokens (default: "
                        f"{DEFAULT_LENGTH} or what the context leaves)")
    parser.add_argument("--cfg", type=float, help="MDM only: classifier-free guidance scale w (default: 0)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    parser.add_argument("--block-length", type=int, help="MDM only: semi-autoregressive block length, a divisor "
                        "of --length (default: one block)")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the text")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an input error too")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def body() -> None:
        check_device(args.device, "--device")
        check_options("any", vars(args))  # before the (slow) load; the ARM's refusals need the model
        result = generate_text(load_model(args.model, args.device), args.prompt, length=args.length,
                               sampler=args.sampler, steps=args.steps, cfg=args.cfg, temperature=args.temperature,
                               seed=args.seed, block_length=args.block_length)
        print(json.dumps(result) if args.json else result["text"])

    return guarded("smdm-generate", body, args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
