"""The one JSONL format every evaluation set is written in, and seeded, order-free selection.

Three record shapes, one JSON object per line:

    multiple choice  {"id": str, "query": str, "choices": [str, ...], "gold": int}
    greedy / word    {"id": str, "query": str, "target": str}
    math             {"id": str, "question": str, "answer": str}

The scored text is `query + choice` (or `query + target`) verbatim, so the space between them
belongs to the continuation, as in lm-eval: query "Question: ...\\nAnswer:", choice " text";
a query never ends in whitespace. lm-eval reads these files as a local `json` dataset with
`doc_to_text: query`, `doc_to_target: gold`, the choices without their leading space
and `target_delimiter: " "` (scoring/lm_eval_tasks/task_yamls.py), so that lm-eval's acc_norm
divides by the choice's length without the space, as the evaluator's does.

An id may name a group before a `#` (`val-doc-17#4`): items of one group (one article, one
corpus document) always land on the same side of a held-out split, so held-out items never
share a passage with reported ones.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import sentencepiece as spm

from pipeline_steps.core.errors import InputError
from pipeline_steps.core.files import json_lines, unit_hash

FIELDS = {"mc": ("id", "query", "choices", "gold"), "greedy": ("id", "query", "target"),
          "math": ("id", "question", "answer")}


def _strings(item_id: str, **fields: object) -> None:
    # Items also come from files people write: a number where text belongs is a ValueError here.
    for name, value in fields.items():
        if not isinstance(value, str):
            raise ValueError(f"item {item_id!r}: {name} must be a string, got {type(value).__name__} {value!r:.60}")


def mc_item(item_id: str, query: str, choices: Sequence[str], gold: int) -> dict:
    _strings(item_id, query=query)
    if not isinstance(choices, (list, tuple)) or len(choices) < 2:
        raise ValueError(f"item {item_id!r}: choices must be a list of >= 2 strings, got {choices!r:.60}")
    _strings(item_id, **{f"choice {k}": c for k, c in enumerate(choices)})
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise ValueError(f"item {item_id!r}: gold must be an integer in [0, {len(choices)}) (an index "
                         f"into the {len(choices)} choices), got {gold!r}")
    blank = [k for k, c in enumerate(choices) if not c.strip()]
    if blank:
        raise ValueError(f"item {item_id!r}: choice {blank[0]} is blank ({choices[blank[0]]!r}); every choice needs text")
    if query != query.rstrip():
        raise ValueError(f"item {item_id!r}: query ends in whitespace (the separating space belongs to each choice)")
    return {"id": item_id, "query": query, "choices": list(choices), "gold": int(gold)}


def greedy_item(item_id: str, query: str, target: str) -> dict:
    _strings(item_id, query=query, target=target)
    if query != query.rstrip() or not target.strip():
        raise ValueError(f"item {item_id!r}: query ends in whitespace or the target is blank")
    return {"id": item_id, "query": query, "target": target}


def math_item(item_id: str, question: str, answer: str) -> dict:
    _strings(item_id, question=question, answer=answer)
    if not question.strip() or not answer.strip():
        raise ValueError(f"item {item_id!r}: empty question or answer")
    return {"id": item_id, "question": question, "answer": answer}


MAKERS = {"mc": mc_item, "greedy": greedy_item, "math": math_item}
"""The checked constructor of each of FIELDS' formats (arguments in FIELDS order)."""


def item_format(item: dict) -> str:
    """Which of FIELDS an item has (its keys, exactly, in any order)."""
    for name, fields in FIELDS.items():
        if set(item) == set(fields):
            return name
    shapes = "; ".join(f"{name} {{{', '.join(fields)}}}" for name, fields in FIELDS.items())
    raise ValueError(f"item {item.get('id')!r} has fields {sorted(item)}, expected those of one "
                     f"format: {shapes}")


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def encode_pair(sp: spm.SentencePieceProcessor, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """Prompt and response tokens as one text would encode them (the response's leading space is
    its first token's, as in the evaluator's requests)."""
    context = sp.encode(prompt)
    whole = sp.encode(prompt + response)
    if whole[:len(context)] == context and len(whole) > len(context):
        return context, whole[len(context):]
    return context, sp.encode(response)


def read_jsonl(path: str | Path) -> list[dict]:
    return [row for _, row in json_lines(path)]


def read_items(path: str | Path) -> list[dict]:
    """The items of an evaluation file, each checked as its constructor checks it, all of one
    format; a bad line is an InputError naming the file and its 1-based line number."""
    found: list[dict] = []
    for number, item in json_lines(path):
        try:
            if not isinstance(item, dict):
                raise ValueError(f"a JSON {type(item).__name__}, not an object")
            kind = item_format(item)
            if found and kind != item_format(found[0]):
                raise ValueError(f"a {kind} item among {item_format(found[0])} items; a file "
                                 "holds items of one format")
            MAKERS[kind](*(item[field] for field in FIELDS[kind]))
        except ValueError as err:
            raise InputError(f"{path}:{number}: {err}") from None
        found.append(item)
    return found


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
