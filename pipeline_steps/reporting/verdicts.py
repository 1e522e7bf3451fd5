"""Verdicts on the paper's qualitative claims, by rules stated in the report beside each verdict.

A verdict reads `holds`, `fails` or `inconclusive` (at this n), or `missing` when the numbers it
needs were not produced (the reason says which stage or file). Two kinds of rule:
- a difference of two estimates with standard errors: holds when it points the paper's way by
  more than `sigmas` combined standard errors, fails when it points the other way by as much,
  else inconclusive;
- a bootstrap interval (the scaling stage's): holds when the whole interval lies on the paper's
  side of the threshold, fails when it lies wholly on the other side.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

HOLDS, FAILS, INCONCLUSIVE, MISSING = "holds", "fails", "inconclusive", "missing"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE, MISSING)


@dataclass(frozen=True)
class Estimate:
    """A number with its standard error and the count it comes from (None: not a count)."""

    value: float
    stderr: float
    n: int | None = None

    def text(self, scale: float = 1.0, digits: int = 1) -> str:
        n = f", n={self.n}" if self.n is not None else ""
        return f"{scale * self.value:.{digits}f} ± {scale * self.stderr:.{digits}f}{n}"


@dataclass(frozen=True)
class Claim:
    """One claim of the paper read from this run's numbers."""

    result: str
    """The paper's table or figure, e.g. `Table 5`."""
    claim: str
    """What the paper claims, in words (PAPER.md's)."""
    ours: str
    """Our numbers with standard errors and n."""
    rule: str
    """How the verdict is computed from them."""
    verdict: str
    """holds / fails / inconclusive / missing."""
    why: str = ""
    """The rule applied to the numbers, or why it is missing."""
    timing: bool = False
    """The verdict rests on wall-clock times (it may differ between two runs of the same seeds)."""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")

    def line(self) -> str:
        return f"{self.ours}: {self.verdict} ({self.why})" if self.why else f"{self.ours}: {self.verdict}"


def missing(result: str, claim: str, rule: str, reason: str) -> Claim:
    return Claim(result, claim, "not produced", rule, MISSING, reason)


def difference_rule(sigmas: float, larger: str, smaller: str) -> str:
    return (f"holds if {larger} exceeds {smaller} by more than {sigmas:g} combined standard errors, "
            f"fails if it falls short by as much, else inconclusive")


def difference(a: Estimate, b: Estimate, sigmas: float, scale: float = 1.0, unit: str = "") -> tuple[str, str]:
    """Verdict that `a` exceeds `b`, and the numbers behind it."""
    diff = a.value - b.value
    se = math.hypot(a.stderr, b.stderr)
    digits = 0 if scale * se >= 10 else 2  # perplexities in the thousands, accuracies in points
    shown = f"difference {scale * diff:+.{digits}f}{unit} ± {scale * se:.{digits}f}{unit}"
    if se == 0.0:
        if diff == 0.0:
            return INCONCLUSIVE, f"{shown}: equal, no spread to judge by"
        return (HOLDS if diff > 0 else FAILS), f"{shown}: exact counts, no sampling spread"
    z = diff / se
    if z > sigmas:
        return HOLDS, f"{shown}, {z:.1f} standard errors > {sigmas:g}"
    if z < -sigmas:
        return FAILS, f"{shown}, {z:.1f} standard errors < -{sigmas:g}"
    return INCONCLUSIVE, f"{shown}, {z:+.1f} standard errors, within ±{sigmas:g}"


def interval(value: float, bounds: list[float] | None, threshold: float, above: bool,
             what: str) -> tuple[str, str]:
    """Verdict that `value` lies above (or below) `threshold` with its whole interval."""
    if bounds is None:
        return INCONCLUSIVE, f"{what} {value:.3g} has no interval (too few bootstrap fits)"
    lo, hi = bounds
    shown = f"{what} {value:.3g} [{lo:.3g}, {hi:.3g}]"
    if (lo > threshold) if above else (hi < threshold):
        return HOLDS, f"{shown}: the whole interval is {'above' if above else 'below'} {threshold:g}"
    if (hi < threshold) if above else (lo > threshold):
        return FAILS, f"{shown}: the whole interval is {'below' if above else 'above'} {threshold:g}"
    return INCONCLUSIVE, f"{shown}: the interval contains {threshold:g}"


def pooled(estimates: list[Estimate]) -> Estimate:
    """The mean of independent estimates, with its standard error."""
    k = len(estimates)
    return Estimate(sum(e.value for e in estimates) / k,
                    math.sqrt(sum(e.stderr ** 2 for e in estimates)) / k,
                    sum(e.n or 0 for e in estimates) or None)


def proportion(successes: float, n: int) -> Estimate:
    """A binomial proportion with its standard error."""
    p = successes / n
    return Estimate(p, math.sqrt(p * (1 - p) / n), n)
