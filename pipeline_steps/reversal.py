"""Stage `reversal`: the reversal curse, MDM vs ARM (PAPER.md section 8; Tables 5 and 14).

Both families are fine-tuned on whole sequences of facts shown in one direction only (the
`finetune` groups named here); this stage asks them every file of data/tasks/reversal: the same
direction at the trained and at held-out templates, and the reverse (Berglund et al.'s reverse
files). Greedy generation, the confidence sampler for the MDM (with and without unsupervised CFG,
Table 14) and a KV-cache ARM, each for the file's longest completion plus `slack` tokens; scores
and tables in pipeline_steps/scoring/reversal_scoring.py. Beside it, without any sampler, the
true completion's log-likelihood rank among other people's (ARM exact, MDM chain rule). The
reverse direction is read against the same direction at the trained templates: below `min_same`
the run says the model is undertrained rather than cursed.

    reports/reversal/results.json, table5.md, table14.md, samples.jsonl
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from model.likelihood import arm_log_likelihood, mdm_chain_rule_log_likelihood
from model.sampling import generate_arm, generate_mdm
from pipeline_steps.core.errors import InputError
from pipeline_steps.core.files import atomic_write_json, atomic_write_text
from pipeline_steps.core.stage_cli import run_stage
from pipeline_steps.core.tracking import Tracker
from pipeline_steps.data.task_sources.reversal import load_folder
from pipeline_steps.scoring import reversal_scoring as rs
from pipeline_steps.scoring.evaluator import LoadedModel, check_device, load_finetuned_pair, split_request


@dataclass(frozen=True)
class ReversalConfig:
    """The `reversal` section of params.yaml."""

    mdm: str = "reversal_mdm"
    """The fine-tuned MDM: a finetune group (models/finetune/<group>)."""
    arm: str = "reversal_arm"
    """The fine-tuned ARM: a finetune group."""
    cfg_scales: tuple[float, ...] = (0.0, 0.8)
    """The MDM's unsupervised CFG scales (the paper's Table 5: 0.8; Table 14 compares)."""
    table5_cfg: float = 0.8
    """The CFG scale of the MDM row in Table 5 (one of cfg_scales)."""
    slack: int = 4
    """Tokens generated beyond the file's longest completion."""
    max_items: int = 100
    """Prompts per file at most (a seeded choice)."""
    rank_candidates: int = 10
    """Completions ranked per prompt: the true one and up to this many minus one others'."""
    min_same: float = 0.8
    """Same-direction exact match at the trained templates that makes the reverse readable."""
    max_batch: int = 64
    """Rows per forward pass."""
    seed: int = 0
    """Seed of the candidates' choice (greedy generation draws nothing)."""
    device: str = "cpu"
    """torch device."""
    threads: int = 1
    """torch intra-op threads on CPU; 0 = default."""

    def __post_init__(self) -> None:
        if self.table5_cfg not in self.cfg_scales:
            raise ValueError(f"table5_cfg {self.table5_cfg} must be one of cfg_scales {list(self.cfg_scales)}")
        if any(w < 0 for w in self.cfg_scales) or min(self.max_items, self.max_batch) < 1 or self.slack < 0:
            raise ValueError("cfg_scales and slack must be >= 0, max_items and max_batch >= 1")
        if self.rank_candidates < 2 or not 0 <= self.min_same <= 1 or self.threads < 0:
            raise ValueError("rank_candidates must be >= 2, min_same in [0, 1], threads >= 0")


def generate_texts(lm: LoadedModel, rows: list[dict], cfg: ReversalConfig, cfg_scale: float) -> list[str]:
    """Each prompt's greedy continuation, decoded up to its first EOS."""
    sp, context = lm.tokenizer, lm.model.cfg.context
    requests = [split_request(sp, r["prompt"], r["completion"]) for r in rows]
    length = max(len(c) for _, c in requests) + cfg.slack
    out: list[list[int]] = [[] for _ in rows]
    for size in sorted({len(p) for p, _ in requests}):  # one canvas per prompt length, cut to the context
        idx = [i for i, (p, _) in enumerate(requests) if len(p) == size]
        n = min(length, context - size)
        if n < 1:
            raise InputError(f"reversal: a prompt of {size} tokens leaves no room in the context {context}")
        prompts = [list(requests[i][0]) for i in idx]
        gen = torch.Generator().manual_seed(cfg.seed)
        if lm.family == "mdm":
            tokens = generate_mdm(lm.model, prompts, n, steps=n, generator=gen, sampler="confidence",
                                  cfg_scale=cfg_scale, eos_id=sp.eos_id(), max_batch=cfg.max_batch)
        else:
            tokens = generate_arm(lm.model, prompts, n, generator=gen, eos_id=sp.eos_id(), max_batch=cfg.max_batch)
        for i, t in zip(idx, tokens):
            out[i] = rs.cut_at_eos(t, sp.eos_id())
    return [sp.decode(t) for t in out]


