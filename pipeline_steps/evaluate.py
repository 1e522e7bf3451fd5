"""Stage `evaluate`: zero-shot benchmarks of the base models (PAPER.md sections 4, 5 and 10).

For every task of `tasks` (multiple choice or greedy, from data/tasks), the MDM's likelihood
method and CFG scale w are chosen on the task's held-out items (heldout.jsonl) over
`method_grid` x `cfg_grid`, never on the reported ones; then on the reported items (test.jsonl):
- the MDM at the chosen (method, w), at w = 0 (Table 1), Monte Carlo and chain rule at w = 0 and
  at the chosen w (Table 11), and with mask padding to its training context at w = 0 (Table 10);
- the stochastic-length MDM (`stochlen_group`, when trained) with the chosen method at w = 0;
- the ARM, exact log-likelihood or greedy match (Table 2);
- a few MDM grid models on the in-domain tasks, against their validation loss (Figure 3).
Every cell has acc, acc_norm, n, standard errors, forward passes and seconds. Monte Carlo noise
is seeded from each request's own tokens (model/likelihood.py), so no cell depends on batching
or on which other items it was scored with. Greedy tasks
(LAMBADA-like: query + target) are scored by greedy decoding, so their only choice is w.

    reports/evaluate/results.json   every cell, every selection with its held-out scores
    reports/evaluate/table{1,2,10,11}.md, figure3.png   (pipeline_steps/scoring/tables.py)
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from model.artifact import find_artifact
from model.likelihood import LIKELIHOOD_METHODS, MonteCarloConfig, check_early_stopping
from pipeline_steps.core.errors import InputError
from pipeline_steps.core.files import atomic_write_json
from pipeline_steps.core.params import load_params
from pipeline_steps.core.stage_cli import run_stage
from pipeline_steps.core.tracking import Tracker
from pipeline_steps.data.task_sources.items import item_format, read_items, subsample
from pipeline_steps.scoring import tables
from pipeline_steps.scoring.evaluator import (
    METHODS,
    EvalSettings,
    LoadedModel,
    check_device,
    evaluate_items,
    load_model,
)

log = logging.getLogger(__name__)

# PAPER.md section 5's per-task choice where it gives one; ours for the rest: ARC-Challenge like
# ARC-Easy, WinoGrande's multi-token partial sentences by the chain rule, BoolQ (one-token
# answers, where both agree) by the chain rule because it is exact and one pass per choice.
# LAMBADA's "chain rule" is the deterministic one-pass-per-token greedy decode of section 5.
TASK_METHODS = {"hellaswag": "mc", "openbookqa": "chain", "arc_easy": "mc", "arc_challenge": "mc",
                "boolq": "chain", "piqa": "chain", "siqa": "mc", "winogrande": "chain",
                "race": "mc", "lambada_openai": "greedy", "in_domain_lastword": "greedy",
                "in_domain_continuation": "mc"}
IN_DOMAIN = ("in_domain_lastword", "in_domain_continuation")
# ARC-Challenge and WinoGrande were at chance for every model in the paper and left out; RACE
# needs the HF hub. GSM8K, math and reversal are generation tasks of later stages.
DEFAULT_TASKS = ("hellaswag", "openbookqa", "arc_easy", "boolq", "piqa", "siqa", "lambada_openai",
                 *IN_DOMAIN)
NOT_HERE = ("gsm8k", "math", "reversal")


@dataclass(frozen=True)
class EvaluateConfig:
    """The `evaluate` section of params.yaml."""

    tasks: tuple[str, ...] = DEFAULT_TASKS
    """Tasks to evaluate (folders of data/tasks with multiple-choice or greedy items)."""
    methods: dict[str, str] = field(default_factory=lambda: dict(TASK_METHODS))
    """Default likelihood method per task (PAPER.md section 5); wins ties in the selection."""
    method_grid: tuple[str, ...] = ("mc", "chain")
    """MDM methods tried on held-out items for multiple-choice tasks (empty: the default only)."""
    cfg_grid: tuple[float, ...] = (0.0, 1.0)
    """CFG scales w tried on held-out items; ties go to the smaller w."""
    max_items: int | None = 20
    """Reported items per task: a seeded subsample of test.jsonl (null: all)."""
    task_max_items: dict[str, int] = field(default_factory=lambda: {t: 200 for t in IN_DOMAIN})
    """Per-task reported-item caps overriding `max_items` (the in-domain tasks are where tiny
    models beat chance, so their effects need the larger n)."""
    heldout_items: int | None = 10
    """Held-out items per task used for the selection (a seeded subsample; null: all)."""
    min_items: int = 10
    """Fewest reported items a task may have; fewer is an error naming the task."""
    compare_methods: bool = True
    """Table 11: score both mc and chain on the reported items at w = 0 and the chosen w."""
    mask_padding: bool = True
    """Table 10: also score the MDM with [MASK] padding to its training context (w = 0)."""
    mc: MonteCarloConfig = field(default_factory=MonteCarloConfig)
    """Monte Carlo settings of every MDM likelihood (the paper: 1024 samples in blocks of 32)."""
    seed: int = 0
    """Salt of the seeded item subsamples (the Monte Carlo noise has its own, `mc.seed`)."""
    max_batch: int = 64
    """Most model rows per forward pass."""
    mdm_group: str = "mdm_c3/16k"
    """The MDM: a pretrain group of one size, or `<group>/<size>` for one run of a grid (a base
    model that is also a grid point is trained once)."""
    arm_group: str = "arm_c3/16k"
    """The ARM: a group of one size, or `<group>/<size>`."""
    stochlen_group: str | None = "mdm_stochlen"
    """The stochastic-length MDM (Table 10), as above; skipped when not trained."""
    grid_models: int = 4
    """MDM grid models for Figure 3, spread evenly over validation loss (0: no figure data)."""
    grid_tasks: tuple[str, ...] = IN_DOMAIN
    """Tasks the grid models are scored on (the default method, w = 0)."""
    device: str = "cpu"
    """torch device for every model."""
    threads: int = 1
    """torch intra-op threads on CPU (tiny models: 1 beats 2 on a shared 2-core box); 0 = default."""

    def __post_init__(self) -> None:
        bad = sorted(set(self.tasks) & set(NOT_HERE))
        if bad or not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks must be distinct, non-empty and without {list(NOT_HERE)} "
                             f"(later stages), got {list(self.tasks)}")
        missing = sorted(set(self.tasks) - set(self.methods))
        wrong = {t: m for t, m in self.methods.items() if m not in METHODS}
        if missing or wrong:
            raise ValueError(f"methods: no method for {missing} or unknown methods {wrong}")
        if set(self.method_grid) - set(LIKELIHOOD_METHODS) or not self.cfg_grid:
            raise ValueError(f"method_grid must be from {LIKELIHOOD_METHODS} and cfg_grid non-empty")
        if any(w < 0 for w in self.cfg_grid) or not set(self.grid_tasks) <= set(self.tasks):
            raise ValueError("cfg_grid must be >= 0 and grid_tasks a subset of tasks")
        if self.min_items < 1 or (self.max_items is not None and self.max_items < self.min_items):
            raise ValueError(f"need 1 <= min_items <= max_items, got {self.min_items}, {self.max_items}")
        unknown = sorted(set(self.task_max_items) - set(self.tasks))
        small = {t: n for t, n in self.task_max_items.items() if n < self.min_items}
        if unknown or small:
            raise ValueError(f"task_max_items: tasks {unknown} are not in tasks, or caps {small} "
                             f"are below min_items={self.min_items}")
        if self.grid_models < 0 or self.threads < 0:
            raise ValueError("grid_models and threads must be >= 0")
        if reason := self.mc_use():
            try:
                check_early_stopping("mc", self.mc)
            except ValueError as err:
                raise ValueError(f"mc: {err} (the MDM is scored by mc through {reason})") from None
        self.settings("chain", 0.0)  # validates max_batch

    def mc_use(self) -> str:
        """Why some MDM cell uses the mc estimator ('' if none does): a task's method, the
        selection grid or Table 11, on a multiple-choice task (a `greedy` task has targets)."""
        choice_tasks = [t for t in self.tasks if self.methods[t] != "greedy"]
        by_default = [t for t in choice_tasks if self.methods[t] == "mc"]
        if by_default:
            return f"methods of {by_default}"
        if choice_tasks and "mc" in self.method_grid:
            return "method_grid"
        return "compare_methods (Table 11)" if choice_tasks and self.compare_methods else ""

    def settings(self, method: str, w: float, pad_to: int | None = None) -> EvalSettings:
        return EvalSettings(method=method, cfg_scale=w, mc=self.mc, pad_to=pad_to,
                            max_batch=self.max_batch)


@dataclass(frozen=True)
class TaskData:
    """One task's items as the stage uses them."""

    kind: str
    """`mc` or `greedy`."""
    test: list[dict]
    """Reported items (capped)."""
    heldout: list[dict]
    """Selection items (capped); disjoint from `test` by construction of data/tasks."""


