"""Zero-shot evaluation of one model artifact on one JSONL of items (PAPER.md section 5).

    smdm-evaluate --model models/pretrain/mdm_c3/16k \\
        --items data/tasks/arc_easy/test.jsonl --method mc --samples 128 --cfg 0.5 --out arc.json

Items (pipeline_steps/data/task_sources/items.py): multiple choice {"id", "query", "choices", "gold"}
or greedy {"id", "query", "target"}; one file holds one kind.

Methods. MDM: `mc` (Monte Carlo ELBO, t stratified per block), `l_uniform` (mask exactly l of
|c| tokens), `chain` (left-to-right chain rule) score every choice; `greedy` decodes a target
(LAMBADA: unmask the most confident position per step) and is correct iff it is reproduced
exactly. ARM: one causal pass is exact, so `mc`, `l_uniform` and `chain` all map to the exact
log-likelihood (recorded as method `exact`); `greedy` is the argmax check at every target
position. CFG and mask padding need a [MASK] token: MDM only.

Tokenization (the artifact's tokenizer.model): prompt = BOS + encode(query); the continuation is
encode(query + choice) minus the encode(query) prefix when that is a prefix (SentencePiece pieces
never cross a word start, so with the space in the choice it almost always is), else
encode(choice) -- lm-eval's context/continuation split. A row longer than the model's context
(MDM: context; ARM: context + 1, as it reads all but the last token) is cut from the left, like
lm-eval; at least one prompt token is kept, so an over-long continuation keeps its last tokens.

Accuracy: `acc` is the argmax of the log-likelihoods, `acc_norm` the argmax of log-likelihood /
the choice's length in characters without its leading delimiter space (lm-eval's acc_norm: there
the space is `target_delimiter` and not part of the choice); both with n and the binomial
standard error sqrt(p (1 - p) / n). Cost: model rows evaluated (CFG's unconditional rows
included) and wall seconds.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm
import torch
from torch import nn

from model.artifact import TOKENIZER, ArtifactError, load_artifact
from model.likelihood import (
    LIKELIHOOD_METHODS,
    GreedyResult,
    LikelihoodEstimate,
    MonteCarloConfig,
    Request,
    arm_greedy_match,
    arm_log_likelihood,
    check_early_stopping,
    mdm_chain_rule_log_likelihood,
    mdm_elbo_log_likelihood,
    mdm_greedy_decode,
    mdm_l_uniform_log_likelihood,
)
from pipeline_steps.core.errors import InputError
from pipeline_steps.core.files import atomic_write_json, finite_json
from pipeline_steps.core.stage_cli import OneLineParser, guarded
from pipeline_steps.data.task_sources.items import encode_pair, item_format, read_items

METHODS = (*LIKELIHOOD_METHODS, "greedy")


@dataclass(frozen=True)
class EvalSettings:
    """How one evaluation scores its items."""

    method: str = "mc"
    """mc, l_uniform, chain (multiple-choice items) or greedy (items with a target)."""
    cfg_scale: float = 0.0
    """w of unsupervised CFG (MDM only; 0 = none, one pass per row)."""
    mc: MonteCarloConfig = field(default_factory=MonteCarloConfig)
    """Monte Carlo samples, blocks, t floor, early stop and base seed (mc, l_uniform)."""
    pad_to: int | None = None
    """Mask padding: right-pad every row with [MASK] to this length (MDM only; None = off)."""
    max_batch: int = 64
    """Most model rows per forward pass (memory: rows x length x vocab floats)."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not math.isfinite(self.cfg_scale) or self.cfg_scale < 0:
            raise ValueError(f"cfg_scale must be finite and >= 0, got {self.cfg_scale}")
        if self.pad_to is not None and self.pad_to < 2:
            raise ValueError(f"pad_to must be at least 2 (or None), got {self.pad_to}")
        if self.max_batch < 2:
            raise ValueError(f"max_batch must be >= 2 (a CFG row takes two), got {self.max_batch}")
        check_early_stopping(self.method, self.mc)


@dataclass(frozen=True)
class LoadedModel:
    """A model artifact ready to score: network, config.json, tokenizer, folder."""

    model: nn.Module
    """The network, eval mode."""
    config: dict[str, Any]
    """The artifact's config.json."""
    tokenizer: spm.SentencePieceProcessor
    """The artifact's own tokenizer.model."""
    path: str
    """The artifact folder."""

    @property
    def family(self) -> str:
        return self.config["family"]

    @property
    def row_limit(self) -> int:
        """Longest prompt + continuation row: the ARM's input drops the last token."""
        return self.config["context"] + (1 if self.family == "arm" else 0)


