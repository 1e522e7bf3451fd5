"""Stage `shards`: tokenize the corpus with every core and pack it into memmap shards.

Each split is one stream of documents, each encoded as BOS + text + EOS, written into fixed-size
shard files (`<split>_<k>.bin`, dtype uint16 when the vocabulary fits, else uint32). meta.json
makes the folder self-describing: vocabulary, tokenizer hash, dtype, token and document counts.
Nothing is dropped here; the training loader counts the tail it cannot fill a window with.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing as mp
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm
from tqdm import tqdm

from pipeline_steps.core.errors import InputError
from pipeline_steps.core.files import atomic_write_json, replace_dir, sha256_file, staging_dir
from pipeline_steps.core.stage_cli import run_stage
from pipeline_steps.core.tracking import Tracker
from pipeline_steps.data.corpus_rows import read_texts

SPLITS = ("train", "val")


@dataclass(frozen=True)
class ShardsConfig:
    """How the corpus is tokenized and packed."""

    shard_tokens: int = 50_000_000
    """Tokens per shard file (the last one holds the rest)."""
    workers: int = 0
    """Encoding processes; 0 = one per core."""
    docs_per_task: int = 64
    """Documents sent to a worker at a time (amortises inter-process overhead)."""

    def __post_init__(self) -> None:
        if self.shard_tokens < 1:
            raise ValueError(f"shard_tokens must be positive, got {self.shard_tokens}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.docs_per_task < 1:
            raise ValueError(f"docs_per_task must be positive, got {self.docs_per_task}")


_processor: spm.SentencePieceProcessor | None = None


def _load_processor(model_file: str) -> None:
    global _processor
    _processor = spm.SentencePieceProcessor(model_file=model_file)


def _encode_batch(texts: list[str]) -> np.ndarray:
    """BOS + ids + EOS for each text, concatenated (runs in a worker; one thread each, since
    the pool already uses every core)."""
    ids = _processor.encode(texts, add_bos=True, add_eos=True, num_threads=1)
    return np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64)


def _text_batches(corpus_file: Path, size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in read_texts(corpus_file):  # (an InputError here reaches the caller through pool.imap)
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class ShardWriter:
    """Appends token arrays to `<split>_<k>.bin` files, rolling over every `shard_tokens`."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype, shard_tokens: int, vocab: int) -> None:
        self.folder, self.split, self.dtype, self.shard_tokens = folder, split, dtype, shard_tokens
        self.shards: list[dict] = []
        self.counts = np.zeros(vocab, dtype=np.int64)  # token frequencies, for the unigram loss
        self._handle = None
        self._in_shard = 0

    def _roll(self) -> None:
        if self._handle:
            self._handle.close()
        name = f"{self.split}_{len(self.shards):04d}.bin"
        self.shards.append({"file": name, "tokens": 0})
        self._handle = open(self.folder / name, "wb")
        self._in_shard = 0

    def write(self, tokens: np.ndarray) -> None:
        self.counts += np.bincount(tokens, minlength=self.counts.size)
        while tokens.size:
            if self._handle is None or self._in_shard == self.shard_tokens:
                self._roll()
            take = min(tokens.size, self.shard_tokens - self._in_shard)
            self._handle.write(tokens[:take].astype(self.dtype).tobytes())
            self.shards[-1]["tokens"] += take
            self._in_shard += take
            tokens = tokens[take:]

    def close(self) -> None:
        if self._handle:
            self._handle.close()


def encode_split(corpus_file: Path, writer: ShardWriter, model_file: Path, cfg: ShardsConfig) -> int:
    """Encode one split in order with a pool of workers; returns the number of documents."""
    workers = cfg.workers or os.cpu_count() or 1
    documents = 0
    total_bytes = corpus_file.stat().st_size
    with mp.get_context("spawn").Pool(workers, _load_processor, (str(model_file),)) as pool, \
            tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"shards {corpus_file.stem}") as bar:
        batches = _text_batches(corpus_file, cfg.docs_per_task)
        for texts, tokens in zip_batches(batches, pool):
            writer.write(tokens)
            documents += len(texts)
            bar.update(sum(len(t.encode()) for t in texts) + 60 * len(texts))
    writer.close()
    return documents