def load_tasks(cfg: EvaluateConfig, tasks_dir: Path) -> dict[str, TaskData]:
    """Every task's items; an error names a task that is missing, of the wrong kind or too small."""
    out = {}
    for task in cfg.tasks:
        folder = tasks_dir / task
        if not (folder / "test.jsonl").exists():
            raise FileNotFoundError(f"{task}: no {folder / 'test.jsonl'} (is it in tasks.tasks?)")
        test = read_items(folder / "test.jsonl")
        if len(test) < cfg.min_items:
            raise InputError(f"{task}: {len(test)} reported items, fewer than min_items="
                             f"{cfg.min_items}")
        kind = item_format(test[0])
        if kind not in ("mc", "greedy") or (kind == "greedy") != (cfg.methods[task] == "greedy"):
            raise InputError(f"{task}: items of kind {kind!r} cannot take method "
                             f"{cfg.methods[task]!r} (greedy items need `greedy`)")
        heldout_file = folder / "heldout.jsonl"
        heldout = read_items(heldout_file) if heldout_file.exists() else []
        cap = cfg.task_max_items.get(task, cfg.max_items)
        out[task] = TaskData(kind, subsample(test, cap, f"evaluate:{cfg.seed}:{task}"),
                             subsample(heldout, cfg.heldout_items, f"select:{cfg.seed}:{task}"))
    return out


