"""Training and validating the runs of one pretraining group (the stage: pipeline_steps/pretrain.py)."""
from __future__ import annotations

import ctypes
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import sys
import threading
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
from pipeline_steps.core.run_tracking import Killed, child_tracker
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
FINISHED = "finished"
"""A finished run's artifact folder, kept under its checkpoint folder (outside the stage's DVC
outputs, which DVC deletes before it reruns a failed stage) until the whole group has finished."""
PR_SET_PDEATHSIG = 1  # linux/prctl.h


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
              tracker: Tracker) -> dict | None:
    """Train, validate and save one run into <checkpoint folder>/finished (the stage's process copies
    it into its outputs: a worker never writes there); returns its run record (None on ranks > 0)."""
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
    record["train/loss"] = float(torch.stack(system.recent_losses).double().mean()) if system.recent_losses else 0.0
    record["val/loss"], record["val/loss_stderr"] = validate(model, cfg, shards, tokenizer_sha)
    matmul = sum(training_matmul_flops(model_cfg, train.global_batch, length) * n
                 for length, n in system.lengths.items())
    record["matmul_flops_per_second"] = matmul / seconds
    record["tokens_per_second"] = tokens / seconds
    stage = staging_dir(ckpt_dir / FINISHED)
    save_artifact(model, stage, tokenizer_file, {"size": size, "run": record})
    (stage / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    replace_dir(stage, ckpt_dir / FINISHED)
    tracker.log_metrics({k: v for k, v in record.items() if "/" in k or k.endswith("per_second")})
    if not train.keep_checkpoints:  # the resume checkpoints; the finished copy goes with the group
        for path in ckpt_dir.iterdir():
            if path.is_dir() and path.name != FINISHED:
                shutil.rmtree(path)
            elif path.is_file():
                path.unlink()
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
    """Every run of the group, `train.parallel_runs` at a time, into out_dir/<size>.

    A run whose settings and data are unchanged (same run_key) is not trained again: it is kept
    from out_dir, or restored from its finished copy when DVC deleted out_dir after a failure
    (`restored: true` in its record). Returns None on data-parallel ranks other than 0, which
    train but write nothing.
    """
    group = cfg.group(name)
    check_data(cfg, shards, tokenizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_hash = read_meta(shards).get("data_hash")
    records: dict[str, dict | None] = {}
    pending = []
    for size in group.sizes:
        key = run_key(cfg, group, size, data_hash)
        finished = Path(cfg.train.checkpoint_dir) / key / FINISHED
        record = _finished_record(out_dir / size, key)
        if record is None:
            record = _finished_record(finished, key)
            if record is not None and not secondary_rank():  # rank 0 copies it back; the others skip it too
                _place(finished, out_dir / size)
        if record is None:
            pending.append(size)
        else:
            records[size] = {**record, "restored": True}

    def done(size: str, record: dict | None) -> None:
        if record is not None:  # rank 0: the stage's own process puts the run into its outputs
            _place(Path(cfg.train.checkpoint_dir) / record["run_key"] / FINISHED, out_dir / size)
            record = {**record, "restored": False}
        records[size] = record

    stopped: list[BaseException] = []  # why the stage stopped the parallel runs, if it did

    def train_tracked(size: str, pool=None) -> None:
        with child_tracker(tracker, f"{group.family}-{size}-{name}",
                           {"family": group.family, "size": size, "smdm_stage": f"pretrain@{name}"},
                           data_hash=data_hash) as run:
            if pool is None:
                done(size, train_one(cfg, group, size, shards, tokenizer, run))
                return
            mlflow_run = (run.tracking_uri, run.run_id) if hasattr(run, "run_id") else None
            try:  # the child MLflow run stays open here; the worker writes to it by id
                done(size, pool.submit(_train_in_worker, cfg, name, size, shards, tokenizer, mlflow_run).result())
            except Exception:
                if stopped:  # its worker was killed by the stage: the run ends KILLED, not FAILED
                    raise Killed(f"stopped by {stopped[0]!r}") from None
                raise

    workers = min(cfg.train.parallel_runs, len(pending))
    if workers <= 1:
        for size in pending:
            train_tracked(size)
    else:
        # Threads hold each run's MLflow context; spawned processes do the training. They are
        # spawned by the threads, and Linux's parent-death signal fires when the spawning thread
        # ends: so the pool shuts down (its workers exit) before the threads do.
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=die_with_parent, initargs=(os.getpid(),))
        with ThreadPoolExecutor(workers) as threads, pool:
            try:
                for future in [threads.submit(train_tracked, size, pool) for size in pending]:
                    future.result()
            except BaseException as err:  # a failed run, SIGTERM, Ctrl-C: stop the others now, not when they end
                stopped.append(err)
                threads.shutdown(wait=False, cancel_futures=True)  # runs not started yet never start
                for worker in list(pool._processes.values()):  # Python 3.14: pool.kill_workers()
                    worker.kill()
                raise
    ordered = [records[size] for size in group.sizes]
    if any(r is None for r in ordered):
        return None
    for stale in set(p.name for p in out_dir.iterdir() if p.is_dir()) - set(group.sizes):
        shutil.rmtree(out_dir / stale)
    return ordered


def forget_finished(cfg: PretrainConfig, records: list[dict]) -> None:
    """Remove the group's finished copies and checkpoints once its outputs are complete (the rerun
    of a failed group needed them; unless `train.keep_checkpoints`)."""
    if not cfg.train.keep_checkpoints:
        for record in records:
            shutil.rmtree(Path(cfg.train.checkpoint_dir) / record["run_key"], ignore_errors=True)


def _finished_record(folder: Path, key: str) -> dict | None:
    """The run record of a complete artifact folder of run `key` (written last, swapped in whole)."""
    try:
        record = json.loads((folder / RECORD).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    return record if record.get("run_key") == key else None


def _place(finished: Path, final: Path) -> None:
    """Hard links to a finished run's files (copies across file systems), swapped in as `final`.
    Nothing rewrites these files in place: artifacts are always written anew and swapped in."""
    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    stage = staging_dir(final)
    shutil.copytree(finished, stage, copy_function=link_or_copy, dirs_exist_ok=True)
    replace_dir(stage, final)


def secondary_rank() -> bool:
    """A data-parallel rank other than 0, as Lightning's launchers mark the processes they start."""
    return bool(int(os.environ.get("LOCAL_RANK", 0)) or int(os.environ.get("NODE_RANK", 0)))


def die_with_parent(parent: int, pdeathsig: bool = sys.platform.startswith("linux")) -> None:
    """Make this process (a training worker) die with `parent`, which spawned it, SIGKILL included.

    Linux: the kernel sends SIGKILL when the parent's spawning thread ends (PR_SET_PDEATHSIG).
    Everywhere: a daemon thread exits the process once its parent is another (the orphan was
    adopted). A parent that died before either was set up is caught by the same comparison.
    """
    if pdeathsig:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # a failure leaves the thread below
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _train_in_worker(cfg: PretrainConfig, name: str, size: str, shards: Path, tokenizer: Path,
                     mlflow_run: tuple[str, str] | None) -> dict | None:
    from mlflow.tracking import MlflowClient

    from pipeline_steps.core.run_tracking import MlflowTracker
    from pipeline_steps.core.tracking import NullTracker

    if mlflow_run is None:
        tracker = NullTracker()
    else:
        tracking_uri, run_id = mlflow_run
        tracker = MlflowTracker(MlflowClient(tracking_uri=tracking_uri), run_id)
    return train_one(cfg, cfg.group(name), size, shards, tokenizer, tracker)