def check_device(device: str, where: str = "device") -> None:
    """A torch device this machine has; `where` names the option or params field."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise InputError(f"{where}: {device!r} is not a torch device; expected e.g. cpu or cuda") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"{where}: {device!r} asked for, but CUDA is not available on this machine; "
                         "expected cpu")
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        raise InputError(f"{where}: {device!r} asked for, but this machine has "
                         f"{torch.cuda.device_count()} CUDA device(s)")


def load_model(folder: str | Path, device: str = "cpu") -> LoadedModel:
    check_device(device)
    try:
        model, config = load_artifact(folder, device)
    except ArtifactError as err:  # model/ raises plain ValueErrors; here they are the user's input
        raise InputError(str(err)) from None
    tokenizer_file = Path(folder) / TOKENIZER
    if not tokenizer_file.exists():
        raise FileNotFoundError(f"{tokenizer_file}: the artifact has no tokenizer")
    return LoadedModel(model, config, spm.SentencePieceProcessor(model_file=str(tokenizer_file)),
                       str(folder))


def load_finetuned_pair(section: str, groups: dict[str, str], finetune_dir: Path,
                        device: str) -> dict[str, LoadedModel]:
    """The fine-tuned artifacts a study names (`groups`: family -> finetune group), each checked to
    hold its family; a missing or wrong one is one line naming `section.family`."""
    models = {}
    for family, group in groups.items():
        folder = Path(finetune_dir) / group
        if not (folder / "config.json").exists():
            raise InputError(f"{section}.{family}: {folder}: no fine-tuned model artifact; expected a finetune group")
        models[family] = load_model(folder, device)
        if models[family].family != family:
            raise InputError(f"{section}.{family}: {folder} holds a {models[family].family!r} model, expected {family!r}")
    return models


# ---------------------------------------------------------------------------------------------
# Items -> requests.

def split_request(sp: spm.SentencePieceProcessor, query: str, continuation: str) -> Request:
    """(BOS + encode(query), continuation tokens) by the prefix rule of the module docstring."""
    context, cont = encode_pair(sp, query, continuation)
    bos = [sp.bos_id()] if sp.bos_id() >= 0 else []
    return bos + context, cont


def fit_context(request: Request, limit: int) -> tuple[Request, bool]:
    """Cut the row to its last `limit` tokens, keeping >= 1 prompt token; (request, was cut)."""
    prompt, cont = list(request[0]), list(request[1])
    if len(prompt) + len(cont) <= limit:
        return (prompt, cont), False
    cont = cont[-(limit - 1):]  # only when the continuation alone fills the context
    return (prompt[-(limit - len(cont)):], cont), True


def item_requests(lm: LoadedModel, item: dict) -> tuple[list[Request], int]:
    """The item's requests (one per choice, or its target) and how many were cut to fit."""
    texts = item["choices"] if "choices" in item else [item["target"]]
    fitted = [fit_context(split_request(lm.tokenizer, item["query"], t), lm.row_limit) for t in texts]
    return [r for r, _ in fitted], sum(cut for _, cut in fitted)


# ---------------------------------------------------------------------------------------------
# Scoring.

def effective_method(family: str, method: str) -> str:
    """What actually runs: the ARM's likelihood is exact whichever estimator was asked for."""
    return "exact" if family == "arm" and method in LIKELIHOOD_METHODS else method


def _check_family(lm: LoadedModel, s: EvalSettings) -> None:
    if lm.family == "arm" and (s.cfg_scale != 0 or s.pad_to is not None):
        raise InputError("CFG and mask padding need a [MASK] token: the ARM takes neither "
                         f"(got cfg_scale={s.cfg_scale}, pad_to={s.pad_to})")
    if s.pad_to is not None and s.pad_to > lm.config["context"]:
        raise InputError(f"pad_to={s.pad_to} exceeds the model's context {lm.config['context']}")


def log_likelihoods(lm: LoadedModel, requests: Sequence[Request],
                    s: EvalSettings) -> list[LikelihoodEstimate]:
    _check_family(lm, s)
    if lm.family == "arm":
        return arm_log_likelihood(lm.model, requests, max_batch=s.max_batch)
    kwargs = {"cfg_scale": s.cfg_scale, "pad_to": s.pad_to, "max_batch": s.max_batch}
    if s.method == "chain":
        return mdm_chain_rule_log_likelihood(lm.model, requests, **kwargs)
    estimator = mdm_elbo_log_likelihood if s.method == "mc" else mdm_l_uniform_log_likelihood
    return estimator(lm.model, requests, s.mc, **kwargs)


