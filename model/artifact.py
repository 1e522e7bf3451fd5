"""The model artifact: weights (safetensors), config.json and the tokenizer, in one folder.

Separate from the trainer's resume checkpoint; evaluators, lm-eval and fine-tuning load this.
Loading is weights-only: safetensors holds tensors and nothing executable.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from model.config import ModelConfig
from model.transformer import Transformer

WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.model"


def save_artifact(model: Transformer, folder: str | Path, tokenizer_file: str | Path | None,
                  extra: dict[str, Any] | None = None) -> Path:
    """Write the artifact into `folder` (created; callers swap it into place atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, folder / WEIGHTS)
    cfg = model.cfg
    config = {"model": dataclasses.asdict(cfg), "family": cfg.family, "vocab_size": cfg.vocab_size,
              "mask_id": cfg.mask_id, "context": cfg.context, **(extra or {})}
    (folder / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if tokenizer_file is not None:
        shutil.copy(tokenizer_file, folder / TOKENIZER)
    return folder


def load_artifact(folder: str | Path, device: str | torch.device = "cpu") -> tuple[Transformer, dict[str, Any]]:
    """The model (eval mode) and the artifact's config.json contents."""
    folder = Path(folder)
    config_file = folder / CONFIG
    if not config_file.exists():
        raise FileNotFoundError(f"{config_file}: not a model artifact folder (no {CONFIG})")
    config = json.loads(config_file.read_text())
    model = Transformer(ModelConfig(**config["model"]))
    model.load_state_dict(load_file(folder / WEIGHTS, device=str(device)))
    return model.to(device).eval(), config
