"""Training and validating the runs of one pretraining group (the stage: pipeline_steps/pretrain.py)."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import lightning as L
import sentencepiece as spm
import torch

from model.artifact import save_artifact
from model.config import config_for
from model.flops import budget_flops, steps_for_budget, training_matmul_flops
from model.objectives import arm_validation_nll, mdm_validation_elbo, stratified_noise
from model.transformer import Transformer
from pipeline_steps.core.errors import InputError
from pipeline_steps.core.files import replace_dir, sha256_file, staging_dir
from pipeline_steps.core.run_tracking import child_tracker
from pipeline_steps.core.tracking import Tracker
from pipeline_steps.training.config import GroupConfig, PretrainConfig
from pipeline_steps.training.system import TrainingSystem
from pipeline_steps.training.token_windows import (
    n_windows,
    open_split,
    read_meta,
    unused_tail_tokens,
    validation_windows,
)

RECORD = "run.json"


def run_key(cfg: PretrainConfig, group: GroupConfig, size: str, data_hash: str) -> str:
    """Identifies a run's resume checkpoints: any change of settings starts afresh."""
    text = json.dumps([repr(cfg.train), repr(cfg.optim), repr(group), size, data_hash])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_data(cfg: PretrainConfig, shards: Path, tokenizer: Path) -> None:
    """What the runs need of the data, checked before the first one trains (params alone are
    checked when the config is built)."""
    tokenizer_file = tokenizer / "tokenizer.model"
    tokenizer_sha = sha256_file(tokenizer_file)
    read_meta(shards, spm.SentencePieceProcessor(model_file=str(tokenizer_file)).get_piece_size())
    seq_len, batch, wanted = cfg.train.seq_len, cfg.train.global_batch, cfg.validation.windows

    def enough(split: str, needed: int, expected: str) -> None:
        stream = open_split(shards, split, tokenizer_sha)
        have = n_windows(stream, seq_len)
        if have < needed:
            raise InputError(f"{shards / 'meta.json'}: the {split} split has {stream.n_tokens} tokens, {have} window(s) "
                             f"of seq_len + 1 = {seq_len + 1} tokens; expected at least {expected}")

    enough("train", batch, f"one global batch of {batch} (lower pretrain.train.seq_len or global_batch, or add data)")
    enough("val", wanted, f"pretrain.validation.windows = {wanted} (lower it or seq_len, or add data)")


def make_trainer(cfg: PretrainConfig, steps: int, ckpt_dir: Path, logger) -> L.Trainer:
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=ckpt_dir, every_n_train_steps=cfg.train.checkpoint_every, save_last=True, save_top_k=0)
    return L.Trainer(
        max_steps=steps, accelerator=cfg.train.accelerator, devices=cfg.train.devices,
        num_nodes=cfg.train.num_nodes, strategy=cfg.train.strategy, precision=cfg.train.precision,
        gradient_clip_val=cfg.train.grad_clip, callbacks=[checkpoint], logger=logger,
        log_every_n_steps=cfg.train.log_every, limit_val_batches=0, num_sanity_val_steps=0,
        enable_model_summary=False, use_distributed_sampler=False, default_root_dir=str(ckpt_dir))


def validate(model: Transformer, cfg: PretrainConfig, shards: Path, tokenizer_sha: str) -> tuple[float, float]:
    """Val loss and its Monte Carlo standard error (0 for the ARM's exact NLL)."""
    val = validation_windows(open_split(shards, "val", tokenizer_sha), cfg.train.seq_len, cfg.validation.windows)
    model.eval()
    device = next(model.parameters()).device
    val = val.to(device)
    if model.cfg.family == "arm":
        return arm_validation_nll(model, val, cfg.validation.batch_size), 0.0
    p, masks = stratified_noise(val.shape[0], cfg.train.seq_len, cfg.validation.mc_samples,
                                cfg.validation.noise_seed, cfg.train.mask_eps)
    return mdm_validation_elbo(model, val, p, masks, cfg.validation.batch_size)


