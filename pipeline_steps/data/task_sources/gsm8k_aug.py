"""Deng et al.'s augmented GSM8K (GSM8K-Aug, ~385k problems), the paper's math training data.

It is in no registry package, so it is read from the hub when online (a dataset such as
`whynlp/gsm8k-aug` or `casperhansen/gsm8k_synthetic_cot`: rows {question, cot, answer}, `cot`
the `<<...>>` equations as one string or a list of them) or from a local file: a .jsonl /
.parquet with the same fields, or a .txt of the original `question||equations #### answer`
lines. Rows become those lines, the format math_problems writes; a malformed row or line is one
line naming the file and row.
"""
from __future__ import annotations

from collections.abc import Iterable
from itertools import islice
from pathlib import Path

from pipeline_steps.core.errors import InputError
from pipeline_steps.data.sources.hub import local_rows
from pipeline_steps.data.task_sources.math_problems import format_line, parse_line, read_lines

FIELDS = ("question", "cot", "answer")


def line_of_row(row: dict, where: str) -> str:
    """The `question||equations #### answer` line of a {question, cot, answer} row."""
    question, cot, answer = (row.get(f) for f in FIELDS)
    cot_ok = isinstance(cot, str) or (isinstance(cot, list) and all(isinstance(c, str) for c in cot))
    if not (isinstance(question, str) and cot_ok and isinstance(answer, (str, int, float))):
        raise InputError(f"{where}: expected GSM8K-Aug fields {list(FIELDS)} (question a string, cot a string or a "
                         f"list of strings, answer a string or number), got {({k: type(v).__name__ for k, v in row.items()})}")
    equations = " ".join(cot) if isinstance(cot, list) else cot
    line = format_line(question.strip(), equations.strip(), str(answer).strip())
    parse_line(line, where)  # an empty question or answer is an error here too
    return line


def _rows(source: str, split: str) -> Iterable[dict]:
    if Path(source).exists():
        return local_rows(source, "tasks.math_source")
    import datasets  # seconds to import; only a hub source needs it

    return datasets.load_dataset(source, split=split, streaming=True)


def load(source: str, limit: int, split: str = "train") -> list[str]:
    """The first `limit` problems of `source` as `question||equations #### answer` lines."""
    path = Path(source)
    if path.exists() and path.suffix == ".txt":
        out = [line for _, line in read_lines(path, limit)]
    else:
        out = [line_of_row(row, f"{source}: row {k}") for k, row in enumerate(islice(_rows(source, split), limit), 1)]
    if not out:
        raise InputError(f"tasks.math_source: {source} has no problems")
    return out