def chance(data: TaskData) -> float:
    """Expected accuracy of guessing: mean 1 / #choices (0 for an open-vocabulary target)."""
    if data.kind == "greedy":
        return 0.0
    return sum(1 / len(item["choices"]) for item in data.test) / len(data.test)


# ---------------------------------------------------------------------------------------------
# Models.

def base_models(cfg: EvaluateConfig, pretrain_dir: Path) -> dict[str, LoadedModel]:
    """`mdm`, `arm` and, when its group was trained, `mdm_stochlen`."""
    models = {"mdm": load_model(find_artifact(pretrain_dir / cfg.mdm_group), cfg.device),
              "arm": load_model(find_artifact(pretrain_dir / cfg.arm_group), cfg.device)}
    if models["mdm"].family != "mdm" or models["arm"].family != "arm":
        raise InputError(f"{cfg.mdm_group} must hold an MDM and {cfg.arm_group} an ARM")
    if cfg.stochlen_group and (pretrain_dir / cfg.stochlen_group).is_dir():
        models["mdm_stochlen"] = load_model(find_artifact(pretrain_dir / cfg.stochlen_group),
                                            cfg.device)
    return models


def grid_models(pretrain_dir: Path, groups: list[str], k: int) -> list[dict]:
    """At most k MDM grid runs, evenly spread over the range of validation losses."""
    runs = []
    for group in groups:
        for record in sorted((pretrain_dir / group).glob("*/run.json")):
            run = json.loads(record.read_text())
            if run.get("family") == "mdm" and "val/loss" in run:
                runs.append({"group": group, "size": run["size"], "path": str(record.parent),
                             "val_loss": run["val/loss"], "val_loss_stderr": run.get("val/loss_stderr"),
                             "n_params": run.get("n_params"), "budget": run.get("budget")})
    runs.sort(key=lambda r: (r["val_loss"], r["group"], r["size"]))
    if len(runs) <= k:
        return runs
    # nearest run to each of k evenly spaced losses: grid losses bunch up (the largest sizes are
    # undertrained at small budgets), and spreading by rank would pick the bunch
    lo, hi = runs[0]["val_loss"], runs[-1]["val_loss"]
    picked: list[int] = []
    for i in range(k):
        target = lo + (hi - lo) * i / max(k - 1, 1)
        free = [j for j in range(len(runs)) if j not in picked]
        picked.append(min(free, key=lambda j: abs(runs[j]["val_loss"] - target)))
    return [runs[j] for j in sorted(picked)]


# ---------------------------------------------------------------------------------------------
# Selection on held-out items, then the reported cells.