def train_one(cfg: PretrainConfig, group: GroupConfig, size: str, shards: Path, tokenizer: Path,
              out_dir: Path, tracker: Tracker) -> dict | None:
    """Train, validate and save one run; returns its run record (None on ranks other than 0)."""
    tokenizer_file = tokenizer / "tokenizer.model"
    tokenizer_sha = sha256_file(tokenizer_file)
    stream = open_split(shards, "train", tokenizer_sha)
    meta = stream.meta
    train = cfg.train
    model_cfg = config_for(size, group.family, meta["vocab_size"], train.seq_len)
    steps = steps_for_budget(group.flops, model_cfg.n_params, train.global_batch, train.seq_len)
    if steps < 200:
        warnings.warn(f"{group.family} {size} at {group.flops:.3g} FLOPs trains only {steps} steps (< 200)",
                      stacklevel=2)
    lr = group.lr.get(size, cfg.optim.lr)
    optim = cfg.optim if lr == cfg.optim.lr else type(cfg.optim)(**{**cfg.optim.__dict__, "lr": lr})
    if train.threads:
        torch.set_num_threads(train.threads)
    L.seed_everything(train.seed, workers=True, verbose=False)
    model = Transformer(model_cfg)
    system = TrainingSystem(model, optim, stream, train.seq_len, train.global_batch, steps, train.seed,
                            train.mask_eps, group.stochastic_length_ratio)
    key = run_key(cfg, group, size, meta["data_hash"])
    ckpt_dir = Path(train.checkpoint_dir) / key
    tracker.log_params({"family": group.family, "size": size, "n_params": model_cfg.n_params,
                        "steps": steps, "lr": lr, "budget": group.flops, "seq_len": train.seq_len,
                        "global_batch": train.global_batch, "warmup_steps": optim.warmup_steps(steps),
                        "stochastic_length_ratio": group.stochastic_length_ratio})
    logger = lightning_logger(tracker)
    trainer = make_trainer(cfg, steps, ckpt_dir, logger)
    resume = ckpt_dir / "last.ckpt"
    resumed = resume.exists()
    started = time.perf_counter()
    trainer.fit(system, ckpt_path=str(resume) if resumed else None)
    seconds = time.perf_counter() - started
    tokens = system.trained_tokens  # steps x B x L, less what stochastic-length steps cut
    record = {"family": group.family, "size": size, "n_params": model_cfg.n_params,
              "flops": budget_flops(model_cfg.n_params, tokens), "budget": group.flops, "tokens": tokens,
              "steps": steps, "lr": lr, "seconds": seconds, "data_hash": meta["data_hash"],
              "tokenizer_hash": tokenizer_sha,
              "unused_tail_tokens": unused_tail_tokens(stream, train.seq_len),
              "stochastic_length_ratio": group.stochastic_length_ratio, "run_key": key,
              "resumed": resumed}
    if trainer.global_rank != 0:
        return None  # rank 0 validates and saves; the other ranks only trained
    record["train/loss"] = sum(system.recent_losses[-20:]) / max(1, len(system.recent_losses[-20:]))
    record["val/loss"], record["val/loss_stderr"] = validate(model, cfg, shards, tokenizer_sha)
    matmul = sum(training_matmul_flops(model_cfg, train.global_batch, length) * n
                 for length, n in system.lengths.items())
    record["matmul_flops_per_second"] = matmul / seconds
    record["tokens_per_second"] = tokens / seconds
    stage = staging_dir(out_dir / size)
    save_artifact(model, stage, tokenizer_file, {"size": size, "run": record})
    (stage / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    replace_dir(stage, out_dir / size)
    tracker.log_metrics({k: v for k, v in record.items() if "/" in k or k.endswith("per_second")})
    if not train.keep_checkpoints:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return record


def lightning_logger(tracker: Tracker):
    """Lightning's MLFlowLogger writing the curves into this run's MLflow run, if there is one."""
    run_id = getattr(tracker, "run_id", None)
    if run_id is None:
        return False
    from lightning.pytorch.loggers import MLFlowLogger

    return MLFlowLogger(tracking_uri=tracker.tracking_uri, run_id=run_id)


def run_group(cfg: PretrainConfig, name: str, shards: Path, tokenizer: Path, out_dir: Path,
              tracker: Tracker) -> list[dict] | None:
    """Every run of the group, `train.parallel_runs` at a time; finished runs (run.json) are kept.

    Returns None on data-parallel ranks other than 0, which train but write nothing.
    """
    group = cfg.group(name)
    check_data(cfg, shards, tokenizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_hash = read_meta(shards).get("data_hash")
    records: dict[str, dict | None] = {}
    pending = []
    for size in group.sizes:
        done = out_dir / size / RECORD
        if done.exists():
            record = json.loads(done.read_text())
            if record.get("run_key") == run_key(cfg, group, size, record.get("data_hash", "")):
                records[size] = record
                continue
        pending.append(size)

    def train_tracked(size: str, pool=None) -> None:
        with child_tracker(tracker, f"{group.family}-{size}-{name}",
                           {"family": group.family, "size": size, "smdm_stage": f"pretrain@{name}"},
                           data_hash=data_hash) as run:
            if pool is None:
                records[size] = train_one(cfg, group, size, shards, tokenizer, out_dir, run)
            else:  # the child MLflow run stays open here; the worker writes to it by id
                mlflow_run = (run.tracking_uri, run.run_id) if hasattr(run, "run_id") else None
                records[size] = pool.submit(_train_in_worker, cfg, name, size, shards, tokenizer,
                                            out_dir, mlflow_run).result()

    workers = min(cfg.train.parallel_runs, len(pending))
    if workers <= 1:
        for size in pending:
            train_tracked(size)
    else:
        # Threads hold each run's MLflow context; spawned processes do the training.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool, \
                ThreadPoolExecutor(workers) as threads:
            for future in [threads.submit(train_tracked, size, pool) for size in pending]:
                future.result()
    ordered = [records[size] for size in group.sizes]
    if any(r is None for r in ordered):
        return None
    for stale in set(p.name for p in out_dir.iterdir() if p.is_dir()) - set(group.sizes):
        shutil.rmtree(out_dir / stale)
    return ordered


def _train_in_worker(cfg: PretrainConfig, name: str, size: str, shards: Path, tokenizer: Path,
                     out_dir: Path, mlflow_run: tuple[str, str] | None) -> dict | None:
    from mlflow.tracking import MlflowClient

    from pipeline_steps.core.run_tracking import MlflowTracker
    from pipeline_steps.core.tracking import NullTracker

    if mlflow_run is None:
        tracker = NullTracker()
    else:
        tracking_uri, run_id = mlflow_run
        tracker = MlflowTracker(MlflowClient(tracking_uri=tracking_uri), run_id)
    return train_one(cfg, cfg.group(name), size, shards, tokenizer, out_dir, tracker)
