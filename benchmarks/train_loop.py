"""The pretrain stage's training loop, timed against the matmul bound and against a plain loop.

For each (family, size) of a profile's pretrain groups, three contenders take turns
(benchmarks/timing.py), each over the same steps after a warm-up:
  lightning  the stage's loop: training.system.TrainingSystem under training.runs.make_trainer
             (the profile's train and optim settings, no logger), steps timed by a callback
  plain      the same model, loss, optimizer, clipping and schedule in a plain Python loop
             (TrainingSystem.configure_optimizers, model.objectives.training_loss_and_length)
  matmul     every matmul of one training step alone (benchmarks.matmul_rate.shapes_call):
             tokens/s if a step cost nothing but its products at their measured fp32 rate
Printed per run: tokens/s of each, lightning / matmul bound and lightning / plain (medians of
per-repeat ratios). The bound counts the head at all B x L positions (model.flops); an MDM runs it
at masked positions only (about half), so an MDM's ratio can exceed what the ARM's means.

    python -m benchmarks.train_loop --profile default --threads 1
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from benchmarks.matmul_rate import shapes_call, training_matmul_shapes
from benchmarks.timing import machine_line, median, paired_ratio
from model.config import config_for
from model.objectives import training_loss_and_length
from model.transformer import Transformer
from pipeline_steps.core.params import build_config
from pipeline_steps.core.profile import render
from pipeline_steps.training.config import PretrainConfig
from pipeline_steps.training.runs import make_trainer
from pipeline_steps.training.system import TrainingSystem
from pipeline_steps.training.token_windows import StepBatches, TokenStream


class StepClock(L.Callback):
    """Wall time from the start of step `warmup` to the end of training."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.seconds = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_end(self, trainer, module) -> None:
        self.seconds = time.perf_counter() - self.start


def random_stream(vocab: int, tokens: int = 200_000, seed: int = 0) -> TokenStream:
    ids = np.random.default_rng(seed).integers(0, vocab, tokens, dtype=np.int64)
    return TokenStream((ids,), {"vocab_size": vocab})


def contenders(cfg: PretrainConfig, family: str, size: str, vocab: int, steps: int, warmup: int,
               work: Path) -> tuple[dict, float]:
    """name -> a call returning the seconds of `steps - warmup` timed steps; and tokens per step."""
    train = cfg.train
    model_cfg = config_for(size, family, vocab, train.seq_len)
    stream = random_stream(vocab)

    def system() -> TrainingSystem:
        torch.manual_seed(train.seed)
        return TrainingSystem(Transformer(model_cfg), cfg.optim, stream, train.seq_len, train.global_batch,
                              steps, train.seed, train.mask_eps)

    def lightning() -> float:
        clock = StepClock(warmup)
        with tempfile.TemporaryDirectory(dir=work) as ckpt:
            trainer = make_trainer(cfg, steps, Path(ckpt), logger=False)
            trainer.callbacks.append(clock)
            trainer.fit(system())
        return clock.seconds

    def plain() -> float:
        sys_ = system()
        optimizers = sys_.configure_optimizers()
        optimizer, schedule = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
        batches = StepBatches(stream, train.seq_len, train.global_batch, steps, train.seed)
        start = 0.0
        for step in range(steps):
            if step == warmup:
                start = time.perf_counter()
            generator = torch.Generator().manual_seed(train.seed * 1_000_003 + step)
            loss, _ = training_loss_and_length(sys_.model, batches.batch(step), generator, train.mask_eps,
                                               global_batch=train.global_batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if train.grad_clip:
                torch.nn.utils.clip_grad_norm_(sys_.model.parameters(), train.grad_clip)
            optimizer.step()
            schedule.step()
            sys_.recent_losses = (sys_.recent_losses + [loss.item()])[-50:]  # as the stage does
        return time.perf_counter() - start

    products, _ = shapes_call(training_matmul_shapes(model_cfg, train.global_batch, train.seq_len))

    def matmul() -> float:
        start = time.perf_counter()
        for _ in range(steps - warmup):
            products()
        return time.perf_counter() - start

    return {"lightning": lightning, "plain": plain, "matmul": matmul}, train.global_batch * train.seq_len


def take_turns(calls: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds each call reports, one per repeat, the calls in rotated order (as timing.interleaved,
    but the contenders time their own steady-state steps: Trainer set-up is not a step)."""
    names, out = list(calls), {name: [] for name in calls}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            out[name].append(calls[name]())
    return out


def profile_runs(cfg: PretrainConfig) -> list[tuple[str, str]]:
    """(family, size) of every run the profile's groups train, smallest first."""
    runs = {(g.family, s) for g in cfg.groups.values() for s in g.sizes}
    return sorted(runs, key=lambda r: (config_for(r[1], r[0], 1024, 64).n_params, r[0]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="default", help="profile whose pretrain section and sizes to use")
    parser.add_argument("--runs", nargs="*", default=None, help="FAMILY:SIZE pairs instead of the profile's")
    parser.add_argument("--vocab", type=int, default=1024, help="vocabulary (the tokenizer's size)")
    parser.add_argument("--batch", type=int, default=None, help="global batch instead of the profile's")
    parser.add_argument("--seq-len", type=int, default=None, help="sequence length instead of the profile's")
    parser.add_argument("--steps", type=int, default=60, help="steps per timed call, warm-up included")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps at the start of each call")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the stage's default: 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = build_config(PretrainConfig, render(args.profile, Path(__file__).parents[1] / "profiles")["pretrain"],
                       "pretrain")
    shape = {k: v for k, v in (("global_batch", args.batch), ("seq_len", args.seq_len)) if v is not None}
    if shape:  # the ways in: a larger micro-batch, a shorter or longer context
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **shape))
    runs = [tuple(r.split(":")) for r in args.runs] if args.runs else profile_runs(cfg)
    timed = args.steps - args.warmup
    print(machine_line())
    print(f"profile {args.profile}: seq_len {cfg.train.seq_len}, batch {cfg.train.global_batch}, V {args.vocab}; "
          f"{timed} timed steps x {args.repeats} repeats")
    print(f"{'run':>10} {'lightning tok/s':>15} {'plain tok/s':>11} {'bound tok/s':>11} "
          f"{'light/bound':>11} {'plain/bound':>11} {'light/plain':>11}")
    first = None
    with tempfile.TemporaryDirectory() as work:
        for family, size in runs:
            calls, tokens = contenders(cfg, family, size, args.vocab, args.steps, args.warmup, Path(work))
            samples = take_turns(calls, args.repeats)
            rate = {k: tokens * timed / median(v) for k, v in samples.items()}
            ratios = {k: paired_ratio(samples, *k)
                      for k in (("matmul", "lightning"), ("matmul", "plain"), ("plain", "lightning"))}
            print(f"{family + ' ' + size:>10} {rate['lightning']:15.0f} {rate['plain']:11.0f} {rate['matmul']:11.0f} "
                  f"{ratios['matmul', 'lightning']:11.2f} {ratios['matmul', 'plain']:11.2f} "
                  f"{ratios['plain', 'lightning']:11.2f}")
            first = first or (family, size, ratios["matmul", "lightning"])
    print(f"train loop / matmul bound: {first[2]:.2f}  ({first[0]} {first[1]}, the smallest size)")


if __name__ == "__main__":
    main()
