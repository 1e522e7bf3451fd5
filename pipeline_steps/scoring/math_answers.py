"""Math answers: extraction from a generation and the correctness test (PAPER.md section 7).

The answer is what follows the LAST `####` anywhere in the text the caller gives (the text up to
EOS: nothing after EOS counts), up to the end of that line; the authors' regex needed it on the
last line. Correctness is decided by the maintained `math-verify` package (symbolic and numeric
equality, "1,000" = "1000", "0.5" = "1/2") under a time limit. There is no fallback to string
equality: without the package the check is an error naming the install command (the authors'
code silently compared strings when its LaTeX parser was missing).
"""
from __future__ import annotations

import re

from pipeline_steps.core.errors import InputError
from pipeline_steps.data.task_sources.math_problems import MARK

INSTALL = "pip install -c constraints-cpu.txt -e '.[math]'"


def extract_answer(text: str) -> str | None:
    """The text after the last `####`, to the end of its line, stripped; None without a mark."""
    at = text.rfind(MARK)
    if at < 0:
        return None
    answer = text[at + len(MARK):].split("\n", 1)[0].strip()
    return answer or None


def _plain_number(text: str) -> str:
    """A GSM8K-style answer as math-verify reads it: no thousands commas, currency or trailing period."""
    text = text.strip().rstrip(".").replace("$", "")
    return re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)


def _math_verify():
    try:
        import math_verify
    except ImportError:
        raise InputError(f"the math answer check needs the `math-verify` package; install it with {INSTALL}") from None
    return math_verify


def is_correct(predicted: str | None, gold: str, timeout_seconds: int = 5) -> bool:
    """`predicted` equals `gold` by math-verify (False for a missing answer or a timeout)."""
    if predicted is None:
        return False
    mv = _math_verify()
    gold_parsed = mv.parse(_plain_number(gold), parsing_timeout=timeout_seconds)
    pred_parsed = mv.parse(_plain_number(predicted), parsing_timeout=timeout_seconds)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(mv.verify(gold_parsed, pred_parsed, timeout_seconds=timeout_seconds))
