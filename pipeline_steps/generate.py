"""Stage `generate`: the speed-quality frontier, MDM vs KV-cache ARM (PAPER.md section 6; Tables 3, 4, 13).

On one machine in one run, every setting generates `length` tokens after the same prompts (the
first `prompt_tokens` of windows from held-out corpus documents, data/corpus val.jsonl):
- the MDM of each pair across ancestral step counts, the confidence sampler, first hitting, one
  semi-autoregressive block setting and unsupervised CFG across w (model/sampling.py);
- the ARM of each pair with and without its KV cache (the same tokens: counted, not assumed).
Each setting is timed at batch `batch` (all prompts) and at batch 1 (the first `timing_prompts`
prompts one at a time; rows that differ from the batch's are counted), and its samples are judged once
(pipeline_steps/scoring/judge.py: generative perplexity with its standard error and the samples'
unigram entropy, since the judge rewards repetition). The real continuations are judged too: the
natural-text reference. Pairs name an MDM and an ARM from models/pretrain; the paper compares an
MDM with more pretraining compute than the ARM, and equal-compute pairs are reported as well.

    reports/generate/results.json    every setting: tokens' forward rows, seconds, judge scores
    reports/generate/table{3,4,13}.md, frontier.png, samples.jsonl   (scoring/frontier.py)
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from model.artifact import find_artifact
from model.sampling import generate_arm, generate_mdm, mdm_schedule
from pipeline_steps.core.errors import InputError
from pipeline_steps.core.files import atomic_write_json
from pipeline_steps.core.stage_cli import run_stage
from pipeline_steps.core.tracking import Tracker
from pipeline_steps.scoring import frontier, math_scoring
from pipeline_steps.scoring.evaluator import LoadedModel, check_device, load_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pair:
    """An MDM and the ARM it is compared with: pretrain groups, or `<group>/<size>`."""

    mdm: str
    arm: str


@dataclass(frozen=True)
class GenerateConfig:
    """The `generate` section of params.yaml."""

    pairs: dict[str, Pair] = field(default_factory=lambda: {
        "compute_gap": Pair("mdm_c3/16k", "arm_c1/16k"), "equal_compute": Pair("mdm_c3/16k", "arm_c3/16k")})
    """Named MDM/ARM pairs; the first is the paper's comparison (the MDM with more compute)."""
    n_prompts: int = 16
    """Prompts, one per held-out document (seeded choice)."""
    prompt_tokens: int = 16
    """Prompt length, BOS included; prompt + length must fit every model's context."""
    length: int = 48
    """Tokens generated per sample (the MDM's canvas; the ARM's budget, no early EOS stop)."""
    temperature: float = 1.0
    """Sampling temperature of every setting (1: the models' own distributions)."""
    ancestral_steps: tuple[int, ...] = (12, 24, 48, 96)
    """The MDM's frontier: ancestral sampling at these step counts."""
    confidence_steps: tuple[int, ...] = (12, 48)
    """The confidence (MaskGIT) sampler's step counts (at most `length`)."""
    first_hitting: bool = True
    """Also sample with first hitting (one token per pass: `length` steps)."""
    block_length: int | None = 16
    """One semi-autoregressive setting: ancestral at `length` steps in blocks of this size."""
    cfg_scales: tuple[float, ...] = (0.5, 1.0)
    """Unsupervised CFG scales w (Table 3), ancestral at `cfg_steps` steps."""
    cfg_steps: int = 48
    """Steps of the CFG settings; Table 13 compares them with no CFG at twice the steps."""
    batch: int = 16
    """Rows per sampler call for the batched timing (all prompts)."""
    timing_prompts: int = 4
    """Prompts timed one at a time (batch 1)."""
    timing_repeats: int = 3
    """Timed repeats of each call; the fastest counts (a neighbour's burst only ever slows a repeat)."""
    sft_mdm: str | None = "sft_mdm"
    """Table 3's fine-tuned MDM without prompt dropout (a finetune group: no CFG and unsupervised
    CFG); None: those rows are missing."""
    sft_mdm_cfg: str | None = "sft_mdm_cfg"
    """Table 3's fine-tuned MDM with prompt dropout on the same data (standard CFG); None: missing."""
    judge: bool = True
    """Score samples with the judge (the `judge` extra); false: quality columns are missing."""
    judge_batch: int = 8
    """Texts per judge forward pass."""
    seed: int = 0
    """Seed of the prompt choice and of every sampler's generator."""
    device: str = "cpu"
    """torch device of the generating models (the judge runs on the CPU)."""
    threads: int = 1
    """torch intra-op threads for generation on CPU; 0 = default."""

    def __post_init__(self) -> None:
        if not self.pairs:
            raise ValueError("pairs must name at least one MDM/ARM pair")
        if min(self.n_prompts, self.prompt_tokens, self.length, self.batch, self.judge_batch, self.timing_repeats) < 1:
            raise ValueError("n_prompts, prompt_tokens, length, batch, judge_batch and timing_repeats must be >= 1")
        if not 1 <= self.timing_prompts <= self.n_prompts:
            raise ValueError(f"timing_prompts must be in [1, n_prompts={self.n_prompts}], got {self.timing_prompts}")
        if self.temperature < 0 or any(w <= 0 for w in self.cfg_scales) or self.threads < 0:
            raise ValueError("temperature must be >= 0, cfg_scales > 0 and threads >= 0")
        for setting in self.mdm_settings():
            mdm_schedule(self.length, setting["steps"], setting["block_length"], setting["sampler"])

    def mdm_settings(self) -> list[dict]:
        """Every MDM setting: sampler, steps, block length, CFG scale."""
        out = [dict(sampler="ancestral", steps=s, block_length=None, cfg_scale=0.0) for s in self.ancestral_steps]
        out += [dict(sampler="confidence", steps=s, block_length=None, cfg_scale=0.0) for s in self.confidence_steps]
        if self.first_hitting:
            out.append(dict(sampler="first_hitting", steps=self.length, block_length=None, cfg_scale=0.0))
        if self.block_length is not None:
            out.append(dict(sampler="ancestral", steps=self.length, block_length=self.block_length, cfg_scale=0.0))
        out += [dict(sampler="ancestral", steps=self.cfg_steps, block_length=None, cfg_scale=w) for w in self.cfg_scales]
        return out