def zip_batches(batches: Iterator[list[str]], pool) -> Iterator[tuple[list[str], np.ndarray]]:
    """Yield (texts, tokens) in corpus order while workers encode ahead (imap keeps order)."""
    kept: list[list[str]] = []

    def remember() -> Iterator[list[str]]:
        for batch in batches:
            kept.append(batch)
            yield batch

    for tokens in pool.imap(_encode_batch, remember(), chunksize=1):
        yield kept.pop(0), tokens


def run(cfg: ShardsConfig, corpus_dir: Path, tokenizer_dir: Path, out_dir: Path,
        tracker: Tracker) -> dict[str, float]:
    model_file = Path(tokenizer_dir) / "tokenizer.model"
    try:
        vocab = spm.SentencePieceProcessor(model_file=str(model_file)).get_piece_size()
    except (OSError, RuntimeError):
        raise InputError(f"{model_file}: missing or not a SentencePiece model (expected the "
                         "tokenizer stage's output folder)") from None
    dtype = np.dtype(np.uint16 if vocab < 2**16 else np.uint32)
    stage = staging_dir(out_dir)
    meta = {"vocab_size": vocab, "tokenizer_sha256": sha256_file(model_file), "dtype": dtype.name,
            "corpus_sha256": {}, "splits": {}}
    metrics: dict[str, float] = {}
    counts: dict[str, np.ndarray] = {}
    try:
        for split in SPLITS:
            corpus_file = Path(corpus_dir) / f"{split}.jsonl"
            if not corpus_file.exists():
                raise FileNotFoundError(f"{corpus_file}: missing corpus split {split!r}")
            writer = ShardWriter(stage, split, dtype, cfg.shard_tokens, vocab)
            documents = encode_split(corpus_file, writer, model_file, cfg)
            tokens = sum(s["tokens"] for s in writer.shards)
            if tokens == 0:
                raise InputError(f"{corpus_file}: no tokens (empty corpus split {split!r})")
            meta["corpus_sha256"][split] = sha256_file(corpus_file)
            meta["splits"][split] = {"documents": documents, "tokens": tokens, "shards": writer.shards}
            metrics[f"{split}/tokens"] = float(tokens)
            metrics[f"{split}/documents"] = float(documents)
            counts[split] = writer.counts
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)  # a bad split leaves no half-written folder
        raise
    metrics["val/unigram_loss"] = unigram_loss(counts["train"], counts["val"])
    meta["data_hash"] = sha256_of_json(meta["corpus_sha256"] | {"tokenizer": meta["tokenizer_sha256"]})
    atomic_write_json(stage / "meta.json", meta)
    replace_dir(stage, Path(out_dir))
    tracker.log_metrics(metrics)
    return metrics


def unigram_loss(train_counts: np.ndarray, val_counts: np.ndarray) -> float:
    """Nats per val token under the train split's token frequencies (add-one, so a token unseen in
    train costs a finite amount): the loss of a model that ignores context, and where an MDM that
    has learned nothing else plateaus (its ELBO then equals this cross-entropy)."""
    p = (train_counts + 1) / (train_counts.sum() + train_counts.size)
    return float(-(val_counts * np.log(p)).sum() / val_counts.sum())


def sha256_of_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    return run_stage("shards", __doc__, ShardsConfig,
                     {"--corpus": ("data/corpus", "folder with train.jsonl and val.jsonl"),
                      "--tokenizer": ("data/tokenizer", "folder with tokenizer.model"),
                      "--out": ("data/shards", "output folder (shards + meta.json)")},
                     lambda cfg, args, tracker: run(cfg, Path(args.corpus), Path(args.tokenizer),
                                                    Path(args.out), tracker), argv)


if __name__ == "__main__":
    raise SystemExit(main())
