"""The one reader of the corpus files (`train.jsonl`, `val.jsonl`) for every stage after `corpus`.

Each line is one document, {"id", "source", "year", "text"} (sources.document.Document.record);
blank lines are skipped. A line that is not such a JSON object ends as an InputError naming the
file and its 1-based line number, so a hand-edited or truncated corpus fails as one line.

A package of its own (not a module of data/sources) so that the tokenizer and shards stages can
depend on this reader without depending on, or importing, the corpus sources.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pipeline_steps.core.errors import InputError
from pipeline_steps.core.files import json_lines

EXPECTED = 'one JSON object per line, {"id", "source", "year", "text"} with a string "text"'


def read_rows(path: str | Path, fields: tuple[str, ...] = ("text",)) -> Iterator[dict]:
    """Every document row of a corpus file in order; each must hold `fields` ("text" a string)."""
    for number, row in json_lines(path, EXPECTED):
        if not isinstance(row, dict):
            raise InputError(f"{path}:{number}: a JSON {type(row).__name__}, not an object; expected {EXPECTED}")
        missing = [f for f in fields if f not in row]
        if missing:
            raise InputError(f"{path}:{number}: no field {missing[0]!r} (fields: {sorted(row)}); "
                             f"expected {EXPECTED}")
        if not isinstance(row.get("text", ""), str):
            raise InputError(f"{path}:{number}: \"text\" has type {type(row['text']).__name__}, "
                             f"not str; expected {EXPECTED}")
        yield row


def read_texts(path: str | Path) -> Iterator[str]:
    """The text of every document of a corpus file, in order."""
    return (row["text"] for row in read_rows(path))
