"""Tokens/s of the `shards` stage's encode + pack loop against raw SentencePiece x cores.

Contenders, interleaved repeat by repeat, each encoding the whole corpus file once:
  raw-1proc      SentencePieceProcessor.encode(all texts, num_threads=1), texts already in memory:
                 the per-core ceiling; the goal is stage tokens/s >= 0.8 x raw-1proc x cores
  raw-pool-split the corpus split evenly over the (warm) pool, raw encode in each worker, only
                 counts sent back: the parallel rate the cores give right now (others' load included)
  stage-cold     pipeline_steps.shards.encode_split as the stage calls it (pool spawn included)
  stage-warm     the same loop (_text_batches -> zip_batches over the pool -> ShardWriter) with a
                 pool that is already started: the steady-state encode + pack rate
  stage-warm-dN  stage-warm with N documents per task instead of the configured docs_per_task
  stage-warm-dN-1thr  and with num_threads=1 in the workers' encode (its default starts threads)
  numpy-threads  a candidate fix: one process, encode(batch, out_type="numpy", add_bos, add_eos,
                 num_threads=cores) + np.concatenate into the same ShardWriter; no pool

The corpus and tokenizer are copied to a temporary folder first (other stages may rewrite data/).
Without them, pass --corpus FILE (jsonl with a `text` field) and --tokenizer FILE.

    python -m benchmarks.shard_encode --repeats 5
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import sentencepiece as spm

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: no progress bars in the timings

from benchmarks.timing import interleaved, machine_line, median, paired_ratio, spread
from pipeline_steps.shards import (
    ShardsConfig,
    ShardWriter,
    _encode_batch,
    _load_processor,
    _text_batches,
    encode_split,
    zip_batches,
)


def stage_loop(pool, corpus: Path, out: Path, docs_per_task: int, dtype: np.dtype, vocab: int,
               encode=_encode_batch) -> int:
    """encode_split's loop without the pool start and the progress bar; returns tokens written."""
    writer = ShardWriter(out, "train", dtype, ShardsConfig().shard_tokens, vocab)
    batches = _text_batches(corpus, docs_per_task)
    if encode is _encode_batch:  # exactly the stage's code path
        encoded = (tokens for _, tokens in zip_batches(batches, pool))
    else:
        encoded = pool.imap(encode, batches, chunksize=1)
    for tokens in encoded:
        writer.write(tokens)
    writer.close()
    return sum(s["tokens"] for s in writer.shards)


def numpy_threads(model: spm.SentencePieceProcessor, corpus: Path, out: Path, docs_per_task: int,
                  dtype: np.dtype, threads: int) -> int:
    """The candidate: sentencepiece's own threads and numpy output, no worker processes."""
    writer = ShardWriter(out, "train", dtype, ShardsConfig().shard_tokens, model.get_piece_size())
    for texts in _text_batches(corpus, docs_per_task):
        ids = model.encode(texts, out_type="numpy", add_bos=True, add_eos=True, num_threads=threads)
        writer.write(np.concatenate(ids))
    writer.close()
    return sum(s["tokens"] for s in writer.shards)


def synthetic_corpus(path: Path, megabytes: float, seed: int = 0) -> None:
    """Documents of ~13 kB of Zipf-distributed pseudo-words, as jsonl rows with a `text` field."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlucmfwypvbgkqjxz"))
    words = ["".join(rng.choice(letters, size=rng.integers(1, 9))) for _ in range(5000)]
    weights = 1 / np.arange(1, len(words) + 1)
    weights /= weights.sum()
    written = 0
    with open(path, "w") as handle:
        while written < megabytes * 1e6:
            text = " ".join(rng.choice(words, size=2000, p=weights)) + "."
            handle.write(json.dumps({"text": text}) + "\n")
            written += len(text)


def train_tokenizer(corpus: Path, model_file: Path, vocab: int = 2048) -> None:
    texts = (json.loads(row)["text"] for row in open(corpus))
    spm.SentencePieceTrainer.train(sentence_iterator=texts, model_prefix=str(model_file.with_suffix("")),
                                   vocab_size=vocab, model_type="bpe", max_sentence_length=1 << 20,
                                   minloglevel=2)


def same_output(pool, corpus: Path, out: Path, docs_per_task: int, dtype: np.dtype,
                model: spm.SentencePieceProcessor, threads: int) -> None:
    """The candidate writes the same shard bytes as the stage's loop."""
    stage_loop(pool, corpus, out, docs_per_task, dtype, model.get_piece_size())
    expected = (out / "train_0000.bin").read_bytes()
    numpy_threads(model, corpus, out, docs_per_task, dtype, threads)
    if (out / "train_0000.bin").read_bytes() != expected:
        raise RuntimeError("numpy-threads wrote different shard bytes than the stage's loop")


def _encode_batch_one_thread(texts: list[str]) -> np.ndarray:
    """pipeline_steps.shards._encode_batch with num_threads=1 (its default, -1, starts a thread per
    core inside every worker of a pool that already has a worker per core)."""
    from pipeline_steps import shards

    ids = shards._processor.encode(texts, num_threads=1)
    bos, eos = shards._processor.bos_id(), shards._processor.eos_id()
    return np.fromiter((t for doc in ids for t in (bos, *doc, eos)), dtype=np.int64)


def _count_tokens(texts: list[str]) -> int:
    """Runs in a worker: raw encode of a share of the corpus, one thread; only a count goes back."""
    from pipeline_steps import shards

    return sum(map(len, shards._processor.encode(texts, num_threads=1))) + 2 * len(texts)


