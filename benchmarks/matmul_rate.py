"""The machine's fp32 (or bf16) matmul rate: torch.mm of large square matrices.

This is the ceiling the training step's achieved FLOP/s is compared against (benchmarks/train_step
times both side by side). Run alone to see how the rate depends on size and threads:

    python -m benchmarks.matmul_rate --sizes 512 1024 2048 --threads 2
"""
from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from benchmarks.timing import interleaved, machine_line, median, spread
from model.config import ModelConfig, config_for


def matmul_call(n: int, dtype: torch.dtype = torch.float32, device: str = "cpu",
                seed: int = 0) -> tuple[Callable[[], torch.Tensor], float]:
    """A closure doing one (n x n) @ (n x n) product on random data, and its FLOPs (2 n^3)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    a = torch.randn(n, n, generator=gen, device=device).to(dtype)
    b = torch.randn(n, n, generator=gen, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    return (lambda: torch.mm(a, b, out=out)), 2.0 * n**3


def training_matmul_shapes(cfg: ModelConfig, batch: int, seq_len: int) -> list[tuple[int, int, int, int]]:
    """(count, m, k, n) of every product one training step does: each linear layer's forward
    (T x in)(in x out) and its two backward products, and the batched attention products."""
    tokens, d, f = batch * seq_len, cfg.d_model, cfg.d_ffn
    linears = [(d, 3 * d), (d, d), (d, 2 * f), (f, d)] * cfg.n_layer + [(d, cfg.vocab_size)]
    shapes = []
    for fan_in, fan_out in linears:  # y = x W, dx = dy W^T, dW = x^T dy
        shapes += [(1, tokens, fan_in, fan_out), (1, tokens, fan_out, fan_in), (1, fan_in, tokens, fan_out)]
    heads, hd = batch * cfg.n_head, cfg.head_dim
    shapes += [(heads, seq_len, hd, seq_len), (heads, seq_len, seq_len, hd)] * 3 * cfg.n_layer  # fwd + 2 bwd
    return shapes


def shapes_call(shapes: list[tuple[int, int, int, int]], seed: int = 0) -> tuple[Callable[[], None], float]:
    """A closure running every product in `shapes` once on random fp32 data, and their FLOPs."""
    gen = torch.Generator().manual_seed(seed)
    operands = [(torch.randn(c, m, k, generator=gen).squeeze(0), torch.randn(c, k, n, generator=gen).squeeze(0))
                for c, m, k, n in shapes]

    def run() -> None:
        for a, b in operands:
            torch.matmul(a, b)

    return run, float(sum(2 * c * m * k * n for c, m, k, n in shapes))


def repeated(call: Callable[[], object], times: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(times):
            call()
    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048], help="square sizes n")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repeats")
    parser.add_argument("--bf16", action="store_true", help="bf16 instead of fp32")
    parser.add_argument("--models", nargs="*", default=["410k", "1.31M"],
                        help="also time the mix of matmul shapes of one training step of these ARM sizes (fp32)")
    parser.add_argument("--vocab", type=int, default=2048, help="vocabulary of --models")
    parser.add_argument("--seq-len", type=int, default=64, help="sequence length of --models")
    parser.add_argument("--batch", type=int, default=16, help="batch of --models")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    calls, flops = {}, {}
    for n in args.sizes:
        call, one = matmul_call(n, dtype)
        inner = max(1, int(2e9 / one))  # ~2 GFLOP per sample, so small sizes are not all overhead
        calls[n], flops[n] = repeated(call, inner), one * inner
    for size in args.models:
        call, one = shapes_call(training_matmul_shapes(config_for(size, "arm", args.vocab, args.seq_len),
                                                       args.batch, args.seq_len))
        calls[f"{size}-step"], flops[f"{size}-step"] = call, one
    samples = interleaved(calls, args.repeats, warmup=1)
    print(machine_line())
    print(f"{'size':>10} {'dtype':>9} {'GFLOP/s':>9} {'spread':>7}   (NAME-step: a training step's matmul shapes, fp32)")
    for name, times in samples.items():
        kind = str(dtype)[6:] if isinstance(name, int) else "float32"
        print(f"{name:>10} {kind:>9} {flops[name] / median(times) / 1e9:9.1f} {spread(times):7.2f}")


if __name__ == "__main__":
    main()
