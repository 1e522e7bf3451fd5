"""The model artifact: weights (safetensors), config.json and the tokenizer, in one folder.

Separate from the trainer's resume checkpoint; evaluators, lm-eval and fine-tuning load this.
Loading is weights-only: safetensors holds tensors and nothing executable. A folder that is
incomplete or inconsistent (truncated weights, weights of the other family, a tokenizer that is
not the one trained with) is an `ArtifactError` naming the file, before any tensor is used.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from model.config import ModelConfig
from model.transformer import Transformer

WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.model"


class ArtifactError(ValueError):
    """A model artifact folder whose files are broken or disagree; the message names the file."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    if tokenizer_file is not None:
        config["tokenizer_hash"] = sha256_file(tokenizer_file)  # what loading checks the copy against
    (folder / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if tokenizer_file is not None:
        shutil.copy(tokenizer_file, folder / TOKENIZER)
    return folder


def _read_config(config_file: Path) -> tuple[dict[str, Any], ModelConfig]:
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        cfg = ModelConfig(**config["model"])
    except (ValueError, TypeError, KeyError) as err:  # bad JSON, missing or unknown model fields
        raise ArtifactError(f"{config_file}: not a model config ({type(err).__name__}: {err}); expected "
                            "a JSON object whose `model` maps every ModelConfig field") from None
    if config.get("family", cfg.family) != cfg.family:
        raise ArtifactError(f"{config_file}: family {config['family']!r} disagrees with model.family "
                            f"{cfg.family!r}")
    return config, cfg


def _check_weights(weights: Path, model: Transformer, config_file: Path) -> None:
    """The file is whole and holds exactly the tensors of `model` (built from config.json), shape
    for shape: load_state_dict would say so too, but as a traceback."""
    try:
        with safe_open(str(weights), "pt") as handle:
            shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except SafetensorError as err:
        raise ArtifactError(f"{weights}: truncated or not a safetensors file ({err}); expected the "
                            "complete weights file of a model artifact") from None
    cfg, expected = model.cfg, {name: tuple(t.shape) for name, t in model.state_dict().items()}
    rows = shapes.get("embed.weight", (None,))[0]
    if rows is not None and rows != cfg.embedding_rows and rows in (cfg.vocab_size, cfg.vocab_size + 1):
        # the MDM embeds one more token, [MASK]: the one shape that tells the families apart
        holds = "mdm" if rows == cfg.vocab_size + 1 else "arm"
        raise ArtifactError(f"{weights}: holds {holds!r} weights (embedding of {rows} rows for vocabulary "
                            f"{cfg.vocab_size}), but {config_file} says family {cfg.family!r}")
    wrong = sorted(n for n in expected.keys() & shapes.keys() if expected[n] != shapes[n])
    missing, unexpected = sorted(expected.keys() - shapes.keys()), sorted(shapes.keys() - expected.keys())
    if wrong or missing or unexpected:
        parts = [f"{n} is {list(shapes[n])}, expected {list(expected[n])}" for n in wrong[:3]]
        if missing:
            parts.append(f"missing {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}")
        raise ArtifactError(f"{weights}: tensors do not match {config_file}'s model ({'; '.join(parts)})")


def check_tokenizer(folder: str | Path, config: dict[str, Any]) -> None:
    """The folder's tokenizer.model is the one the model was trained with (when config.json says)."""
    tokenizer, config_file = Path(folder) / TOKENIZER, Path(folder) / CONFIG
    expected = config.get("tokenizer_hash") or (config.get("run") or {}).get("tokenizer_hash")
    if expected is None or not tokenizer.exists():
        return
    if (actual := sha256_file(tokenizer)) != expected:
        raise ArtifactError(f"{tokenizer}: sha256 {actual[:16]}... differs from tokenizer_hash "
                            f"{expected[:16]}... in {config_file}; expected the tokenizer the model was "
                            "trained with")


def find_artifact(group_dir: Path) -> Path:
    """The one size folder of a base group (models/pretrain/<group>/<size>), or that size folder
    itself when named as `<group>/<size>`."""
    if (group_dir / "config.json").exists():
        return group_dir
    sizes = sorted(p.parent for p in group_dir.glob("*/config.json"))
    if len(sizes) != 1:
        raise FileNotFoundError(f"{group_dir}: expected one model artifact folder, found "
                                f"{[p.name for p in sizes]}")
    return sizes[0]


def load_artifact(folder: str | Path, device: str | torch.device = "cpu",
                  context: int | None = None) -> tuple[Transformer, dict[str, Any]]:
    """The model (eval mode) and the artifact's config.json contents.

    `context` loads the model for longer (or shorter) sequences than it was trained on: positions
    are rotary only (no learned position table), so the tables are recomputed at that length and
    the weights are unchanged; positions past the training context are extrapolated until a
    fine-tuning run at that length trains them."""
    folder = Path(folder)
    config_file, weights = folder / CONFIG, folder / WEIGHTS
    if not config_file.exists():
        raise FileNotFoundError(f"{config_file}: not a model artifact folder (no {CONFIG})")
    if not weights.exists():
        raise FileNotFoundError(f"{weights}: the model artifact has no weights")
    config, cfg = _read_config(config_file)
    if context is not None:
        if context < 1:
            raise ArtifactError(f"{folder}: context must be a positive number of tokens, got {context}")
        cfg = cfg.replace(context=context)
    model = Transformer(cfg)
    _check_weights(weights, model, config_file)
    check_tokenizer(folder, config)
    model.load_state_dict(load_file(weights, device=str(device)))
    return model.to(device).eval(), config