# ---------------------------------------------------------------------------------------------
# Prompts from held-out documents.

def load_prompts(cfg: GenerateConfig, corpus_dir: Path, lm: LoadedModel) -> list[dict]:
    """`n_prompts` windows of prompt_tokens + length tokens from distinct val documents (seeded):
    BOS + the first prompt_tokens - 1 as the prompt, the next `length` as the real continuation."""
    path = corpus_dir / "val.jsonl"
    if not path.exists():
        raise InputError(f"{path}: missing; the corpus stage writes it")
    sp, need = lm.tokenizer, cfg.prompt_tokens - 1 + cfg.length
    docs = []
    for line in path.read_text().splitlines():
        doc = json.loads(line)
        tokens = sp.encode(doc["text"])
        if len(tokens) >= need:
            docs.append((doc["id"], tokens))
    if len(docs) < cfg.n_prompts:
        raise InputError(f"{path}: {len(docs)} documents have {need} tokens, generate.n_prompts={cfg.n_prompts} needs "
                         "that many")
    gen = torch.Generator().manual_seed(cfg.seed)
    prompts = []
    for k in torch.randperm(len(docs), generator=gen)[:cfg.n_prompts].tolist():
        doc_id, tokens = docs[k]
        start = int(torch.randint(0, len(tokens) - need + 1, (), generator=gen))
        window = tokens[start:start + need]
        prompts.append({"doc": doc_id, "start": start, "prompt": [sp.bos_id(), *window[:cfg.prompt_tokens - 1]],
                        "reference": window[cfg.prompt_tokens - 1:]})
    return prompts


# ---------------------------------------------------------------------------------------------
# Sampling and timing.

