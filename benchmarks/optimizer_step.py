"""AdamW's step alone, fused vs foreach vs a per-parameter loop, at the default grid's sizes.

The pretrain stage's optimizer (training.system: AdamW, weight decay, the profile's betas) runs
one update per training step; at 9k-51k parameters its fixed cost is a visible share of a step
of a few milliseconds. The three implementations take turns on copies of the same model with
the same gradients (benchmarks/timing.py), and the parameters after the timed steps are compared
(fused and foreach agree to float32 rounding, not bitwise). Last line: fused / foreach speed-up at
the smallest size.

    python -m benchmarks.optimizer_step --sizes 9k 21k 51k
"""
from __future__ import annotations

import argparse

import torch

from benchmarks.timing import interleaved, machine_line, paired_ratio
from model.config import config_for
from model.transformer import Transformer

VARIANTS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}


def optimizers(size: str, vocab: int, context: int) -> dict[str, tuple[Transformer, torch.optim.Optimizer]]:
    out = {}
    for name, kwargs in VARIANTS.items():
        torch.manual_seed(0)
        model = Transformer(config_for(size, "mdm", vocab, context))
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        out[name] = model, torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95),
                                             weight_decay=0.1, **kwargs)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["9k", "21k", "51k"])
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--inner", type=int, default=200, help="steps per timed sample")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(machine_line())
    first = None
    for size in args.sizes:
        runs = optimizers(size, args.vocab, args.context)
        samples = interleaved({name: opt.step for name, (_, opt) in runs.items()},
                              repeats=args.repeats, inner=args.inner, warmup=20)
        gap = max((a - b).abs().max().item() for a, b in
                  zip(runs["fused"][0].parameters(), runs["foreach"][0].parameters()))
        ms = {name: 1e3 * min(v) for name, v in samples.items()}
        speedup = paired_ratio(samples, "foreach", "fused")
        first = first if first is not None else speedup
        print(f"{size}: " + " ".join(f"{k} {v:.3f} ms" for k, v in ms.items())
              + f" | fused vs foreach {speedup:.2f}x, vs loop {paired_ratio(samples, 'loop', 'fused'):.2f}x"
              + f" | max |fused - foreach| after the steps {gap:.1e}")
    print(f"fused / foreach AdamW speed-up at {args.sizes[0]}: {first:.2f}x")


if __name__ == "__main__":
    main()