def score_cell(task: str, name: str, lm: LoadedModel, items: list[dict], s: EvalSettings,
               **extra: Any) -> dict[str, Any]:
    r = evaluate_items(lm, items, s, keep_items=False)
    cell = {"task": task, "model": name, "artifact": lm.path, "method": r["effective_method"],
            "w": r["cfg_scale"], "pad_to": r["pad_to"], "acc": r["acc"], "acc_norm": r["acc_norm"],
            "n": r["n"], "stderr": r["acc_stderr"], "stderr_norm": r["acc_norm_stderr"],
            "passes": r["forward_passes"], "seconds": r["seconds"],
            "truncated_requests": r["truncated_requests"], **extra}
    log.info("%s %s %s w=%g pad=%s: acc=%.3f n=%d passes=%d %.1fs", task, name, cell["method"],
             cell["w"], cell["pad_to"], cell["acc"], cell["n"], cell["passes"], cell["seconds"])
    return cell


def candidates(kind: str, default: str, cfg: EvaluateConfig) -> list[tuple[str, float]]:
    """(method, w) pairs in order of preference: ties go to the default method, then small w."""
    methods = ["greedy"] if kind == "greedy" else list(dict.fromkeys([default, *cfg.method_grid]))
    return [(m, w) for m in methods for w in sorted(set(cfg.cfg_grid))]


def select_setting(lm: LoadedModel, task: str, heldout: list[dict], kind: str,
                   cfg: EvaluateConfig) -> dict[str, Any]:
    """The (method, w) with the best held-out accuracy; only `heldout` items are ever scored."""
    options = candidates(kind, cfg.methods[task], cfg)
    if len(options) == 1 or not heldout:
        note = "one candidate" if heldout else "no held-out items: the default, unselected"
        return {"method": options[0][0], "w": options[0][1], "heldout_n": len(heldout),
                "scores": [], "note": note}
    scores = [score_cell(task, "mdm", lm, heldout, cfg.settings(m, w), split="heldout")
              for m, w in options]
    best = max(range(len(scores)), key=lambda i: (scores[i]["acc"], -i))
    return {"method": options[best][0], "w": options[best][1], "heldout_n": len(heldout),
            "scores": [{k: c[k] for k in ("method", "w", "acc", "acc_norm", "n", "passes", "seconds")}
                       for c in scores], "note": "best held-out acc"}


def mdm_settings(kind: str, selection: dict, cfg: EvaluateConfig, context: int) -> list[tuple]:
    """(method, w, pad_to) of every MDM cell the tables need, without repeats."""
    m, w = selection["method"], selection["w"]
    wanted = [(m, w, None), (m, 0.0, None)]  # Table 2 and Table 1
    if kind == "mc" and cfg.compare_methods:
        wanted += [(x, v, None) for x in ("mc", "chain") for v in (0.0, w)]  # Table 11
    if cfg.mask_padding:
        wanted.append((m, 0.0, context))  # Table 10
    return list(dict.fromkeys(wanted))


def evaluate_task(task: str, data: TaskData, selection: dict, models: dict[str, LoadedModel],
                  cfg: EvaluateConfig) -> list[dict]:
    mdm = models["mdm"]
    cells = [score_cell(task, "mdm", mdm, data.test, cfg.settings(m, w, pad), split="test")
             for m, w, pad in mdm_settings(data.kind, selection, cfg, mdm.config["context"])]
    arm_method = "greedy" if data.kind == "greedy" else "chain"  # any likelihood method is exact
    cells.append(score_cell(task, "arm", models["arm"], data.test, cfg.settings(arm_method, 0.0),
                            split="test"))
    if "mdm_stochlen" in models:
        cells.append(score_cell(task, "mdm_stochlen", models["mdm_stochlen"], data.test,
                                cfg.settings(selection["method"], 0.0), split="test"))
    return cells


def evaluate_grid(cfg: EvaluateConfig, data: dict[str, TaskData], runs: list[dict]) -> list[dict]:
    """Figure 3's cells: each grid model on the in-domain tasks, default method, w = 0."""
    cells = []
    for run in runs:
        lm = load_model(run["path"], cfg.device)
        for task in cfg.grid_tasks:
            cells.append(score_cell(task, f"grid:{run['group']}/{run['size']}", lm, data[task].test,
                                    cfg.settings(cfg.methods[task], 0.0), split="test", **run))
    return cells


# ---------------------------------------------------------------------------------------------
# The stage.