def pick_items(rows: list[dict], cfg: ReversalConfig) -> list[dict]:
    """At most max_items rows, a seeded choice kept in file order (a file lists each person's
    templates together: its first rows would be few people)."""
    if len(rows) <= cfg.max_items:
        return rows
    keep = torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.max_items]
    return [rows[i] for i in sorted(keep.tolist())]


def rank_completions(lm: LoadedModel, rows: list[dict], pool: list[str],
                     cfg: ReversalConfig) -> tuple[list[int], list[int]]:
    """Per prompt, the true completion's rank among itself and others drawn from `pool` (the file's
    distinct completions), and the number of candidates."""
    gen = torch.Generator().manual_seed(cfg.seed)
    candidates = []
    for r in rows:
        others = [c for c in pool if c != r["completion"]]
        pick = torch.randperm(len(others), generator=gen)[:cfg.rank_candidates - 1].tolist()
        candidates.append([r["completion"], *(others[k] for k in pick)])
    requests = [split_request(lm.tokenizer, r["prompt"], c) for r, cands in zip(rows, candidates) for c in cands]
    if lm.family == "mdm":
        scores = mdm_chain_rule_log_likelihood(lm.model, requests, max_batch=cfg.max_batch)
    else:
        scores = arm_log_likelihood(lm.model, requests, max_batch=cfg.max_batch)
    ranks, at = [], 0
    for cands in candidates:
        lls = [s.logprob for s in scores[at:at + len(cands)]]
        ranks.append(1 + sum(ll > lls[0] for ll in lls[1:]))
        at += len(cands)
    return ranks, [len(c) for c in candidates]


def evaluate(models: dict[str, LoadedModel], files: dict[str, list[dict]], cfg: ReversalConfig) -> dict:
    generations, ranks, samples = [], [], []
    for family, lm in models.items():
        for name, (subset, direction, templates) in rs.FILES.items():
            rows = pick_items(files[name], cfg)
            where = {"family": family, "file": name, "subset": subset, "direction": direction, "templates": templates}
            for w in cfg.cfg_scales if family == "mdm" else (0.0,):
                texts = generate_texts(lm, rows, cfg, w)
                generations.append({**where, "cfg_scale": w,
                                    **rs.score_generations(texts, [r["completion"] for r in rows])})
                samples += [{**where, "cfg_scale": w, "prompt": r["prompt"], "completion": r["completion"],
                             "generated": t} for r, t in zip(rows[:5], texts)]
            got, counts = rank_completions(lm, rows, sorted({r["completion"] for r in files[name]}), cfg)
            ranks.append({**where, "candidates": max(counts), **rs.score_ranks(got, counts)})
    return {"generations": generations, "ranks": ranks, "samples": samples}


def run(cfg: ReversalConfig, tasks_dir: str | Path, finetune_dir: str | Path, out_dir: str | Path,
        tracker: Tracker) -> dict[str, float]:
    started = time.perf_counter()
    check_device(cfg.device, "reversal.device")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    files = load_folder(Path(tasks_dir) / "reversal")
    models = load_finetuned_pair("reversal", {"mdm": cfg.mdm, "arm": cfg.arm}, Path(finetune_dir), cfg.device)
    tracker.log_params({f"reversal/{k}": v for k, v in dataclasses.asdict(cfg).items()})
    results = {"config": dataclasses.asdict(cfg), **evaluate(models, files, cfg),
               "models": {f: {"group": getattr(cfg, f), "base": lm.config.get("finetuned_from", {}).get("base"),
                              "epochs": lm.config.get("finetune", {}).get("epochs")} for f, lm in models.items()}}
    results["seconds"] = time.perf_counter() - started
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "results.json", results)
    atomic_write_text(out_dir / "table5.md", rs.table5(results, cfg.table5_cfg))
    atomic_write_text(out_dir / "table14.md", rs.table14(results))
    atomic_write_text(out_dir / "samples.jsonl", "".join(json.dumps(s) + "\n" for s in results["samples"]))
    for name in ("results.json", "table5.md", "table14.md", "samples.jsonl"):
        tracker.log_artifact(out_dir / name, "reversal")
    metrics = rs.flat_metrics(results)
    tracker.log_metrics(metrics)
    return metrics


def main(argv: list[str] | None = None) -> int:
    def run_cli(cfg: ReversalConfig, args, tracker: Tracker) -> dict[str, float]:
        return run(cfg, args.tasks, args.models, args.out, tracker)

    def summary(m: dict[str, float]) -> str:
        return ", ".join(f"{f.upper()} reverse exact match {100 * m[f'{f}/reverse/exact_match']:.0f}% "
                         f"(same {100 * m[f'{f}/same/exact_match']:.0f}%)" for f in ("mdm", "arm"))

    return run_stage("reversal", __doc__, ReversalConfig, {
        "--tasks": ("data/tasks", "task folder (reversal/)"),
        "--models": ("models/finetune", "fine-tuned artifacts, one folder per finetune group"),
        "--out": ("reports/reversal", "report folder")}, run_cli, argv, summary)


if __name__ == "__main__":
    raise SystemExit(main())
