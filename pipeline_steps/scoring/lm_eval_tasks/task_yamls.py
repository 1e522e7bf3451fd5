"""lm-eval task YAMLs for the evaluation sets of stage `tasks`, read offline as local JSON.

One YAML per task and split, named `smdm_<task>` (test) or `smdm_<task>_<split>`, written into a
folder that `--include_path` (or `TaskManager(include_path=...)`) then indexes. The record format
(pipeline_steps/data/task_sources/items.py) decides the task type:

    multiple choice {"query","choices","gold"}  output_type multiple_choice, metrics acc, acc_norm
    greedy          {"query","target"}          output_type loglikelihood, metrics acc (is_greedy)
                                                and perplexity
    math            {"question","answer"}       skipped: no generate_until YAML yet (the lm-eval
                                                models can generate)

The scored text is query + choice verbatim, as our evaluator scores it. Multiple choice follows
stock lm-eval: the choices lose the one leading space that joins them to the query and
`target_delimiter: " "` puts it back, so lm-eval's acc_norm (log-likelihood / len(choice)) divides
by the characters without that space, as pipeline_steps/scoring/evaluator.py does. (A choice
without a leading space would be scored with one added: every task source writes it.) Fields are
named directly (`doc_to_text: query`) rather than through Jinja ("{{query}}") where possible:
lm-eval then returns the field as stored, where a rendered template would turn an all-digit query
into an int, drop a trailing newline, or literal_eval a target that looks like a list. The
choices do go through a template, which renders the stripped list as its Python repr and so reads
back exactly. A greedy target keeps its space: a `loglikelihood` request has no delimiter.
Data paths are written absolute: lm-eval resolves a relative `data_files` against the working
directory, not the YAML.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import yaml

from pipeline_steps.data.task_sources.items import item_format

log = logging.getLogger(__name__)

PREFIX = "smdm_"
STRIPPED_CHOICES = "{{ choices | map('regex_replace', '^ ', '') | list }}"
"""Each choice without its one leading space (lm-eval's `regex_replace` filter); rendered as a
Python list literal, which lm-eval reads back with ast.literal_eval."""


def _metric(name: str, aggregation: str, higher_is_better: bool) -> dict:
    return {"metric": name, "aggregation": aggregation, "higher_is_better": higher_is_better}


def task_config(name: str, data_file: Path, kind: str, cache_dir: Path | None = None) -> dict:
    """The lm-eval task config of one JSONL file of `kind` `mc` or `greedy` (items.FIELDS).

    `cache_dir` pins where `datasets` caches the parsed file; by default it follows HF_HOME,
    which `datasets` reads once at import (too late to change from inside a running process).
    """
    dataset_kwargs = {"data_files": {"test": str(Path(data_file).resolve())}}
    if cache_dir is not None:
        dataset_kwargs["cache_dir"] = str(Path(cache_dir).resolve())
    config = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": dataset_kwargs,
        "test_split": "test",
        "doc_to_text": "query",
        "target_delimiter": "",
    }
    if kind == "mc":
        return {**config, "output_type": "multiple_choice", "target_delimiter": " ",
                "doc_to_choice": STRIPPED_CHOICES, "doc_to_target": "gold",
                "metric_list": [_metric("acc", "mean", True), _metric("acc_norm", "mean", True)],
                "metadata": {"version": 1}}
    if kind == "greedy":
        return {**config, "output_type": "loglikelihood", "doc_to_target": "target",
                "metric_list": [_metric("acc", "mean", True), _metric("perplexity", "perplexity", False)],
                "metadata": {"version": 1}}
    raise ValueError(f"no lm-eval task type for items of kind {kind!r}")


def _kind(data_file: Path) -> str:
    with open(data_file, encoding="utf-8") as handle:
        first = next((line for line in handle if line.strip()), None)
    if first is None:
        raise ValueError(f"{data_file}: no items")
    return item_format(json.loads(first))


def task_name(task: str, split: str) -> str:
    return f"{PREFIX}{task}" if split == "test" else f"{PREFIX}{task}_{split}"


def write_task_yamls(tasks_dir: str | Path, out_dir: str | Path, splits: tuple[str, ...] = ("test",),
                     cache_dir: str | Path | None = None) -> list[str]:
    """One YAML per likelihood task and split found under `tasks_dir`; returns the task names.

    Earlier `smdm_*.yaml` files in `out_dir` are removed first, so a task that is gone from
    `tasks_dir` cannot linger and point lm-eval at data that no longer exists.
    """
    tasks_dir, out_dir = Path(tasks_dir), Path(out_dir)
    if not tasks_dir.is_dir():
        raise FileNotFoundError(f"{tasks_dir}: no tasks folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(f"{PREFIX}*.yaml"):
        stale.unlink()
    names = []
    for folder in sorted(p for p in tasks_dir.iterdir() if p.is_dir()):
        for split in splits:
            data_file = folder / f"{split}.jsonl"
            if not data_file.exists():
                continue
            kind = _kind(data_file)
            if kind not in ("mc", "greedy"):
                log.info("%s: %s items are a generation task; no lm-eval YAML", data_file, kind)
                continue
            name = task_name(folder.name, split)
            config = task_config(name, data_file, kind, cache_dir)
            text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
            (out_dir / f"{name}.yaml").write_text(text, encoding="utf-8")
            names.append(name)
    return names