def prepare(args, tmp: Path) -> tuple[Path, Path]:
    """Copies of the corpus and tokenizer in `tmp` (made here when missing)."""
    corpus, model_file = tmp / "train.jsonl", tmp / "tokenizer.model"
    if Path(args.corpus).exists():
        shutil.copy(args.corpus, corpus)
    else:
        print(f"{args.corpus} missing: generating a {args.synthetic_mb} MB synthetic corpus")
        synthetic_corpus(corpus, args.synthetic_mb)
    if Path(args.tokenizer).exists():
        shutil.copy(args.tokenizer, model_file)
    else:
        print(f"{args.tokenizer} missing: training a 2048-token BPE model on the corpus")
        train_tokenizer(corpus, model_file)
    return corpus, model_file


def build_contenders(pool, corpus: Path, model_file: Path, out: Path, cfg: ShardsConfig, small: int,
                     workers: int, counts: dict[str, int]) -> dict:
    """Closures that encode the whole corpus once each and put their token count in `counts`."""
    texts = [json.loads(row)["text"] for row in open(corpus)]
    model = spm.SentencePieceProcessor(model_file=str(model_file))
    dtype = np.dtype(np.uint16 if model.get_piece_size() < 2**16 else np.uint32)
    cores = os.cpu_count() or 1
    same_output(pool, corpus, out, cfg.docs_per_task, dtype, model, cores)
    runs = {
        "raw-1proc": lambda: sum(map(len, model.encode(texts, num_threads=1))) + 2 * len(texts),
        "raw-pool-split": lambda: sum(pool.map(_count_tokens, [texts[k::workers] for k in range(workers)])),
        "stage-cold": lambda: _stage_cold(corpus, out, dtype, model_file, cfg),
        "stage-warm": lambda: stage_loop(pool, corpus, out, cfg.docs_per_task, dtype, model.get_piece_size()),
        f"stage-warm-d{small}": lambda: stage_loop(pool, corpus, out, small, dtype, model.get_piece_size()),
        f"stage-warm-d{small}-1thr": lambda: stage_loop(pool, corpus, out, small, dtype, model.get_piece_size(),
                                                              _encode_batch_one_thread),
        "numpy-threads": lambda: numpy_threads(model, corpus, out, small, dtype, cores),
    }

    def counted(name: str):
        return lambda: counts.__setitem__(name, runs[name]())

    return {name: counted(name) for name in runs}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="data/corpus/train.jsonl", help="jsonl corpus file")
    parser.add_argument("--tokenizer", default="data/tokenizer/tokenizer.model", help="SentencePiece model")
    parser.add_argument("--synthetic-mb", type=float, default=5.0, help="size of the corpus made when --corpus is missing")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats")
    parser.add_argument("--workers", type=int, default=0, help="pool size (0 = one per core, as the stage)")
    parser.add_argument("--small-tasks", type=int, default=32, help="docs per task of the stage-warm-dN variant")
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    cfg = ShardsConfig(workers=args.workers)
    workers = cfg.workers or cores
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="shard_bench_") as tmp:
        corpus, model_file = prepare(args, Path(tmp))
        out = Path(tmp) / "out"
        out.mkdir()
        with mp.get_context("spawn").Pool(workers, _load_processor, (str(model_file),)) as pool:
            pool.map(_encode_batch, [["warm up"]] * workers)
            contenders = build_contenders(pool, corpus, model_file, out, cfg, args.small_tasks, workers, counts)
            print(machine_line())
            wall = interleaved(contenders, args.repeats, warmup=1)
        corpus_mb = corpus.stat().st_size / 1e6
        vocab = spm.SentencePieceProcessor(model_file=str(model_file)).get_piece_size()
    if len(set(counts.values())) != 1:
        raise RuntimeError(f"token counts differ between contenders: {counts}")
    tokens = counts["raw-1proc"]
    print(f"corpus {args.corpus}: {corpus_mb:.2f} MB of jsonl, vocab {vocab}, {tokens:,} tokens (BOS/EOS "
          f"included); pool of {workers} workers, docs_per_task {cfg.docs_per_task}, {cores} cores")
    print(f"{'contender':>20} {'s':>7} {'spread':>6} {'Mtok/s':>7} {'/ (raw x cores)':>16} {'/ raw-pool-split':>16}")
    for name, times in wall.items():
        print(f"{name:>20} {median(times):7.3f} {spread(times):6.2f} {tokens / median(times) / 1e6:7.2f} "
              f"{paired_ratio(wall, 'raw-1proc', name) / cores:16.3f} {paired_ratio(wall, 'raw-pool-split', name):16.3f}")
    print(f"goal: stage tokens/s / (raw-1proc tokens/s x {cores}) >= 0.8; raw-pool-split / (raw x cores) shows how "
          f"much of the {cores} cores other processes left (ratios: medians of per-repeat ratios)")
    print(machine_line())


def _stage_cold(corpus: Path, out: Path, dtype: np.dtype, model_file: Path, cfg: ShardsConfig) -> int:
    vocab = spm.SentencePieceProcessor(model_file=str(model_file)).get_piece_size()
    writer = ShardWriter(out, "train", dtype, cfg.shard_tokens, vocab)
    encode_split(corpus, writer, model_file, cfg)
    return sum(s["tokens"] for s in writer.shards)


if __name__ == "__main__":
    main()
