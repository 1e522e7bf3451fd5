"""Stage `temporal`: does an MDM degrade less than an ARM on text written after its training data?
(PAPER.md section 9; Table 6.)

The pretraining corpus leaves its latest era out (the default: the World English Bible, 2020),
so the grid's models have seen only older text. An ARM and an MDM with similar in-distribution
validation loss (picked from the grid's run records, or named) read:
- `same`: held-out documents of the training eras, the corpus's val split (`same_sources`);
- each `later` text: a registry source (its documents paired by chapter with the val documents
  of `pair_with`: the WEB's val chapters are the KJV's val chapters in modern English, so the
  content is the same and only the era's language differs), or an HF dataset / local files (the
  paper's FineWeb dumps), never a document pretraining saw.
Each document contributes its first `tokens` tokens after BOS. Per text and model: the ARM's exact
perplexity, the MDM's ELBO bound (Monte Carlo, with its standard error: pessimistic by design)
and its chain-rule estimate. The claim is read from the change in log-perplexity, later minus
same, per model (scoring/temporal_scoring.py).

    reports/temporal/results.json, table6.md
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from model.artifact import find_artifact
from model.likelihood import MonteCarloConfig, arm_log_likelihood, mdm_chain_rule_log_likelihood, mdm_elbo_log_likelihood
from pipeline_steps.core.errors import InputError
from pipeline_steps.core.files import atomic_write_json, atomic_write_text
from pipeline_steps.core.stage_cli import run_stage
from pipeline_steps.core.tracking import Tracker
from pipeline_steps.data.corpus_rows import read_rows
from pipeline_steps.data.sources import SOURCES, hub, registry_documents
from pipeline_steps.scoring import temporal_scoring as ts
from pipeline_steps.scoring.evaluator import LoadedModel, check_device, load_model


@dataclass(frozen=True)
class LaterText:
    """Text from after the training data: a registry source, an HF dataset or local files."""

    kind: str = "registry"
    """`registry`, `hub` or `local`."""
    source: str = "web"
    """Registry source name (kind registry)."""
    pair_with: str | None = "kjv"
    """Keep only documents whose chapter is a val document of this corpus source (kind registry)."""
    hub_name: str | None = None
    """HF dataset (kind hub), e.g. HuggingFaceFW/fineweb."""
    hub_config: str | None = None
    """Its configuration, e.g. CC-MAIN-2024-10."""
    hub_split: str = "train"
    """Its split."""
    data_files: tuple[str, ...] = ()
    """Local .txt / .jsonl / .parquet files (kind local)."""
    text_field: str = "text"
    """Row field holding the text (hub, local)."""
    year: int | None = 2020
    """The text's year, for the table."""

    def __post_init__(self) -> None:
        if self.kind not in ("registry", "hub", "local"):
            raise ValueError(f"kind must be registry, hub or local, got {self.kind!r}")
        if self.kind == "registry" and self.source not in SOURCES:
            raise ValueError(f"source must be one of {sorted(SOURCES)}, got {self.source!r}")
        if (self.kind, bool(self.hub_name), bool(self.data_files)) in (("hub", False, False), ("local", False, False)):
            raise ValueError(f"kind {self.kind} needs {'hub_name' if self.kind == 'hub' else 'data_files'}")


@dataclass(frozen=True)
class TemporalConfig:
    """The `temporal` section of params.yaml."""

    same_sources: tuple[str, ...] = ("kjv",)
    """In-distribution text: val documents of these corpus sources (empty: every val document)."""
    later: dict[str, LaterText] = field(default_factory=lambda: {"web_2020": LaterText()})
    """Named later texts, one Table 6 row each."""
    mdm: str | None = None
    """The MDM, `<group>/<size>` of models/pretrain; None: picked with `arm` from the grid records."""
    arm: str | None = None
    """The ARM; None: the grid pair whose validation losses are closest."""
    documents: int = 48
    """Documents per text at most (the first ones)."""
    tokens: int = 63
    """Tokens per document after BOS (at most the models' context - 1)."""
    mc: MonteCarloConfig = MonteCarloConfig(n_samples=16, block_size=8)
    """The MDM's ELBO samples per document."""
    download_dir: str = "cache/downloads"
    """Registry package cache (shared with the corpus stage)."""
    max_batch: int = 64
    """Rows per forward pass."""
    device: str = "cpu"
    """torch device."""
    threads: int = 1
    """torch intra-op threads on CPU; 0 = default."""

    def __post_init__(self) -> None:
        if not self.later:
            raise ValueError("later must name at least one later text")
        if (self.mdm is None) != (self.arm is None):
            raise ValueError("name both mdm and arm, or neither (picked from the grid by validation loss)")
        if min(self.documents, self.tokens, self.max_batch) < 1 or self.threads < 0:
            raise ValueError("documents, tokens and max_batch must be >= 1, threads >= 0")


