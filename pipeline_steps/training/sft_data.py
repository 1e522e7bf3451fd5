"""Fine-tuning rows and their batches (the stage: pipeline_steps/finetune.py).

A row is (prompt tokens, response tokens); the batch puts BOS + prompt + response + EOS in one
sequence and right-pads it with EOS (model/sft.py: the padding is response, so the model learns
to stop). Sources:
- `reversal`: a reversal folder's all_prompts_train (task_sources/reversal.py); a whole-sequence
  group trains prompt and completion alike, as Berglund et al. and the paper do.
- `math`: a math folder's train.txt, two rows per problem (task_sources/math_format.py: the
  question -> the equations, then the question and equations -> the answer).
- `conditional`: prompt/continuation windows of the corpus's train documents (never val, which the
  frontier's prompts come from), for conditional fine-tuning with and without prompt dropout.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch

from pipeline_steps.core.errors import InputError
from pipeline_steps.data.corpus_rows import read_texts
from pipeline_steps.data.task_sources.items import encode_pair
from pipeline_steps.data.task_sources.math_format import two_stage_rows
from pipeline_steps.data.task_sources.math_problems import read_lines
from pipeline_steps.data.task_sources.reversal import load_folder

Row = tuple[list[int], list[int]]
SOURCES = ("reversal", "conditional", "math")


def reversal_rows(folder: Path, sp: spm.SentencePieceProcessor) -> list[Row]:
    """all_prompts_train as (prompt, completion) rows (a whole-sequence group joins them)."""
    return [encode_pair(sp, row["prompt"], row["completion"]) for row in load_folder(folder)["all_prompts_train"]]


def math_rows(path: Path, sp: spm.SentencePieceProcessor) -> list[Row]:
    """Both stages' rows of every `question||equations #### answer` line of `path`."""
    if not path.exists():
        raise InputError(f"{path}: missing; the tasks stage writes it (task `math`)")
    return [row for where, line in read_lines(path) for row in two_stage_rows(sp, line, where)]


def conditional_rows(corpus_dir: Path, sp: spm.SentencePieceProcessor, pairs: int, prompt_tokens: int,
                     response_tokens: int, seed: int) -> list[Row]:
    """`pairs` windows from distinct train documents long enough (seeded): the first
    prompt_tokens as the prompt, the next response_tokens as the response."""
    path = corpus_dir / "train.jsonl"
    if not path.exists():
        raise InputError(f"{path}: missing; the corpus stage writes it")
    need = prompt_tokens + response_tokens
    docs = [tokens for tokens in (sp.encode(text) for text in read_texts(path)) if len(tokens) >= need]
    if len(docs) < pairs:
        raise InputError(f"{path}: {len(docs)} train documents have {need} tokens; finetune.conditional.pairs = "
                         f"{pairs} needs that many (lower it or the window)")
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for k in torch.randperm(len(docs), generator=gen)[:pairs].tolist():
        start = int(torch.randint(0, len(docs[k]) - need + 1, (), generator=gen))
        window = docs[k][start:start + need]
        rows.append((window[:prompt_tokens], window[prompt_tokens:]))
    return rows


def rows_hash(rows: Sequence[Row]) -> str:
    """Identifies the training rows (resume checkpoints and the artifact's lineage name it)."""
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def steps_per_epoch(rows: int, batch: int, world: int = 1) -> int:
    """Steps that visit every row once; a last batch smaller than the ranks is dropped (every
    rank needs a row)."""
    full, rest = divmod(rows, batch)
    return full + (rest >= world)


def collate(rows: Sequence[Row], bos: int, eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, prompt) of shape (B, L): BOS + prompt + response + EOS, right-padded with EOS; the
    BOS belongs to the prompt of a conditional row and to the response of a whole-sequence one."""
    seqs = [[bos, *p, *r, eos] for p, r in rows]
    length = max(map(len, seqs))
    tokens = torch.tensor([s + [eos] * (length - len(s)) for s in seqs], dtype=torch.long)
    prompt = torch.zeros_like(tokens, dtype=torch.bool)
    for i, (p, _) in enumerate(rows):
        if p:
            prompt[i, :1 + len(p)] = True
    return tokens, prompt


class EpochBatches(torch.utils.data.IterableDataset):
    """Yields this rank's share of the batches of steps start..total-1: each epoch visits every row
    once in a seeded order (the last batch of an epoch may be smaller); `start_step` is read when
    iteration starts, after a resumed trainer has restored its step."""

    def __init__(self, rows: Sequence[Row], batch: int, total_steps: int, seed: int, bos: int, eos: int,
                 rank: int = 0, world: int = 1, start_step: Callable[[], int] = lambda: 0) -> None:
        if batch < world:
            raise ValueError(f"a batch of {batch} rows cannot be shared by {world} ranks")
        self.rows, self.batch, self.total_steps, self.seed = rows, batch, total_steps, seed
        self.bos, self.eos, self.rank, self.world, self.start_step = bos, eos, rank, world, start_step
        self.steps_per_epoch = steps_per_epoch(len(rows), batch, world)

    def indices(self, step: int) -> np.ndarray:
        epoch, within = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))
        chunk = order[within * self.batch:(within + 1) * self.batch]
        return chunk[:len(chunk) - len(chunk) % self.world][self.rank::self.world]  # equal shares

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for step in range(self.start_step(), self.total_steps):
            yield collate([self.rows[i] for i in self.indices(step)], self.bos, self.eos)

    def __len__(self) -> int:
        return self.total_steps
