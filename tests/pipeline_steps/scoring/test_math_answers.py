"""Math answer extraction and checking, against numeric equality as the reference."""
import importlib.util
from fractions import Fraction

import pytest

from pipeline_steps.core.errors import InputError
from pipeline_steps.scoring import math_answers
from pipeline_steps.scoring.math_answers import extract_answer, is_correct

needs_math_verify = pytest.mark.skipif(importlib.util.find_spec("math_verify") is None, reason="the `math` extra")


def test_the_last_mark_anywhere_counts_not_only_on_the_last_line():
    assert extract_answer("a <<2+3=5>> #### 5\nthen more text") == "5"
    assert extract_answer("#### 4\n#### 12 apples") == "12 apples"
    assert extract_answer("no mark at all") is None and extract_answer("ends with ####  ") is None


@needs_math_verify
@pytest.mark.parametrize("predicted,gold", [("1,000", "1000"), ("3.50", "3.5"), ("$5", "5"), ("1/2", "0.5"),
                                            ("-2", "-2"), ("7.", "7"), ("18", "19"), ("0", "1000"),
                                            ("12 apples", "12")])
def test_is_correct_agrees_with_numeric_equality(predicted, gold):
    def number(text):
        return Fraction(text.replace(",", "").replace("$", "").replace("apples", "").strip().rstrip("."))

    assert is_correct(predicted, gold) == (number(predicted) == number(gold))


@needs_math_verify
def test_no_answer_and_nonsense_are_wrong_not_errors():
    assert not is_correct(None, "3") and not is_correct("many", "3")


def test_a_missing_package_is_an_error_not_a_string_comparison(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_math_verify(name, *args, **kwargs):
        if name == "math_verify":
            raise ImportError("No module named 'math_verify'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_math_verify)
    with pytest.raises(InputError, match=r"needs the `math-verify` package; install it with pip install"):
        math_answers.is_correct("3", "3")