def flat_metrics(results: dict[str, Any]) -> dict[str, float]:
    """`<model>/<task>/<name>`: mdm at the chosen setting, mdm_w0, mdm_pad, mdm_stochlen, arm."""
    metrics: dict[str, float] = {}
    for task, sel in results["selection"].items():
        picks = {"mdm": tables.find(results, task, "mdm", sel["method"], sel["w"]),
                 "mdm_w0": tables.find(results, task, "mdm", sel["method"], 0.0),
                 "mdm_pad": tables.find(results, task, "mdm", sel["method"], 0.0, padded=True),
                 "mdm_stochlen": tables.find(results, task, "mdm_stochlen"),
                 "arm": tables.find(results, task, "arm")}
        for name, cell in picks.items():
            for key in ("acc", "acc_norm", "stderr", "n", "passes", "seconds"):
                if cell is not None and cell[key] is not None:
                    metrics[f"{name}/{task}/{key}"] = float(cell[key])
        metrics[f"mdm/{task}/cfg_scale"] = float(sel["w"])
    everything = results["cells"] + results["grid"] + [
        s for sel in results["selection"].values() for s in sel["scores"]]
    metrics["total/passes"] = float(sum(c["passes"] for c in everything))
    metrics["total/seconds"] = float(results["seconds"])
    return metrics


def run(cfg: EvaluateConfig, tasks_dir: str | Path, pretrain_dir: str | Path, out_dir: str | Path,
        tracker: Tracker, grid_groups: tuple[str, ...] = ()) -> dict[str, float]:
    """Select, evaluate, write results.json + tables + figure into `out_dir`; flat metrics back.

    `grid_groups`: pretrain groups of the MDM IsoFLOP grid Figure 3 may draw from.
    """
    started = time.perf_counter()
    check_device(cfg.device, "evaluate.device")  # params alone cannot tell: the paper profile's cuda is fine on a GPU
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tracker.log_params({f"evaluate/{k}": v for k, v in dataclasses.asdict(cfg).items()})
    data = load_tasks(cfg, Path(tasks_dir))
    models = base_models(cfg, Path(pretrain_dir))
    selection, cells = {}, []
    for task, task_data in data.items():
        selection[task] = select_setting(models["mdm"], task, task_data.heldout, task_data.kind, cfg)
        cells += evaluate_task(task, task_data, selection[task], models, cfg)
    runs = grid_models(Path(pretrain_dir), list(grid_groups), cfg.grid_models)
    grid = evaluate_grid(cfg, data, runs)
    results = {"config": dataclasses.asdict(cfg),
               "tasks": {t: {"kind": d.kind, "n_test": len(d.test), "n_heldout": len(d.heldout),
                             "chance": chance(d), "default_method": cfg.methods[t]}
                         for t, d in data.items()},
               "models": {name: lm.path for name, lm in models.items()},
               "stochlen_trained": "mdm_stochlen" in models, "selection": selection,
               "cells": cells, "grid": grid, "seconds": time.perf_counter() - started}
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "results.json", results)
    for path in [out_dir / "results.json", *tables.write_reports(results, out_dir)]:
        tracker.log_artifact(path, "evaluate")
    metrics = flat_metrics(results)
    tracker.log_metrics(metrics)
    return metrics


def grid_groups_of(params: dict[str, Any]) -> tuple[str, ...]:
    """The MDM IsoFLOP grid groups of params.yaml's pretrain section."""
    groups = params.get("pretrain", {}).get("groups", {})
    return tuple(name for name, g in groups.items()
                 if g.get("kind") == "grid" and g.get("family") == "mdm")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def run_cli(cfg: EvaluateConfig, args, tracker: Tracker) -> dict[str, float]:
        groups = grid_groups_of(load_params(args.params))  # Figure 3's MDM grid groups
        return run(cfg, args.tasks, args.models, args.out, tracker, groups)

    def summary(m: dict[str, float]) -> str:
        tasks = [k.split("/")[1] for k in m if k.startswith("arm/") and k.endswith("/acc")]
        return ", ".join(f"{t}: mdm {m[f'mdm/{t}/acc']:.3f} arm {m[f'arm/{t}/acc']:.3f}" for t in tasks)

    return run_stage("evaluate", __doc__, EvaluateConfig, {
        "--tasks": ("data/tasks", "task folder"),
        "--models": ("models/pretrain", "pretrain artifacts, <group>/<size>; params.yaml's "
                     "pretrain.groups names the MDM grid groups"),
        "--out": ("reports/evaluate", "report folder")}, run_cli, argv, summary)


if __name__ == "__main__":
    raise SystemExit(main())
