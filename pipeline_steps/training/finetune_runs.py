"""Training one fine-tuning run (the stage: pipeline_steps/finetune.py).

The run starts from a pretrain artifact, trains the model/sft.py objective with Lightning and
writes a model artifact of the same contract, whose config.json says what it was fine-tuned from
(the base's folder and weights hash) and on what (source, rows and their hash, mode). Everything
random in a step is seeded by (seed, step, rank), and the data order by (seed, epoch): a run killed
and resumed from its last checkpoint ends with the same weights.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import lightning as L
import sentencepiece as spm
import torch

from model.artifact import TOKENIZER, WEIGHTS, ArtifactError, find_artifact, load_artifact, save_artifact, sha256_file
from model.sft import arm_sft_loss, mdm_sft_loss
from model.transformer import Transformer
from pipeline_steps.core.errors import InputError
from pipeline_steps.core.files import replace_dir, staging_dir
from pipeline_steps.core.tracking import Tracker
from pipeline_steps.training.config import OptimConfig
from pipeline_steps.training.finetune_config import FinetuneConfig, FinetuneGroup
from pipeline_steps.training.runs import lightning_logger
from pipeline_steps.training.sft_data import (
    EpochBatches,
    Row,
    conditional_rows,
    math_rows,
    reversal_rows,
    rows_hash,
    steps_per_epoch,
)
from pipeline_steps.training.system import adamw_with_schedule

log = logging.getLogger(__name__)


class FinetuneSystem(L.LightningModule):
    """One fine-tuning run: backbone + SFT objective + optimiser + the rows."""

    def __init__(self, model: Transformer, optim: OptimConfig, rows: list[Row], batch: int, total_steps: int,
                 seed: int, bos: int, eos: int, eps: float, prompt_dropout: float) -> None:
        super().__init__()
        self.model, self.optim, self.rows, self.batch = model, optim, rows, batch
        self.total_steps, self.seed, self.bos, self.eos = total_steps, seed, bos, eos
        self.eps, self.prompt_dropout = eps, prompt_dropout
        self.recent_losses: list[torch.Tensor] = []

    def train_dataloader(self):
        batches = EpochBatches(self.rows, self.batch, self.total_steps, self.seed, self.bos, self.eos,
                               rank=self.global_rank, world=self.trainer.world_size,
                               start_step=lambda: self.trainer.global_step)
        return torch.utils.data.DataLoader(batches, batch_size=None, num_workers=0)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        tokens, prompt = batch
        if self.model.cfg.family == "mdm":
            seed = (self.seed * 1_000_003 + self.trainer.global_step) * 1009 + self.global_rank
            loss = mdm_sft_loss(self.model, tokens, prompt, torch.Generator().manual_seed(seed), self.eps,
                                self.prompt_dropout)
        else:
            loss = arm_sft_loss(self.model, tokens, prompt)
        self.log("train/loss", loss, prog_bar=True, sync_dist=self.trainer.world_size > 1)
        self.recent_losses = (self.recent_losses + [loss.detach()])[-20:]
        return loss

    def configure_optimizers(self):
        return adamw_with_schedule(self.model, self.optim, self.total_steps)


def base_folder(pretrain_dir: Path, base: str, where: str) -> Path:
    """The artifact folder `base` names under pretrain_dir: `<group>` of one size or `<group>/<size>`."""
    folder = pretrain_dir / base
    try:
        return find_artifact(folder)
    except FileNotFoundError:
        pass
    sizes = sorted(p.parent for p in folder.glob("*/config.json"))
    groups = sorted(p.name for p in pretrain_dir.iterdir() if p.is_dir()) if pretrain_dir.is_dir() else []
    found = f"its sizes are {[p.name for p in sizes]}: name one as <group>/<size>" if sizes else (
        f"no such pretrain artifact; groups there: {groups}")
    raise InputError(f"{where}: {folder}: {found}")


def load_rows(cfg: FinetuneConfig, group: FinetuneGroup, sp: spm.SentencePieceProcessor, tasks_dir: Path,
              corpus_dir: Path, context: int) -> list[Row]:
    """The group's training rows, whole sequences when asked; every one must fit the context, except
    math problems: those too long are left out (a hub's GSM8K-Aug has some), and counted."""
    if group.data == "reversal":
        rows = reversal_rows(tasks_dir / "reversal", sp)
    elif group.data == "math":
        rows = math_rows(tasks_dir / "math" / "train.txt", sp)
    else:
        c = cfg.conditional
        rows = conditional_rows(corpus_dir, sp, c.pairs, c.prompt_tokens, c.response_tokens, c.seed)
    if group.whole_sequence:
        rows = [([], [*p, *r]) for p, r in rows]
    if group.data == "math":
        fit = [(p, r) for p, r in rows if len(p) + len(r) + 2 <= context]
        if len(fit) < len(rows):
            log.warning("finetune: %d of %d math rows are longer than the context %d and left out",
                        len(rows) - len(fit), len(rows), context)
        if not fit:
            raise InputError(f"finetune: no math row fits the context {context}; raise the group's context")
        rows = fit
    longest = max(len(p) + len(r) + 2 for p, r in rows)  # + BOS + EOS
    if longest > context:
        raise InputError(f"finetune: a {group.data} row has {longest} tokens with BOS and EOS, more than the base "
                         f"model's context {context}")
    return rows


def run_key(cfg: FinetuneConfig, group: FinetuneGroup, base_sha: str, data_hash: str) -> str:
    """Identifies a run's resume checkpoints: any change of settings, base or data starts afresh."""
    text = json.dumps([repr(cfg.train), repr(cfg.optim), repr(group), base_sha, data_hash])
    return "finetune-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def finetune_one(cfg: FinetuneConfig, name: str, pretrain_dir: Path, tasks_dir: Path, corpus_dir: Path,
                 out_dir: Path, tracker: Tracker) -> dict:
    """Train group `name` and write its artifact into out_dir (swapped in whole); its run record."""
    group = cfg.group(name)
    where = f"finetune.groups.{name}.base"
    folder = base_folder(pretrain_dir, group.base, where)
    try:
        model, base_config = load_artifact(folder, context=group.context)
    except ArtifactError as err:
        raise InputError(str(err)) from None
    if model.cfg.family != group.family:
        raise InputError(f"{where}: {folder} holds a {model.cfg.family!r} model, expected {group.family!r}")
    tokenizer_file = folder / TOKENIZER
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_file))
    rows = load_rows(cfg, group, sp, tasks_dir, corpus_dir, model.cfg.context)
    steps = group.epochs * steps_per_epoch(len(rows), group.batch, cfg.train.devices)
    base_sha, data_hash = sha256_file(folder / WEIGHTS), rows_hash(rows)
    key = run_key(cfg, group, base_sha, data_hash)
    ckpt_dir = Path(cfg.train.checkpoint_dir) / key
    lr = cfg.optim.lr if group.lr is None else group.lr
    optim = OptimConfig(**{**asdict(cfg.optim), "lr": lr})
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    model.train()
    system = FinetuneSystem(model, optim, rows, group.batch, steps, cfg.train.seed, sp.bos_id(), sp.eos_id(),
                            cfg.train.mask_eps, group.prompt_dropout)
    tracker.log_params({"family": group.family, "base": group.base, "data": group.data, "rows": len(rows),
                        "epochs": group.epochs, "steps": steps, "batch": group.batch, "lr": lr,
                        "context": model.cfg.context, "whole_sequence": group.whole_sequence,
                        "prompt_dropout": group.prompt_dropout})
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=ckpt_dir, every_n_train_steps=cfg.train.checkpoint_every, save_last=True, save_top_k=0)
    trainer = L.Trainer(
        max_steps=steps, accelerator=cfg.train.accelerator, devices=cfg.train.devices, strategy=cfg.train.strategy,
        precision=cfg.train.precision, gradient_clip_val=cfg.train.grad_clip, callbacks=[checkpoint],
        logger=lightning_logger(tracker), log_every_n_steps=cfg.train.log_every, limit_val_batches=0,
        num_sanity_val_steps=0, enable_model_summary=False, enable_progress_bar=False,
        use_distributed_sampler=False, default_root_dir=str(ckpt_dir))
    resume = ckpt_dir / "last.ckpt"
    resumed = resume.exists()
    started = time.perf_counter()
    trainer.fit(system, ckpt_path=str(resume) if resumed else None)
    record = {"group": name, "family": group.family, "data": group.data, "rows": len(rows), "rows_hash": data_hash,
              "whole_sequence": group.whole_sequence, "prompt_dropout": group.prompt_dropout,
              "epochs": group.epochs, "steps": steps, "batch": group.batch, "lr": lr, "run_key": key,
              "context": model.cfg.context,
              "seconds": time.perf_counter() - started, "resumed": resumed,
              # nan: a run resumed at its last step trained nothing in this process
              "train/loss": float(torch.stack(system.recent_losses).double().mean()) if system.recent_losses else float("nan")}
    if trainer.global_rank != 0:
        return record
    lineage = {"finetuned_from": {"base": group.base, "folder": str(folder), "weights_sha256": base_sha,
                                  "size": base_config.get("size"), "run": base_config.get("run")},
               "finetune": record}
    stage = staging_dir(out_dir)
    save_artifact(model.eval(), stage, tokenizer_file, {"size": base_config.get("size"), **lineage})
    replace_dir(stage, out_dir)
    tracker.log_metrics({"train/loss": record["train/loss"], "seconds": record["seconds"]})
    if not cfg.train.keep_checkpoints:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return record