def greedy_decodes(lm: LoadedModel, requests: Sequence[Request], s: EvalSettings) -> list[GreedyResult]:
    _check_family(lm, s)
    if lm.family == "arm":
        return arm_greedy_match(lm.model, requests, max_batch=s.max_batch)
    return mdm_greedy_decode(lm.model, requests, cfg_scale=s.cfg_scale, pad_to=s.pad_to,
                             max_batch=s.max_batch)


def binomial_stderr(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n) if n else float("nan")


def norm_length(choice: str) -> int:
    """acc_norm's divisor: the choice's characters without the leading space that joins it to the
    query (lm-eval's `len(choice)`, its delimiter " " being separate from the choice)."""
    return len(choice.removeprefix(" "))


def choice_accuracy(logliks: Sequence[Sequence[float]], choices: Sequence[Sequence[str]],
                    gold: Sequence[int]) -> dict[str, Any]:
    """acc (argmax log-likelihood) and acc_norm (argmax log-likelihood / `norm_length`).

    np.argmax takes the first of equal scores, as lm-eval does.
    """
    pred = [int(np.argmax(ll)) for ll in logliks]
    pred_norm = [int(np.argmax(np.asarray(ll) / [norm_length(c) for c in cs]))
                 for ll, cs in zip(logliks, choices)]
    n = len(gold)
    acc = sum(p == g for p, g in zip(pred, gold)) / n if n else float("nan")
    acc_norm = sum(p == g for p, g in zip(pred_norm, gold)) / n if n else float("nan")
    return {"n": n, "acc": acc, "acc_stderr": binomial_stderr(acc, n), "acc_norm": acc_norm,
            "acc_norm_stderr": binomial_stderr(acc_norm, n), "pred": pred, "pred_norm": pred_norm}


# ---------------------------------------------------------------------------------------------
# One evaluation: items in, summary + per-item scores out.

def items_kind(items: Sequence[dict]) -> str:
    """`mc` or `greedy`: every item of one evaluation must have the same fields."""
    if not items:
        raise InputError("no items to evaluate")
    kinds = {item_format(item) for item in items}
    if len(kinds) != 1 or not kinds <= {"mc", "greedy"}:
        raise InputError(f"items must all be multiple choice or all greedy, got kinds {sorted(kinds)}")
    return kinds.pop()


def _check_method(kind: str, method: str) -> None:
    if kind == "greedy" and method != "greedy":
        raise InputError(f"items with a target are scored by greedy decoding: method `greedy`, "
                         f"not {method!r}")
    if kind == "mc" and method == "greedy":
        raise InputError(f"multiple-choice items need a likelihood method {LIKELIHOOD_METHODS}")


def _score_mc(lm: LoadedModel, items: Sequence[dict], requests: list[list[Request]],
              s: EvalSettings) -> tuple[dict[str, Any], list[dict], int]:
    flat = [r for rs in requests for r in rs]
    estimates = iter(log_likelihoods(lm, flat, s))
    per_item = [[next(estimates) for _ in rs] for rs in requests]
    logliks = [[e.logprob for e in es] for es in per_item]
    summary = choice_accuracy(logliks, [it["choices"] for it in items], [it["gold"] for it in items])
    rows = [{"id": it["id"], "gold": it["gold"], "loglik": ll,
             "loglik_stderr": [e.stderr for e in es], "n_tokens": [len(c) for _, c in rs],
             "pred": p, "pred_norm": pn}
            for it, ll, es, rs, p, pn in zip(items, logliks, per_item, requests,
                                             summary.pop("pred"), summary.pop("pred_norm"))]
    return summary, rows, sum(e.forward_passes for es in per_item for e in es)


def _score_greedy(lm: LoadedModel, items: Sequence[dict], requests: list[list[Request]],
                  s: EvalSettings) -> tuple[dict[str, Any], list[dict], int]:
    results = greedy_decodes(lm, [rs[0] for rs in requests], s)
    n = len(results)
    acc = sum(r.correct for r in results) / n
    summary = {"n": n, "acc": acc, "acc_stderr": binomial_stderr(acc, n), "acc_norm": None,
               "acc_norm_stderr": None}
    rows = [{"id": it["id"], "target": it["target"], "correct": r.correct,
             "decoded": lm.tokenizer.decode(list(r.decoded))} for it, r in zip(items, results)]
    return summary, rows, sum(r.forward_passes for r in results)