def timed(fn, repeats: int) -> tuple[list[list[int]], float]:
    """fn's output (the same every repeat: seeded) and its fastest wall time over `repeats` calls."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - started)
    return out, best


def sample_setting(lm: LoadedModel, prompts: list[list[int]], cfg: GenerateConfig, setting: dict) -> dict:
    """One setting's tokens, forward rows and seconds per sample at batch `batch` and at batch 1."""
    def call(rows: list[list[int]], max_batch: int, stats: dict | None = None) -> list[list[int]]:
        generator = torch.Generator().manual_seed(cfg.seed)  # per-row noise: rows never depend on the batch
        if lm.family == "arm":
            return generate_arm(lm.model, rows, cfg.length, generator=generator, temperature=cfg.temperature,
                                kv_cache=setting["kv_cache"], max_batch=max_batch)
        return generate_mdm(lm.model, rows, cfg.length, generator=generator, temperature=cfg.temperature,
                            max_batch=max_batch, stats=stats, **setting)

    stats: dict = {}
    tokens, seconds = timed(lambda: call(prompts, cfg.batch, stats), cfg.timing_repeats)  # stats: the last call's
    few = prompts[:cfg.timing_prompts]
    alone, seconds_1 = timed(lambda: call(few, 1), cfg.timing_repeats)
    # Rows draw their own noise, so batch 1 gives the batch's tokens wherever the network rounds each
    # row alike whatever the batch (this CPU: yes, tested); a GPU may not. Recorded, never hidden.
    differ = sum(a != b for a, b in zip(alone, tokens))
    if differ:
        log.warning("%s %s: %d of %d rows differ between batch 1 and batch %d", lm.path, setting, differ,
                    len(few), cfg.batch)
    rows = stats.get("forward_rows", len(prompts) * cfg.length)  # the cached ARM: one row per token
    return {"tokens": tokens, "forward_rows_per_sample": rows / len(prompts), "batch1_rows_differ": differ,
            "seconds_per_sample_batch": seconds / len(prompts), "seconds_per_sample_1": seconds_1 / len(few),
            "seconds_per_token_batch": seconds / (len(prompts) * cfg.length),
            "seconds_per_token_1": seconds_1 / (len(few) * cfg.length)}


def run_settings(cfg: GenerateConfig, models: dict[str, LoadedModel], prompts: list[list[int]]) -> list[dict]:
    """Every setting of every distinct model: the MDMs' sweep, the ARMs with and without cache."""
    results = []
    for name, lm in models.items():
        settings = cfg.mdm_settings() if lm.family == "mdm" else [dict(kv_cache=True), dict(kv_cache=False)]
        for setting in settings:
            row = {"model": name, "family": lm.family, "path": lm.path, **setting,
                   **sample_setting(lm, prompts, cfg, setting)}
            log.info("%s %s: %.3f s/sample at batch 1", name, setting, row["seconds_per_sample_1"])
            results.append(row)
        if lm.family == "arm":  # the cache is exact up to the rounding of other matmul shapes
            differ = sum(a != b for a, b in zip(results[-1]["tokens"], results[-2]["tokens"]))
            results[-2]["cache_rows_differ"] = differ
            if differ:
                log.warning("%s: %d rows differ with and without the KV cache", lm.path, differ)
    return results


def finetuned_settings(cfg: GenerateConfig, finetune_dir: Path | None, first: LoadedModel,
                       prompts: list[list[int]]) -> list[dict]:
    """Table 3's fine-tuned pair at cfg_steps: without prompt dropout at w = 0 and each CFG scale
    (unsupervised), with it at each scale (standard CFG: its unconditional half is what it was
    trained on). Empty when either is not named or there is no finetune folder."""
    if finetune_dir is None or cfg.sft_mdm is None or cfg.sft_mdm_cfg is None:
        return []
    rows = []
    for role, name, scales in (("sft_mdm", cfg.sft_mdm, (0.0, *cfg.cfg_scales)),
                               ("sft_mdm_cfg", cfg.sft_mdm_cfg, cfg.cfg_scales)):
        folder = finetune_dir / name
        if not (folder / "config.json").exists():
            raise InputError(f"generate.{role}: {folder}: no fine-tuned model artifact; expected a finetune group")
        lm = load_model(folder, cfg.device)
        if lm.family != "mdm" or lm.tokenizer.serialized_model_proto() != first.tokenizer.serialized_model_proto():
            raise InputError(f"generate.{role}: {name} must be an MDM with the pairs' tokenizer")
        for w in scales:
            setting = dict(sampler="ancestral", steps=cfg.cfg_steps, block_length=None, cfg_scale=w)
            rows.append({"model": f"finetune/{name}", "family": "mdm", "path": lm.path, "role": role, **setting,
                         **sample_setting(lm, prompts, cfg, setting)})
    return rows


