"""IsoFLOP fitting: a quadratic in ln N per compute budget, power laws through the minima,
a residual bootstrap for their intervals, and the compute gap between two families.

numpy only. Every fit is a linear map applied to a (replicates, runs) array, so a thousand
bootstrap replicates of a five-budget grid cost milliseconds and the coverage of the intervals
can be tested over hundreds of seeds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

MIN_SIZES = 3  # a quadratic has three coefficients: fewer distinct sizes cannot place a minimum


@dataclass(frozen=True)
class PowerLaw:
    """y = coefficient * C ** exponent, fitted by least squares on (ln C, ln y)."""

    coefficient: float
    """Value of y at C = 1 FLOP (the exp of the log-log intercept)."""
    exponent: float
    """Slope of ln y against ln C."""

    def __post_init__(self) -> None:
        if not (np.isfinite(self.coefficient) and self.coefficient > 0):
            raise ValueError(f"coefficient must be finite and > 0, got {self.coefficient}")
        if not np.isfinite(self.exponent):
            raise ValueError(f"exponent must be finite, got {self.exponent}")

    def __call__(self, compute: np.ndarray | float) -> np.ndarray:
        return self.coefficient * np.asarray(compute, dtype=float) ** self.exponent

    def inverse(self, value: np.ndarray | float) -> np.ndarray:
        """The compute at which the law reaches `value`."""
        if self.exponent == 0:
            raise ValueError("a flat power law (exponent 0) has no inverse")
        return (np.asarray(value, dtype=float) / self.coefficient) ** (1.0 / self.exponent)


@dataclass(frozen=True)
class BudgetCurve:
    """One IsoFLOP curve: the runs at one compute budget (ordered by size)."""

    budget: float
    """Compute budget C in FLOPs."""
    log_n: np.ndarray
    """ln of each run's non-embedding parameter count."""
    loss: np.ndarray
    """Each run's validation loss."""
    stderr: np.ndarray
    """Each run's Monte Carlo standard error of the loss (0 where unknown)."""

    def __post_init__(self) -> None:
        if not (np.isfinite(self.budget) and self.budget > 0):
            raise ValueError(f"budget must be finite and > 0, got {self.budget}")
        shapes = {np.shape(self.log_n), np.shape(self.loss), np.shape(self.stderr)}
        if len(shapes) != 1 or np.ndim(self.log_n) != 1:
            raise ValueError(f"budget {self.budget:.3g}: log_n, loss, stderr must be equal 1-d arrays")
        for name in ("log_n", "loss", "stderr"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise ValueError(f"budget {self.budget:.3g}: {name} has non-finite values")
        if np.any(self.stderr < 0):
            raise ValueError(f"budget {self.budget:.3g}: stderr must be >= 0")
        sizes = np.unique(self.log_n).size
        if sizes < MIN_SIZES:
            raise ValueError(
                f"budget {self.budget:.3g}: {sizes} distinct size(s); a quadratic needs >= {MIN_SIZES}"
            )

    @property
    def center(self) -> float:
        # ln N is ~20: centring keeps the normal equations well conditioned
        return float(self.log_n.mean())

    def design(self) -> np.ndarray:
        u = self.log_n - self.center
        return np.stack([np.ones_like(u), u, u * u], axis=1)  # (runs, 3)


@dataclass(frozen=True)
class CurveFit:
    """The quadratic through one IsoFLOP curve and where its minimum lies."""

    quadratic: tuple[float, float, float]
    """(a0, a1, a2) with loss = a0 + a1 ln N + a2 (ln N)^2."""
    n_opt: float
    """N*: the minimiser of the quadratic over the sampled size range."""
    loss_opt: float
    """L*: the quadratic's value at N*."""
    interior: bool
    """True when the quadratic opens upward and its vertex lies strictly inside the sizes."""
    add_sizes: str | None
    """'smaller' or 'larger' when the minimum sits on that edge of the grid, else None."""


def _minima(curve: BudgetCurve, losses: np.ndarray) -> tuple[np.ndarray, ...]:
    """Minimise the least-squares quadratic of each row of `losses` (replicates, runs).

    The minimum is taken over the sampled range only: an extrapolated vertex of a nearly flat
    curve can land decades away, while the edge is a bounded, honest estimate (flagged).
    Returns centred coefficients (B, 3), u_opt, loss_opt and interior (each (B,)).
    """
    coef = losses @ np.linalg.pinv(curve.design()).T  # (B, 3)
    c0, c1, c2 = coef.T
    lo, hi = curve.log_n.min() - curve.center, curve.log_n.max() - curve.center
    upward = c2 > 0
    vertex = np.divide(-c1, 2 * c2, out=np.full_like(c1, lo), where=upward)
    interior = upward & (vertex > lo) & (vertex < hi)
    candidates = np.stack([np.full_like(c1, lo), np.full_like(c1, hi), np.clip(vertex, lo, hi)])
    values = c0 + c1 * candidates + c2 * candidates**2  # (3, B)
    pick = np.argmin(values, axis=0)
    cols = np.arange(len(c1))
    return coef, candidates[pick, cols], values[pick, cols], interior


def fit_curve(curve: BudgetCurve) -> CurveFit:
    coef, u_opt, loss_opt, interior = _minima(curve, curve.loss[None, :])
    c0, c1, c2 = coef[0]
    m = curve.center
    raw = (c0 - c1 * m + c2 * m * m, c1 - 2 * c2 * m, c2)  # expand (ln N - m) back to ln N
    side = None
    if not interior[0]:
        mid = 0.5 * (curve.log_n.min() + curve.log_n.max()) - m
        side = "smaller" if u_opt[0] < mid else "larger"
    return CurveFit(
        quadratic=tuple(float(v) for v in raw),
        n_opt=float(np.exp(u_opt[0] + m)),
        loss_opt=float(loss_opt[0]),
        interior=bool(interior[0]),
        add_sizes=side,
    )


def resample_losses(curve: BudgetCurve, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap losses (n_boot, runs): fitted quadratic + noise drawn within this budget.

    The noise is a residual resampled within the budget (leverage-corrected, so a 3-parameter
    fit to few points does not shrink it), plus Gaussian noise that tops each run's variance
    up to its known MC variance stderr^2. The MC noise is certainly present, so the interval
    never assumes less; extra scatter (training seeds, misfit) shows up through the residuals.
    """
    design = curve.design()
    pinv = np.linalg.pinv(design)
    fitted = design @ (pinv @ curve.loss)
    runs = curve.loss.size
    draws = np.zeros((n_boot, runs))
    pool_var = 0.0
    if runs > MIN_SIZES:  # with exactly 3 runs the quadratic interpolates: no residual left
        leverage = np.einsum("ij,ji->i", design, pinv)
        adjusted = (curve.loss - fitted) / np.sqrt(np.clip(1.0 - leverage, 1e-12, None))
        adjusted -= adjusted.mean()
        pool_var = float(np.mean(adjusted**2))
        draws = adjusted[rng.integers(0, runs, size=(n_boot, runs))]
    top_up = np.sqrt(np.clip(curve.stderr**2 - pool_var, 0.0, None))
    return fitted + draws + rng.standard_normal((n_boot, runs)) * top_up


def has_noise_estimate(curve: BudgetCurve) -> bool:
    """False when the bootstrap cannot perturb this curve (3 runs and no stderr)."""
    return curve.loss.size > MIN_SIZES or bool(np.any(curve.stderr > 0))


def line_fits(x: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares slope and intercept of each row of ys (B, k) against x (k,)."""
    xc = x - x.mean()
    sxx = float(xc @ xc)
    if sxx == 0:
        raise ValueError("a power law needs at least two distinct budgets")
    slope = (ys - ys.mean(axis=1, keepdims=True)) @ xc / sxx
    return slope, ys.mean(axis=1) - slope * x.mean()


def fit_power_law(compute: np.ndarray, values: np.ndarray) -> PowerLaw:
    """Fit y = k C^alpha directly to (C, y) pairs, e.g. published minima."""
    compute, values = np.asarray(compute, float), np.asarray(values, float)
    if compute.shape != values.shape or compute.ndim != 1:
        raise ValueError("compute and values must be 1-d arrays of equal length")
    if np.any(compute <= 0) or np.any(values <= 0):
        raise ValueError("a log-log fit needs positive compute and values")
    slope, intercept = line_fits(np.log(compute), np.log(values)[None, :])
    return PowerLaw(float(np.exp(intercept[0])), float(slope[0]))


def log_compute_gap(
    log_budget: np.ndarray, log_loss: np.ndarray, slope: np.ndarray, intercept: np.ndarray
) -> np.ndarray:
    """ln(C_other / C) where C_other reaches loss `log_loss` on the law (slope, intercept).

    Shapes: log_budget (k,), log_loss (B, k), slope and intercept (B,). A law whose loss does
    not fall with compute (slope >= 0) has no such C: NaN.
    """
    slope = np.where(slope < 0, slope, np.nan)[:, None]
    return (log_loss - intercept[:, None]) / slope - log_budget[None, :]


def compute_gap(budgets: np.ndarray, losses: np.ndarray, law: PowerLaw) -> np.ndarray:
    """Per budget: the compute `law`'s family needs to reach `losses`, over the budget."""
    log_gap = log_compute_gap(
        np.log(np.asarray(budgets, float)),
        np.log(np.asarray(losses, float))[None, :],
        np.array([law.exponent]),
        np.array([np.log(law.coefficient)]),
    )
    return np.exp(log_gap[0])


def percentile_interval(samples: np.ndarray, confidence: float) -> list[float] | None:
    """Two-sided percentile interval of the finite samples, or None when there are none."""
    samples = np.asarray(samples, float)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return None
    tail = 50.0 * (1.0 - confidence)
    lo, hi = np.percentile(samples, [tail, 100.0 - tail])
    return [float(lo), float(hi)]


def group_budgets(flops: np.ndarray, tolerance: float) -> np.ndarray:
    """Label each run with its budget: runs within `tolerance` (relative) of the smallest
    flops of their group share it (realised flops differ a little because steps are integers).

    The label is the group's geometric mean rounded to 3 significant digits.
    """
    flops = np.asarray(flops, float)
    order = np.argsort(flops)
    labels = np.empty_like(flops)
    start = 0
    for i in range(1, len(order) + 1):
        if i == len(order) or flops[order[i]] > flops[order[start]] * (1.0 + tolerance):
            members = order[start:i]
            labels[members] = float(f"{np.exp(np.log(flops[members]).mean()):.3g}")
            start = i
    return labels


@dataclass(frozen=True)
class FamilyFit:
    """One family's IsoFLOP minima, its power laws, and their bootstrap replicates."""

    curves: tuple[BudgetCurve, ...]
    """The IsoFLOP curves, by increasing budget."""
    minima: tuple[CurveFit, ...]
    """The fitted minimum of each curve, in the same order."""
    loss_law: PowerLaw | None
    """L*(C) through the minima, or None with a single budget."""
    size_law: PowerLaw | None
    """N*(C) through the minima, or None with a single budget."""
    boot_log_n: np.ndarray
    """ln N* per bootstrap replicate and budget, shape (replicates, budgets)."""
    boot_log_loss: np.ndarray
    """ln L* per bootstrap replicate and budget, shape (replicates, budgets)."""

    def __post_init__(self) -> None:
        if not self.curves or len(self.minima) != len(self.curves):
            raise ValueError("a family fit needs one minimum per curve and at least one curve")
        budgets = [c.budget for c in self.curves]
        if budgets != sorted(set(budgets)):
            raise ValueError(f"budgets must be distinct and increasing, got {budgets}")

    @property
    def log_budgets(self) -> np.ndarray:
        return np.log([c.budget for c in self.curves])

    def boot_laws(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Bootstrap (slope, intercept) of the loss and size laws; empty with one budget."""
        if len(self.curves) < 2:
            return {}
        return {
            "loss": line_fits(self.log_budgets, self.boot_log_loss),
            "size": line_fits(self.log_budgets, self.boot_log_n),
        }


def fit_family(curves: list[BudgetCurve], n_boot: int, rng: np.random.Generator) -> FamilyFit:
    """Fit every curve, the power laws through the minima, and `n_boot` bootstrap replicates."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    curves = sorted(curves, key=lambda c: c.budget)
    minima = [fit_curve(c) for c in curves]
    boot_n, boot_loss = [], []
    for curve in curves:
        _, u_opt, loss_opt, _ = _minima(curve, resample_losses(curve, n_boot, rng))
        boot_n.append(u_opt + curve.center)
        with np.errstate(invalid="ignore", divide="ignore"):  # absurd data: NaN, not a crash
            boot_loss.append(np.log(loss_opt))
    laws = (None, None)
    if len(curves) >= 2:
        budgets = np.array([c.budget for c in curves])
        laws = (
            fit_power_law(budgets, np.array([m.loss_opt for m in minima])),
            fit_power_law(budgets, np.array([m.n_opt for m in minima])),
        )
    return FamilyFit(
        curves=tuple(curves),
        minima=tuple(minima),
        loss_law=laws[0],
        size_law=laws[1],
        boot_log_n=np.stack(boot_n, axis=1),
        boot_log_loss=np.stack(boot_loss, axis=1),
    )


def compare_families(
    arm: FamilyFit | None, mdm: FamilyFit | None, confidence: float
) -> dict[str, Any]:
    """Compute gap (the compute MDM needs, on its fitted L*(C), to reach ARM's L* at each ARM
    budget; geometric mean over budgets) and N*_MDM / N*_ARM at the geometric-mean budget.

    Bootstrap replicates of the two families are independent draws, so pairing them by index
    samples the joint distribution. Unavailable quantities (a family or a law missing) are None.
    """
    out: dict[str, Any] = {
        "compute_gap": None, "compute_gap_per_budget": [], "compute_gap_interval": None,
        "optimal_size_ratio": None, "optimal_size_ratio_compute": None,
        "optimal_size_ratio_interval": None,
    }
    if arm is None or mdm is None:
        return out
    boots = mdm.boot_laws()
    if mdm.loss_law is not None and mdm.loss_law.exponent < 0:
        arm_budgets = np.array([c.budget for c in arm.curves])
        per_budget = compute_gap(arm_budgets, np.array([m.loss_opt for m in arm.minima]), mdm.loss_law)
        log_gaps = log_compute_gap(arm.log_budgets, arm.boot_log_loss, *boots["loss"])  # (B, k)
        out["compute_gap"] = float(np.exp(np.log(per_budget).mean()))
        out["compute_gap_interval"] = exp_interval(log_gaps.mean(axis=1), confidence)
        out["compute_gap_per_budget"] = [
            {"budget": float(b), "compute_gap": float(g),
             "interval": exp_interval(log_gaps[:, j], confidence)}
            for j, (b, g) in enumerate(zip(arm_budgets, per_budget))
        ]
    if arm.size_law is not None and mdm.size_law is not None:
        log_ref = float(np.concatenate([arm.log_budgets, mdm.log_budgets]).mean())
        ratio = mdm.size_law(np.exp(log_ref)) / arm.size_law(np.exp(log_ref))
        (arm_slope, arm_icpt), (mdm_slope, mdm_icpt) = arm.boot_laws()["size"], boots["size"]
        log_ratios = (mdm_slope - arm_slope) * log_ref + (mdm_icpt - arm_icpt)
        out["optimal_size_ratio"] = float(ratio)
        out["optimal_size_ratio_compute"] = float(np.exp(log_ref))
        out["optimal_size_ratio_interval"] = exp_interval(log_ratios, confidence)
    return out


def exp_interval(log_samples: np.ndarray, confidence: float) -> list[float] | None:
    """Percentile interval of samples taken in logs, mapped back (percentiles commute with exp)."""
    interval = percentile_interval(log_samples, confidence)
    return None if interval is None else [float(np.exp(v)) for v in interval]