def pick_pair(runs_dir: Path) -> tuple[dict, dict]:
    """The grid's MDM and ARM run records whose validation losses are closest."""
    records = [json.loads(line) | {"group": path.stem} for path in sorted(runs_dir.glob("*.jsonl"))
               for line in path.read_text().splitlines() if line.strip()]
    by_family = {f: [r for r in records if r["family"] == f] for f in ("mdm", "arm")}
    if not all(by_family.values()):
        raise InputError(f"{runs_dir}: run records of both families needed to pick the pair; found "
                         f"{ {f: len(r) for f, r in by_family.items()} }")
    return min(((m, a) for m in by_family["mdm"] for a in by_family["arm"]),
               key=lambda p: (abs(p[0]["val/loss"] - p[1]["val/loss"]), p[0]["group"], p[1]["group"]))


def same_documents(cfg: TemporalConfig, corpus_dir: Path) -> list[dict]:
    rows = [r for r in read_rows(corpus_dir / "val.jsonl", ("id", "source", "text"))
            if not cfg.same_sources or r["source"] in cfg.same_sources]
    if not rows:
        raise InputError(f"{corpus_dir / 'val.jsonl'}: no val document of temporal.same_sources "
                         f"{list(cfg.same_sources)}")
    return rows


def seen_eras(cfg: TemporalConfig, corpus_dir: Path) -> dict[str, str]:
    """Later texts whose registry source the pretraining corpus holds (data/corpus/meta.json): their
    era is not later for these models (the cpu-study corpus keeps the WEB), so they are not read."""
    try:
        corpus = json.loads((corpus_dir / "meta.json").read_text())["config"]
        sources, years = corpus["sources"], (corpus.get("min_year"), corpus.get("max_year"))
    except (FileNotFoundError, KeyError, ValueError):
        return {}
    return {name: f"{t.source} is in the pretraining corpus (corpus.sources, years {years})"
            for name, t in cfg.later.items()
            if t.kind == "registry" and t.source in sources and SOURCES[t.source].overlaps(*years)}


def later_documents(name: str, text: LaterText, corpus_dir: Path, download_dir: str) -> list[dict]:
    if text.kind == "registry":
        docs, _ = registry_documents((text.source,), download_dir)
        rows = [{"id": d.id, "source": d.source, "text": d.text} for d in docs]
        if text.pair_with is not None:  # the same chapters as the pair source's val documents
            order = {r["id"].split("/", 1)[1]: k for k, r in enumerate(
                r for r in read_rows(corpus_dir / "val.jsonl", ("id", "source")) if r["source"] == text.pair_with)}
            rows = sorted((r for r in rows if r["id"].split("/", 1)[1] in order),  # in the pair's val order
                          key=lambda r: order[r["id"].split("/", 1)[1]])
    else:
        docs = (hub.hub_documents(text.hub_name, text.hub_config, text.hub_split, text.text_field, text.year)
                if text.kind == "hub" else hub.local_documents(text.data_files, text.text_field, text.year))
        rows = [{"id": d.id, "source": d.source, "text": d.text} for d in docs]
    if not rows:
        raise InputError(f"temporal.later.{name}: no documents (kind {text.kind})")
    return rows


def windows(lm: LoadedModel, rows: list[dict], cfg: TemporalConfig) -> tuple[list, list[str]]:
    """Per document (the first `documents`), BOS and its first `tokens` tokens as a request, and
    the document's chapter key (its id after the source: what pairs a WEB chapter with a KJV one)."""
    sp, bos = lm.tokenizer, lm.tokenizer.bos_id()
    out, keys = [], []
    for row in rows:
        tokens = sp.encode(row["text"])[:cfg.tokens]
        if len(tokens) >= 2:
            out.append(([bos], tokens))
            keys.append(row["id"].split("/", 1)[-1])
        if len(out) == cfg.documents:
            break
    return out, keys


