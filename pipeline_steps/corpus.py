"""Stage `corpus`: raw text -> `train.jsonl`, `val.jsonl` and `meta.json` in the output folder.

The default corpus comes from pinned registry packages (Austen, WEB and KJV Bibles, WordNet
glosses, Brown); the same stage streams any HF dataset (`kind: hub`) or local text / jsonl /
parquet files (`kind: local`). Documents are filtered by year and split into train / val by a
seeded hash of their split key, so the split never depends on order or on the other documents,
and a Bible chapter lands in the same split in both translations. Each .jsonl line is one
document, {"id", "source", "year", "text"}, its text short lines (verses, paragraphs, sentences).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from pipeline_steps.core.errors import InputError
from pipeline_steps.core.files import atomic_write_json, replace_dir, sha256_file, staging_dir, unit_hash
from pipeline_steps.core.stage_cli import run_stage
from pipeline_steps.core.tracking import Tracker
from pipeline_steps.data.sources import SOURCES, hub, registry_documents
from pipeline_steps.data.sources.document import Document

KINDS = ("registry", "hub", "local")
SPLITS = ("train", "val")


@dataclass(frozen=True)
class CorpusConfig:
    """Where the corpus text comes from, and how it is filtered and split."""

    kind: str = "registry"
    """`registry` (pinned packages), `hub` (an HF dataset, streamed) or `local` (data_files)."""
    sources: tuple[str, ...] = ("austen", "kjv", "wordnet", "brown")
    """Registry sources to include (kind=registry); see `sources.SOURCES`. The default leaves out
    the latest era, `web` (2020): the temporal-shift study's later text."""
    val_fraction: float = 0.05
    """Expected share of documents (by split key) that go to val."""
    seed: int = 0
    """Salts the split hash: another seed, another (equally deterministic) split."""
    min_year: int | None = None
    """Keep documents from this year on (documents of unknown year are dropped when set)."""
    max_year: int | None = None
    """Keep documents up to this year (the temporal study trains on older text)."""
    max_documents: int | None = None
    """Stop after this many documents (registry: a seeded sample across sources)."""
    max_chars: int | None = None
    """Stop once the kept documents hold this many characters."""
    download_dir: str = "cache/downloads"
    """Cache of downloaded registry packages (git-ignored; reused across runs)."""
    hub_name: str | None = None
    """HF dataset name (kind=hub), e.g. `cerebras/SlimPajama-627B`."""
    hub_config: str | None = None
    """HF dataset configuration name, if it has several."""
    hub_split: str = "train"
    """HF split to stream (kind=hub)."""
    text_field: str = "text"
    """Row field holding the text (hub, and local jsonl / parquet)."""
    data_files: tuple[str, ...] = ()
    """Local .txt / .jsonl / .parquet files (kind=local); each file is one source."""
    year: int | None = None
    """Year given to every hub / local document (None: unknown)."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        unknown = sorted(set(self.sources) - set(SOURCES))
        if unknown or len(set(self.sources)) != len(self.sources):
            raise ValueError(f"sources must be distinct names from {sorted(SOURCES)}, "
                             f"got {list(self.sources)}")
        if self.kind == "registry" and not self.sources:
            raise ValueError("sources must name at least one source for kind=registry")
        if None not in (self.min_year, self.max_year) and self.min_year > self.max_year:
            raise ValueError(f"min_year={self.min_year} is after max_year={self.max_year}")
        for name in ("max_documents", "max_chars"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive (or null), got {getattr(self, name)}")
        if self.kind == "hub" and not self.hub_name:
            raise ValueError("hub_name is required for kind=hub")
        if self.kind == "local" and not self.data_files:
            raise ValueError("data_files must list at least one file for kind=local")
        if not self.text_field:
            raise ValueError("text_field must not be empty")


def assign_split(key: str, seed: int, val_fraction: float) -> str:
    return "val" if unit_hash(f"split:{seed}", key) < val_fraction else "train"


def in_years(doc: Document, min_year: int | None, max_year: int | None) -> bool:
    if min_year is None and max_year is None:
        return True
    return (doc.year is not None and (min_year is None or doc.year >= min_year)
            and (max_year is None or doc.year <= max_year))


def take(documents: Iterable[Document], max_documents: int | None,
         max_chars: int | None) -> Iterator[Document]:
    """The first documents up to the caps (the one crossing `max_chars` is the last)."""
    count = chars = 0
    for doc in documents:
        if (max_documents is not None and count >= max_documents) or (
                max_chars is not None and chars >= max_chars):
            return
        count, chars = count + 1, chars + len(doc.text)
        yield doc


def gather(cfg: CorpusConfig) -> tuple[Iterable[Document], dict[str, dict[str, str]]]:
    """The filtered, capped documents (a stream for hub / local) and their provenance."""
    if cfg.kind == "hub":
        stream = hub.hub_documents(cfg.hub_name, cfg.hub_config, cfg.hub_split,
                                   cfg.text_field, cfg.year)
        provenance = hub.hub_provenance(cfg.hub_name, cfg.hub_config, cfg.hub_split)
    elif cfg.kind == "local":
        stream = hub.local_documents(cfg.data_files, cfg.text_field, cfg.year)
        provenance = hub.local_provenance(cfg.data_files)
    else:
        # A source whose years all fall outside the filter is not even downloaded.
        names = tuple(n for n in cfg.sources if SOURCES[n].overlaps(cfg.min_year, cfg.max_year))
        documents, provenance = registry_documents(names, cfg.download_dir)
        kept = [d for d in documents if in_years(d, cfg.min_year, cfg.max_year)]
        # Cap a seeded sample, not the first sources in the list.
        ranked = sorted(kept, key=lambda d: unit_hash(f"order:{cfg.seed}", d.key))
        chosen = {d.id for d in take(ranked, cfg.max_documents, cfg.max_chars)}
        return [d for d in kept if d.id in chosen], provenance
    stream = (d for d in stream if in_years(d, cfg.min_year, cfg.max_year))
    return take(stream, cfg.max_documents, cfg.max_chars), provenance


def write_splits(documents: Iterable[Document], folder: Path, cfg: CorpusConfig) -> dict:
    """Write `{train,val}.jsonl` in document order; counts per split and source."""
    counts: dict[str, dict[str, dict[str, int]]] = {split: {} for split in SPLITS}
    handles = {split: open(folder / f"{split}.jsonl", "w", encoding="utf-8") for split in SPLITS}
    try:
        for doc in tqdm(documents, desc="corpus", unit="doc"):
            split = assign_split(doc.key, cfg.seed, cfg.val_fraction)
            handles[split].write(json.dumps(doc.record(), ensure_ascii=False) + "\n")
            entry = counts[split].setdefault(doc.source, {"documents": 0, "chars": 0})
            entry["documents"] += 1
            entry["chars"] += len(doc.text)
    finally:
        for handle in handles.values():
            handle.close()
    return counts


def _check_counts(counts: dict, cfg: CorpusConfig) -> None:
    sizes = {split: sum(c["documents"] for c in counts[split].values()) for split in SPLITS}
    if not sum(sizes.values()):
        where = (f"sources={list(cfg.sources)}" if cfg.kind == "registry"
                 else f"kind={cfg.kind}, year={cfg.year}")
        raise InputError(f"corpus is empty after the year filter min_year={cfg.min_year}, "
                         f"max_year={cfg.max_year} ({where})")
    for split in SPLITS:
        if not sizes[split] and (split == "train" or cfg.val_fraction > 0):
            raise InputError(f"corpus: the {split} split is empty ({sum(sizes.values())} "
                             f"documents, val_fraction={cfg.val_fraction}); add documents "
                             "or change val_fraction")


def metrics_from(counts: dict) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for split in SPLITS:
        metrics[f"{split}/documents"] = float(sum(c["documents"] for c in counts[split].values()))
        metrics[f"{split}/chars"] = float(sum(c["chars"] for c in counts[split].values()))
        for source, c in counts[split].items():
            for name in ("documents", "chars"):
                key = f"{name}/{source}"
                metrics[key] = metrics.get(key, 0.0) + c[name]
    return metrics


def run(cfg: CorpusConfig, out_dir: str | Path, tracker: Tracker) -> dict[str, float]:
    """Gather, filter and split the corpus into `out_dir` (replaced whole, atomically)."""
    tracker.log_params({f"corpus/{key}": value for key, value in dataclasses.asdict(cfg).items()})
    documents, provenance = gather(cfg)
    out_dir = Path(out_dir)
    staging = staging_dir(out_dir)
    try:
        counts = write_splits(documents, staging, cfg)
        _check_counts(counts, cfg)
        atomic_write_json(staging / "meta.json", {
            "config": dataclasses.asdict(cfg),
            "sources": provenance,
            "counts": counts,
            "files": {f"{s}.jsonl": sha256_file(staging / f"{s}.jsonl") for s in SPLITS},
            "fields": ["id", "source", "year", "text"],
        })
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_dir(staging, out_dir)
    metrics = metrics_from(counts)
    tracker.log_metrics(metrics)
    tracker.log_artifact(out_dir / "meta.json")
    return metrics


def main(argv: list[str] | None = None) -> int:
    return run_stage("corpus", __doc__, CorpusConfig,
                     {"--out": ("data/corpus", "output folder")},
                     lambda cfg, args, tracker: run(cfg, args.out, tracker), argv,
                     summary=lambda m: ", ".join(f"{key}={m[key]:.0f}" for key in (
                         "train/documents", "train/chars", "val/documents", "val/chars")))


if __name__ == "__main__":
    raise SystemExit(main())
