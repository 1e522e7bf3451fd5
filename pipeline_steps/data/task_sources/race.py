"""RACE (English reading-comprehension exams) through HF `datasets` streaming.

RACE is in no registry package, so it is read from the hub when online (`ehovy/race`,
configuration `high`: reported split `test`, held-out items from `validation`) or from a local
.jsonl / .parquet file with the same fields. Both go through `datasets.load_dataset(...,
streaming=True)`, so the offline tests exercise the very code path a hub run takes.

Rows are one question each: {example_id (the article's file), article, question, options
[4 strings], answer ("A".."D")}. Each becomes a multiple-choice item:
- a plain question: query "Article: <article>\\n\\nQuestion: <question>\\nAnswer:", choices
  " <option>";
- a cloze question with a `_` blank after some words ("The author thinks _ ."): query
  "Article: <article>\\n\\n<words before the blank>", choices " <option>" plus the words after
  the blank.
Item ids are `<split>/<example_id>#<k>`: questions on one article share a group, so a seeded
held-out slice of a single local file never splits an article.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from pipeline_steps.core.errors import InputError
from pipeline_steps.data.sources.hub import local_rows
from pipeline_steps.data.task_sources.items import mc_item

LETTERS = "ABCDEFGH"
FIELDS = ("example_id", "article", "question", "options", "answer")
HUB_SPLITS = ("test", "validation")
"""Reported split and held-out split when reading from the hub."""


def is_local(source: str) -> bool:
    return Path(source).exists()


def stream_rows(source: str, config: str | None, split: str) -> Iterable[dict]:
    """Rows of `split` from a hub dataset, or every row of a local file (one split)."""
    if is_local(source):
        return local_rows(source, "tasks.race")
    import datasets  # seconds to import; only RACE needs it here

    return datasets.load_dataset(source, config, split=split, streaming=True)


def _query_and_choices(article: str, question: str,
                       options: list[str]) -> tuple[str, list[str]]:
    head = f"Article: {article.strip()}\n\n"
    before, blank, after = question.partition("_")
    if blank and before.strip():
        # Some options already end with the sentence's punctuation; only words get a space.
        after = after.strip()
        joiner = " " if after[:1].isalnum() else ""
        return head + before.rstrip(), [" " + o.strip() + (joiner + after if after else "")
                                        for o in options]
    return head + f"Question: {question.strip()}\nAnswer:", [" " + o.strip() for o in options]


def item_from_row(row: dict, split: str, counters: dict[str, int]) -> dict:
    """The item of one row; a ValueError names the field that is missing or malformed."""
    missing = [field for field in FIELDS if row.get(field) is None]
    if missing:
        raise ValueError(f"no field {missing[0]!r} (fields: {sorted(k for k, v in row.items() if v is not None)}); "
                         f"RACE rows need {list(FIELDS)}")
    for field in ("article", "question"):
        if not isinstance(row[field], str):
            raise ValueError(f"{field} must be a string, got {type(row[field]).__name__}")
    options = row["options"]
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise ValueError(f"options must be a list of strings, got {options!r:.80}")
    letters = LETTERS[:len(options)]
    answer = str(row["answer"]).strip().upper()
    if len(answer) != 1 or answer not in letters:
        raise ValueError(f"answer {row['answer']!r} is not one of {list(letters)} (one per option)")
    article_id = str(row["example_id"])
    k = counters[article_id] = counters.get(article_id, -1) + 1
    query, choices = _query_and_choices(row["article"], row["question"], options)
    return mc_item(f"{split}/{article_id}#{k}", query, choices, letters.index(answer))


def items(rows: Iterable[dict], split: str, source: str = "RACE") -> Iterator[dict]:
    """Items of `rows` in order; a bad row is an InputError naming `source`, split and row."""
    counters: dict[str, int] = {}
    for number, row in enumerate(rows, 1):
        try:
            yield item_from_row(row, split, counters)
        except ValueError as err:
            raise InputError(f"tasks.race: {source} (split {split}) row {number}: {err}") from None


def load(source: str, config: str | None) -> tuple[list[dict], list[dict] | None, dict]:
    """(reported items, held-out pool or None for a local file, provenance)."""
    if is_local(source):
        test = list(items(stream_rows(source, config, "train"), "local", source))
        pool = None
        info = {"source": f"file:{Path(source).resolve()}", "upstream_split": "file"}
    else:
        test_split, heldout_split = HUB_SPLITS
        test = list(items(stream_rows(source, config, test_split), test_split, source))
        pool = list(items(stream_rows(source, config, heldout_split), heldout_split, source))
        info = {"source": f"hf:{source}", "config": config, "upstream_split": test_split,
                "heldout_upstream_split": heldout_split}
    info["license"] = "RACE terms: non-commercial research use"
    return test, pool, info
