"""The MDM sampler's exact speed-ups, each against the plain path, with the same tokens.

`generate_mdm` has two speed-ups that change no token (tests/model/test_sampling.py checks them
seed for seed): `reuse_unchanged` (a row whose canvas did not change keeps its logits, which
saves ancestral sampling's empty steps) and `head_at_masked` (the output head only at the
block's masked positions). Here the plain path, each one alone and both take turns
(benchmarks/timing.py) on one batch of prompts, per sampler and step count, and every
contender's tokens are compared with the plain path's. The model is the default profile's size
with random weights (the speed-ups do not depend on the weights: reuse on the reveal pattern,
the head on the masked count), or a trained artifact with --model. Last line: the smallest
speed-up of both together over the plain path.

    python -m benchmarks.sampler_speedups --sizes 16k 51k
"""
from __future__ import annotations

import argparse
import itertools
from functools import partial

import torch

from benchmarks.timing import interleaved, machine_line, paired_ratio
from model.artifact import load_artifact
from model.config import config_for
from model.sampling import generate_mdm
from model.transformer import Transformer

CONTENDERS = {"plain": dict(reuse_unchanged=False, head_at_masked=False),
              "reuse": dict(reuse_unchanged=True, head_at_masked=False),
              "head": dict(reuse_unchanged=False, head_at_masked=True),
              "both": dict(reuse_unchanged=True, head_at_masked=True)}


def settings(length: int) -> list[tuple[str, int, int | None]]:
    """(sampler, steps, block length): the step counts the frontier sweeps (length/4 .. 4 x length)."""
    return [("ancestral", length // 4, None), ("ancestral", length, None), ("ancestral", 4 * length, None),
            ("confidence", length // 4, None), ("confidence", length, length // 3),
            ("first_hitting", length, None)]


def models(args: argparse.Namespace) -> dict[str, Transformer]:
    if args.model:
        return {args.model: load_artifact(args.model)[0]}
    out = {}
    for size in args.sizes:
        torch.manual_seed(0)
        out[size] = Transformer(config_for(size, "mdm", args.vocab, args.prompt + args.length)).eval()
    return out


def run(model: Transformer, prompts: list[list[int]], length: int, kw: dict, flags: dict,
        outputs: dict, stats: dict, label: str) -> None:
    """One contender's call: the same generator seed for all, tokens and counts kept by label."""
    stats[label] = {}
    outputs[label] = generate_mdm(model, prompts, length, generator=torch.Generator().manual_seed(0),
                                  stats=stats[label], **kw, **flags)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["16k", "33k", "51k"])
    parser.add_argument("--model", help="a trained MDM artifact folder instead of random weights")
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--prompt", type=int, default=16, help="prompt tokens")
    parser.add_argument("--length", type=int, default=48, help="generated tokens (a multiple of 12)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 1.0],
                        help="0 is argmax; above 0 every drawn position costs V float64 Gumbel draws")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(machine_line())
    worst = None
    for name, model in models(args).items():
        vocab = model.cfg.vocab_size
        prompts = torch.randint(0, vocab, (args.batch, args.prompt), generator=torch.Generator().manual_seed(1)).tolist()
        for (sampler, steps, block), temperature in itertools.product(settings(args.length), args.temperatures):
            outputs, stats = {}, {}
            kw = dict(steps=steps, sampler=sampler, block_length=block, temperature=temperature)
            samples = interleaved({label: partial(run, model, prompts, args.length, kw, flags, outputs, stats, label)
                                   for label, flags in CONTENDERS.items()}, repeats=args.repeats)
            same = all(outputs[label] == outputs["plain"] for label in CONTENDERS)
            ratios = {label: paired_ratio(samples, "plain", label) for label in CONTENDERS if label != "plain"}
            worst = min(worst, ratios["both"]) if worst is not None else ratios["both"]
            rows = stats["both"]["forward_rows"] / stats["plain"]["forward_rows"]
            print(f"{name} {sampler:13s} steps {steps:3d} block {block or args.length:2d} T {temperature:g}: plain "
                  f"{1e3 * min(samples['plain']):7.1f} ms | speed-up " + " ".join(f"{k} {v:.2f}x" for k, v in ratios.items())
                  + f" | forward rows kept {rows:.2f} | same tokens: {same}")
            if not same:
                raise SystemExit("a speed-up changed the tokens: see tests/model/test_sampling.py")
    print(f"smallest speed-up of both exact speed-ups over the plain sampler: {worst:.2f}x")
    print(machine_line())


if __name__ == "__main__":
    main()