def score_text(lm: LoadedModel, requests: list, cfg: TemporalConfig) -> dict:
    """Per-token NLL estimates of one text under one model, with standard errors."""
    lengths = [len(c) for _, c in requests]
    if lm.family == "arm":
        est = arm_log_likelihood(lm.model, requests, max_batch=cfg.max_batch)
        return {"exact": ts.per_token([-e.logprob for e in est], lengths)}
    elbo = mdm_elbo_log_likelihood(lm.model, requests, cfg.mc, max_batch=cfg.max_batch)
    chain = mdm_chain_rule_log_likelihood(lm.model, requests, max_batch=cfg.max_batch)
    return {"elbo": ts.per_token([-e.logprob for e in elbo], lengths, [e.stderr for e in elbo]),
            "chain": ts.per_token([-e.logprob for e in chain], lengths)}  # each keeps its per-document NLLs


def run(cfg: TemporalConfig, corpus_dir: str | Path, pretrain_dir: str | Path, runs_dir: str | Path,
        out_dir: str | Path, tracker: Tracker) -> dict[str, float]:
    started = time.perf_counter()
    check_device(cfg.device, "temporal.device")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    corpus_dir, pretrain_dir = Path(corpus_dir), Path(pretrain_dir)
    if cfg.mdm is None:
        mdm_record, arm_record = pick_pair(Path(runs_dir))
        names = {"mdm": f"{mdm_record['group']}/{mdm_record['size']}", "arm": f"{arm_record['group']}/{arm_record['size']}"}
    else:
        names = {"mdm": cfg.mdm, "arm": cfg.arm}
    models = {f: load_model(find_artifact(pretrain_dir / n), cfg.device) for f, n in names.items()}
    for family, lm in models.items():
        if lm.family != family:
            raise InputError(f"temporal.{family}: {names[family]} holds a {lm.family!r} model, expected {family!r}")
        if cfg.tokens + 1 > lm.model.cfg.context:
            raise InputError(f"temporal.tokens = {cfg.tokens}: + BOS exceeds {names[family]}'s context "
                             f"{lm.model.cfg.context}")
    seen = seen_eras(cfg, corpus_dir)
    texts = {"same": same_documents(cfg, corpus_dir)}
    texts.update({name: later_documents(name, t, corpus_dir, cfg.download_dir) for name, t in cfg.later.items()})
    tracker.log_params({f"temporal/{k}": v for k, v in dataclasses.asdict(cfg).items()} | {
        "temporal/mdm_used": names["mdm"], "temporal/arm_used": names["arm"]})
    scores = {}
    for text, rows in texts.items():
        scores[text] = {}
        for family, lm in models.items():
            requests, keys = windows(lm, rows, cfg)
            scores[text][family] = {"documents": len(requests), "tokens": sum(len(c) for _, c in requests),
                                    "keys": keys, "lengths": [len(c) for _, c in requests],
                                    **score_text(lm, requests, cfg)}
    results = {"config": dataclasses.asdict(cfg), "models": names,
               "val_loss": {f: lm.config.get("run", {}).get("val/loss") for f, lm in models.items()},
               "scores": scores, "reading": ts.reading(scores, list(cfg.later), seen,
                                                       {n for n, t in cfg.later.items() if t.pair_with}),
               "seconds": time.perf_counter() - started}
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "results.json", results)
    atomic_write_text(out_dir / "table6.md", ts.table6(results))
    for name in ("results.json", "table6.md"):
        tracker.log_artifact(out_dir / name, "temporal")
    metrics = ts.flat_metrics(results)
    tracker.log_metrics(metrics)
    return metrics


def main(argv: list[str] | None = None) -> int:
    def run_cli(cfg: TemporalConfig, args, tracker: Tracker) -> dict[str, float]:
        return run(cfg, args.corpus, args.models, args.runs, args.out, tracker)

    return run_stage("temporal", __doc__, TemporalConfig, {
        "--corpus": ("data/corpus", "corpus folder (val.jsonl: the in-distribution text)"),
        "--models": ("models/pretrain", "pretrain artifacts, <group>/<size>"),
        "--runs": ("runs/grid", "the grid's run records (the pair's validation losses)"),
        "--out": ("reports/temporal", "report folder")}, run_cli, argv,
        lambda m: "; ".join(f"{k}: {v:+.3f}" for k, v in m.items() if k.startswith("delta/")))


if __name__ == "__main__":
    raise SystemExit(main())
