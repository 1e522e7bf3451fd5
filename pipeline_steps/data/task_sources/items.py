"""The one JSONL format every evaluation set is written in, and seeded, order-free selection.

Three record shapes, one JSON object per line:

    multiple choice  {"id": str, "query": str, "choices": [str, ...], "gold": int}
    greedy / word    {"id": str, "query": str, "target": str}
    math             {"id": str, "question": str, "answer": str}

The scored text is `query + choice` (or `query + target`) verbatim, so the space between them
belongs to the continuation, as in lm-eval: query "Question: ...\\nAnswer:", choice " text";
a query never ends in whitespace. lm-eval reads these files as a local `json` dataset with
`doc_to_text: "{{query}}"`, `doc_to_choice: "{{choices}}"`, `doc_to_target: "{{gold}}"` and
`target_delimiter: ""` (the separating space is already in each choice).

An id may name a group before a `#` (`val-doc-17#4`): items of one group (one article, one
corpus document) always land on the same side of a held-out split, so held-out items never
share a passage with reported ones.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from pipeline_steps.core.files import unit_hash

FIELDS = {"mc": ("id", "query", "choices", "gold"), "greedy": ("id", "query", "target"),
          "math": ("id", "question", "answer")}


def mc_item(item_id: str, query: str, choices: Sequence[str], gold: int) -> dict:
    if len(choices) < 2 or not 0 <= gold < len(choices):
        raise ValueError(f"{item_id}: need >= 2 choices and 0 <= gold < {len(choices)}, "
                         f"got gold={gold}")
    if query != query.rstrip() or not all(c.strip() for c in choices):
        raise ValueError(f"{item_id}: query ends in whitespace or a choice is blank")
    return {"id": item_id, "query": query, "choices": list(choices), "gold": int(gold)}


def greedy_item(item_id: str, query: str, target: str) -> dict:
    if query != query.rstrip() or not target.strip():
        raise ValueError(f"{item_id}: query ends in whitespace or the target is blank")
    return {"id": item_id, "query": query, "target": target}


def math_item(item_id: str, question: str, answer: str) -> dict:
    if not question.strip() or not answer.strip():
        raise ValueError(f"{item_id}: empty question or answer")
    return {"id": item_id, "question": question, "answer": answer}


def item_format(item: dict) -> str:
    """Which of FIELDS an item has (its keys, exactly)."""
    for name, fields in FIELDS.items():
        if tuple(item) == fields:
            return name
    raise ValueError(f"item {item.get('id')!r} has fields {sorted(item)}, not one of {FIELDS}")


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def group_of(item: dict) -> str:
    return str(item["id"]).split("#", 1)[0]


def _ranked_groups(items: Sequence[dict], salt: str) -> list[list[int]]:
    """Item indices grouped by `group_of`, groups in a seeded order independent of input order."""
    groups: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(group_of(item), []).append(index)
    return [groups[g] for g in sorted(groups, key=lambda g: (unit_hash(salt, g), g))]


def take_groups(items: Sequence[dict], n: int, salt: str) -> tuple[list[dict], list[dict]]:
    """(chosen, rest): whole groups in seeded order until `n` items are chosen; input order kept.

    Ranking by a hash of the group key (not a shuffle of positions) keeps an item's side fixed
    when other items are added or capped away.
    """
    chosen: set[int] = set()
    for indices in _ranked_groups(items, salt):
        if len(chosen) >= n:
            break
        chosen.update(indices)
    return ([item for i, item in enumerate(items) if i in chosen],
            [item for i, item in enumerate(items) if i not in chosen])


def subsample(items: Sequence[dict], n: int | None, salt: str) -> list[dict]:
    """At most `n` items (a seeded choice of whole items, in input order); all when n is None."""
    if n is None or len(items) <= n:
        return list(items)
    ranked = sorted(range(len(items)), key=lambda i: (unit_hash(salt, str(items[i]["id"])), i))
    keep = set(ranked[:n])
    return [item for i, item in enumerate(items) if i in keep]