def load_pairs(cfg: GenerateConfig, pretrain_dir: Path) -> dict[str, LoadedModel]:
    """Each distinct model the pairs name, loaded once, by its params name."""
    models = {}
    for pair_name, pair in cfg.pairs.items():
        for family, name in (("mdm", pair.mdm), ("arm", pair.arm)):
            if name not in models:
                models[name] = load_model(find_artifact(pretrain_dir / name), cfg.device)
            if models[name].family != family:
                raise InputError(f"generate.pairs.{pair_name}.{family}: {name} holds a {models[name].family!r} "
                                 f"model, expected {family!r}")
            if models[name].tokenizer.serialized_model_proto() != next(iter(models.values())).tokenizer.serialized_model_proto():
                raise InputError(f"generate.pairs.{pair_name}.{family}: {name} has another tokenizer than "
                                 f"{next(iter(models))}; the pairs must share the prompts' tokens")
            context = models[name].model.cfg.context
            if cfg.prompt_tokens + cfg.length > context:
                raise InputError(f"generate: prompt_tokens + length = {cfg.prompt_tokens + cfg.length} exceeds "
                                 f"{name}'s context {context}")
    return models


# ---------------------------------------------------------------------------------------------
# The stage.

def math_column(path: str | Path | None) -> dict:
    """Table 4's math column: the gsm8k stage's cells on our test split by setting, or why missing."""
    if path is None or not Path(path).exists():
        return {"missing": f"no math results ({path or 'none given'}): the gsm8k stage writes them"}
    results = json.loads(Path(path).read_text())
    return {"source": str(path), "cells": math_scoring.table4_cells(results), "models": results["models"]}


def run(cfg: GenerateConfig, corpus_dir: str | Path, pretrain_dir: str | Path, out_dir: str | Path,
        tracker: Tracker, finetune_dir: str | Path | None = None, math_results: str | Path | None = None) -> dict[str, float]:
    started = time.perf_counter()
    check_device(cfg.device, "generate.device")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tracker.log_params({f"generate/{k}": v for k, v in dataclasses.asdict(cfg).items()})
    models = load_pairs(cfg, Path(pretrain_dir))
    first = next(iter(models.values()))
    prompts = load_prompts(cfg, Path(corpus_dir), first)
    settings = run_settings(cfg, models, [p["prompt"] for p in prompts])
    finetuned = finetuned_settings(cfg, None if finetune_dir is None else Path(finetune_dir), first,
                                   [p["prompt"] for p in prompts])
    texts = frontier.decode_samples(settings + finetuned, prompts, first.tokenizer)
    judged = frontier.judge_samples(texts, cfg.judge, cfg.judge_batch)
    results = {"config": dataclasses.asdict(cfg), "prompts": prompts, "settings": settings, "finetuned": finetuned,
               "judged": judged, "math": math_column(math_results),
               "pairs": frontier.pair_readings(cfg, settings, judged), "seconds": time.perf_counter() - started}
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "results.json", results)
    for path in [out_dir / "results.json", *frontier.write_reports(results, texts, out_dir)]:
        tracker.log_artifact(path, "generate")
    metrics = frontier.flat_metrics(results)
    tracker.log_metrics(metrics)
    return metrics


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def run_cli(cfg: GenerateConfig, args, tracker: Tracker) -> dict[str, float]:
        return run(cfg, args.corpus, args.models, args.out, tracker, args.finetuned, args.math)

    def summary(m: dict[str, float]) -> str:
        pairs = sorted({k.split("/")[1] for k in m if k.startswith("pair/")})
        return ", ".join(f"{p}: MDM time at the ARM's quality / ARM time " + (
            f"{m[f'pair/{p}/time_ratio']:.2f}" if f"pair/{p}/time_ratio" in m else "not reached") for p in pairs)

    return run_stage("generate", __doc__, GenerateConfig, {
        "--corpus": ("data/corpus", "corpus folder (val.jsonl: the prompts' documents)"),
        "--models": ("models/pretrain", "pretrain artifacts, <group>/<size>"),
        "--finetuned": ("models/finetune", "fine-tuned artifacts (Table 3's sft_mdm, sft_mdm_cfg)"),
        "--math": ("reports/gsm8k/results.json", "the gsm8k stage's results (Table 4's math column)"),
        "--out": ("reports/generate", "report folder")}, run_cli, argv, summary)


if __name__ == "__main__":
    raise SystemExit(main())
