"""Reading shards back: verified metadata, fixed windows, a deterministic resumable order.

A window is L + 1 consecutive tokens starting at a multiple of L (the ARM predicts 1..L from
0..L-1; the MDM denoises 0..L-1), so every token of the stream is seen once per epoch; the tail
shorter than a window is counted, not silently lost. Batches are addressed by step: step s of
every epoch takes windows [s*B, (s+1)*B) of that epoch's permutation and rank r of W takes the
r-th slice of B/W, so ranks read disjoint data and resuming at a step replays nothing.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline_steps.core.errors import InputError


class ShardError(InputError):
    """A shard folder that does not match its meta.json or the tokenizer given."""


@dataclass(frozen=True)
class TokenStream:
    """All tokens of one split as memmaps, in order."""

    parts: tuple[np.ndarray, ...]
    meta: dict

    @property
    def n_tokens(self) -> int:
        return sum(p.size for p in self.parts)

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) across shard boundaries."""
        out, offset = [], 0
        for part in self.parts:
            lo, hi = max(start - offset, 0), min(start + length - offset, part.size)
            if lo < hi:
                out.append(part[lo:hi])
            offset += part.size
        return np.concatenate(out).astype(np.int64)


META_KEYS = ("vocab_size", "tokenizer_sha256", "dtype", "splits", "data_hash")
"""What the shards stage writes into meta.json and training reads."""


def read_meta(shard_dir: str | Path, tokenizer_vocab: int | None = None) -> dict:
    """A shard folder's meta.json (the one reader of it), checked against the tokenizer's vocabulary when given."""
    meta_file = Path(shard_dir) / "meta.json"
    if not meta_file.exists():
        raise ShardError(f"{meta_file}: missing (run the shards stage)")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as err:
        raise ShardError(f"{meta_file}: not valid JSON ({err.msg}); re-run the shards stage") from None
    if not isinstance(meta, dict):
        raise ShardError(f"{meta_file}: expected a JSON object; re-run the shards stage")
    missing = [key for key in META_KEYS if key not in meta]
    if missing:
        raise ShardError(f"{meta_file}: missing key(s) {missing}; re-run the shards stage")
    if tokenizer_vocab is not None and meta["vocab_size"] != tokenizer_vocab:
        # larger: the head predicts ids no token has; smaller: token ids index past the embedding
        raise ShardError(f"{meta_file}: vocab_size {meta['vocab_size']} does not match the tokenizer's "
                         f"{tokenizer_vocab} pieces; re-run the shards stage with this tokenizer")
    return meta


def open_split(shard_dir: str | Path, split: str, tokenizer_sha256: str | None = None) -> TokenStream:
    """Open a split, checking every shard's size and, when given, the tokenizer's hash."""
    shard_dir = Path(shard_dir)
    meta_file = shard_dir / "meta.json"
    meta = read_meta(shard_dir)
    if tokenizer_sha256 is not None and meta["tokenizer_sha256"] != tokenizer_sha256:
        raise ShardError(f"{meta_file}: tokenizer_sha256 {meta['tokenizer_sha256'][:12]}... does not match "
                         f"the tokenizer given ({tokenizer_sha256[:12]}...): re-run the shards stage")
    if split not in meta["splits"]:
        raise ShardError(f"{meta_file}: no split {split!r}; has {sorted(meta['splits'])}")
    dtype = np.dtype(meta["dtype"])
    parts = []
    for shard in meta["splits"][split]["shards"]:
        path = shard_dir / shard["file"]
        if not path.exists() or path.stat().st_size != shard["tokens"] * dtype.itemsize:
            raise ShardError(f"{path}: missing or not {shard['tokens']} tokens of {dtype.name} as meta.json says")
        parts.append(np.memmap(path, dtype=dtype, mode="r"))
    return TokenStream(tuple(parts), meta)


def n_windows(stream: TokenStream, seq_len: int) -> int:
    return max(0, (stream.n_tokens - 1) // seq_len)


def unused_tail_tokens(stream: TokenStream, seq_len: int) -> int:
    """Tokens after the last full window start that no window predicts."""
    return stream.n_tokens - 1 - n_windows(stream, seq_len) * seq_len


def window(stream: TokenStream, index: int, seq_len: int) -> np.ndarray:
    return stream.read(index * seq_len, seq_len + 1)


@functools.lru_cache(maxsize=2)
def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The window permutation of one epoch (cached: every step of the epoch reads it)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


class StepBatches(torch.utils.data.IterableDataset):
    """Yields this rank's (B/W, L + 1) batch for steps start..total-1, start read at iteration time.

    `start_step` is a callable so that a resumed trainer's restored step is read when Lightning
    creates the iterator, after the checkpoint is loaded.
    """

    def __init__(self, stream: TokenStream, seq_len: int, global_batch: int, total_steps: int,
                 seed: int, rank: int = 0, world: int = 1,
                 start_step: Callable[[], int] = lambda: 0) -> None:
        if global_batch % world:
            raise ValueError(f"global batch {global_batch} is not divisible by {world} devices")
        self.n = n_windows(stream, seq_len)
        if self.n < global_batch:
            raise ValueError(f"only {self.n} windows of {seq_len + 1} tokens, fewer than one batch of {global_batch}")
        self.stream, self.seq_len, self.global_batch = stream, seq_len, global_batch
        self.total_steps, self.seed, self.rank, self.world = total_steps, seed, rank, world
        self.start_step = start_step
        self.steps_per_epoch = self.n // global_batch

    def window_indices(self, step: int) -> np.ndarray:
        """The windows rank `self.rank` reads at global step `step`."""
        epoch, within = divmod(step, self.steps_per_epoch)
        order = epoch_order(self.n, self.seed, epoch)
        per_rank = self.global_batch // self.world
        lo = within * self.global_batch + self.rank * per_rank
        return order[lo:lo + per_rank]

    def batch(self, step: int) -> torch.Tensor:
        rows = [window(self.stream, int(i), self.seq_len) for i in self.window_indices(step)]
        return torch.from_numpy(np.stack(rows))

    def __iter__(self) -> Iterator[torch.Tensor]:
        for step in range(self.start_step(), self.total_steps):
            yield self.batch(step)

    def __len__(self) -> int:
        return self.total_steps


def validation_windows(stream: TokenStream, seq_len: int, count: int) -> torch.Tensor:
    """The first `count` windows of a split (fixed, so every run is scored on the same tokens)."""
    available = n_windows(stream, seq_len)
    if available < count:
        raise ValueError(f"validation split has {available} windows of {seq_len + 1} tokens; {count} requested")
    return torch.from_numpy(np.stack([window(stream, i, seq_len) for i in range(count)]))