def evaluate_items(lm: LoadedModel, items: Sequence[dict], s: EvalSettings,
                   keep_items: bool = True) -> dict[str, Any]:
    """Accuracy, its standard error and the cost of scoring `items` with `s` (JSON-ready).

    With `keep_items` the result also lists every item's log-likelihoods (per choice) or decode.
    """
    kind = items_kind(items)
    _check_method(kind, s.method)
    fitted = [item_requests(lm, item) for item in items]
    requests = [rs for rs, _ in fitted]
    started = time.perf_counter()
    with torch.no_grad():
        score = _score_mc if kind == "mc" else _score_greedy
        summary, rows, passes = score(lm, items, requests, s)
    seconds = time.perf_counter() - started
    result = {"model": lm.path, "family": lm.family, "kind": kind, "method": s.method,
              "effective_method": effective_method(lm.family, s.method), "cfg_scale": s.cfg_scale,
              "pad_to": s.pad_to, "settings": asdict(s), **summary, "forward_passes": passes,
              "seconds": seconds, "truncated_requests": sum(cut for _, cut in fitted)}
    if keep_items:
        result["items"] = [finite_json(row) for row in rows]
    return result


def _pad_to(value: str) -> int | str:
    """--pad-to: `context` (resolved once the model is loaded) or a whole number."""
    if value == "context":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer (the padded row length) or `context`, "
                                         f"got {value!r}") from None


def main(argv: list[str] | None = None) -> int:
    mc, default = MonteCarloConfig(), EvalSettings()  # the CLI's defaults are the dataclasses'
    parser = OneLineParser(prog="smdm-evaluate", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model artifact folder (config.json, weights, "
                        "tokenizer.model)")
    parser.add_argument("--items", required=True, help="JSONL of items (multiple choice or greedy)")
    parser.add_argument("--method", choices=METHODS, default=default.method,
                        help="scoring method (default: %(default)s; the ARM maps mc/l_uniform/chain "
                             "to its exact log-likelihood)")
    parser.add_argument("--samples", type=int, default=mc.n_samples,
                        help="Monte Carlo samples per choice (default: %(default)s)")
    parser.add_argument("--block", type=int, default=mc.block_size,
                        help="samples per stratified block (default: %(default)s)")
    parser.add_argument("--eps", type=float, default=mc.eps,
                        help="t floor of the mc estimator (default: %(default)s)")
    parser.add_argument("--target-stderr", type=float, default=mc.target_stderr,
                        help="stop a choice's Monte Carlo sampling once its standard error (nats) "
                             "is at most this (default: never)")
    parser.add_argument("--cfg", type=float, default=default.cfg_scale,
                        help="CFG scale w, MDM only (default: %(default)s)")
    parser.add_argument("--pad-to", type=_pad_to, help="mask padding: an int, or `context` for the "
                        "model's training context (MDM only; default: off)")
    parser.add_argument("--seed", type=int, default=mc.seed,
                        help="Monte Carlo base seed (default: %(default)s)")
    parser.add_argument("--max-batch", type=int, default=default.max_batch,
                        help="rows per forward pass (default: %(default)s)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N items")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--out", help="result JSON to write (default: print it)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an input error too")
    args = parser.parse_args(argv)
    return guarded(parser.prog, lambda: _evaluate_cli(args), args.debug)


def _evaluate_cli(args: argparse.Namespace) -> int:
    check_device(args.device, "--device")
    pad_to = args.pad_to
    try:  # every setting is checked before the model is loaded; `context` is resolved after
        mc = MonteCarloConfig(n_samples=args.samples, block_size=args.block, eps=args.eps,
                              target_stderr=args.target_stderr, seed=args.seed)
        settings = EvalSettings(method=args.method, cfg_scale=args.cfg, mc=mc,
                                pad_to=None if pad_to == "context" else pad_to, max_batch=args.max_batch)
    except ValueError as err:
        raise InputError(f"command line: {err}") from None
    lm = load_model(args.model, args.device)
    if pad_to == "context":
        settings = replace(settings, pad_to=lm.config["context"])
    items = read_items(args.items)[:args.limit]
    result = {"items_file": str(args.items), **evaluate_items(lm, items, settings)}
    if args.out:
        atomic_write_json(args.out, result)
    else:
        print(json.dumps(result, indent=2))
    norm = "" if result["acc_norm"] is None else f" acc_norm={result['acc_norm']:.4f}"
    print(f"{result['effective_method']} w={args.cfg}: n={result['n']} acc={result['acc']:.4f} "
          f"(+-{result['acc_stderr']:.4f}){norm} passes={result['forward_passes']} "
          f"seconds={result['seconds']:.2f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
