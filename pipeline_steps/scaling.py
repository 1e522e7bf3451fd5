"""Stage `scaling`: IsoFLOP minima, L*(C) and N*(C) power laws, the MDM/ARM compute gap and
optimal-size ratio, with bootstrap intervals, from the run records of the pretraining grid.

    python -m pipeline_steps.scaling --runs RUNS.jsonl|DIR --out DIR [--metrics FILE]
        [--params params.yaml] [--strict] [--bootstrap N] [--seed S] [--confidence P]

Writes OUT/scaling.json (and a copy at --metrics), OUT/isoflop_curves.png (Figure 1) and
OUT/scaling_laws.png (Figure 2). The numerics live in `isoflop_fit`, the figures in
`scaling_figures`; this module reads and checks records, reports, and is the CLI.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.config import FAMILIES
from pipeline_steps.analysis import isoflop_fit as fit
from pipeline_steps.core.errors import InputError
from pipeline_steps.core.files import atomic_write_json, finite_json
from pipeline_steps.core.params import ParamsError, load_config
from pipeline_steps.core.stage_cli import guarded, stage_parser
from pipeline_steps.core.tracking import Tracker

log = logging.getLogger(__name__)

FIT_ORDER = tuple(sorted(FAMILIES))
"""arm, then mdm: the bootstrap draws its replicates in this order, so one seed, one result."""
HASH_FIELDS = ("data_hash", "tokenizer_hash")
FIGURES = ("isoflop_curves.png", "scaling_laws.png")


class ScalingInputError(InputError):
    """The runs cannot be fitted as given; the message names the file/line, field or budget."""


class NoInteriorMinimumError(ScalingInputError):
    """Under `strict`, an IsoFLOP curve whose minimum is not inside its sampled sizes."""


class ScalingWarning(UserWarning):
    """A fit that runs but deserves attention (edge minimum, too few budgets, no noise)."""


@dataclass(frozen=True)
class ScalingConfig:
    """Settings of the `scaling` stage (params.yaml section `scaling`)."""

    bootstrap: int = 1000
    """Bootstrap replicates behind every interval."""
    seed: int = 0
    """Seed of the bootstrap's random generator."""
    confidence: float = 0.95
    """Two-sided confidence level of the intervals."""
    strict: bool = False
    """Fail, instead of warning, when a curve has no interior minimum."""
    budget_tolerance: float = 0.05
    """Runs without a `budget` field share a budget when their flops lie this close (relative)."""

    def __post_init__(self) -> None:
        if self.bootstrap < 1:
            raise ValueError(f"bootstrap must be >= 1, got {self.bootstrap}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if not 0.0 <= self.budget_tolerance < 0.5:
            raise ValueError(f"budget_tolerance must be in [0, 0.5), got {self.budget_tolerance}")


@dataclass(frozen=True)
class RunRecord:
    """One finished pretraining run, as the scaling fit needs it."""

    family: str
    """'arm' or 'mdm'."""
    n_params: float
    """Non-embedding parameter count N."""
    flops: float
    """Realised training compute in FLOPs."""
    loss: float
    """Validation loss (ARM exact NLL, MDM ELBO estimate)."""
    loss_stderr: float = 0.0
    """Monte Carlo standard error of `loss` (0 when exact or unknown)."""
    budget: float | None = None
    """Nominal budget of the grid cell, when the record carries one."""
    data_hash: str | None = None
    """Hash of the training data, to refuse mixing runs of different data."""
    tokenizer_hash: str | None = None
    """Hash of the tokenizer, likewise."""
    source: str = dataclasses.field(default="", compare=False)
    """Where the record was read (`file:line`), for messages."""

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r} (expected one of {list(FAMILIES)})")
        for name in ("n_params", "flops", "loss", "budget"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"field {name!r} must be a finite number > 0, got {value!r}")
        if not (math.isfinite(self.loss_stderr) and self.loss_stderr >= 0):
            raise ValueError(f"field 'loss_stderr' must be finite and >= 0, got {self.loss_stderr!r}")


def _number(obj: dict[str, Any], key: str, where: str) -> float:
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ScalingInputError(f"{where}: field {key!r} must be a number, got {value!r}")
    return float(value)


def parse_record(obj: Any, where: str) -> RunRecord:
    """A record from its JSON object; `val/loss` and `val/loss_stderr` stand in when absent."""
    if not isinstance(obj, dict):
        raise ScalingInputError(f"{where}: a run record must be a JSON object, got {obj!r}")
    obj = dict(obj)
    for short in ("loss", "loss_stderr"):
        if short not in obj and f"val/{short}" in obj:
            obj[short] = obj[f"val/{short}"]
    missing = [k for k in ("family", "n_params", "flops", "loss") if k not in obj]
    if missing:
        raise ScalingInputError(
            f"{where}: missing field(s) {missing}; a run needs family, n_params, flops and "
            "loss (or val/loss)"
        )
    numbers = {k: _number(obj, k, where) for k in ("n_params", "flops", "loss")}
    for key in ("loss_stderr", "budget"):
        if obj.get(key) is not None:
            numbers[key] = _number(obj, key, where)
    hashes = {k: str(obj[k]) for k in HASH_FIELDS if obj.get(k) is not None}
    try:
        return RunRecord(family=obj["family"], **numbers, **hashes, source=where)
    except ValueError as err:
        raise ScalingInputError(f"{where}: {err}") from None


def read_runs(path: str | Path) -> list[RunRecord]:
    """Records from a JSONL file, or from every *.jsonl / *.json file under a folder."""
    path = Path(path)
    if path.is_dir():
        # hidden paths are tool state (.dvc, atomic-write temporaries), never records
        files = sorted(
            p for p in path.rglob("*")
            if p.is_file() and p.suffix in (".jsonl", ".json")
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
    elif path.is_file():
        files = [path]
    else:
        raise ScalingInputError(f"{path}: no such runs file or folder")
    records = []
    for file in files:
        if file.suffix == ".json":  # a .json file is one record object
            records.append(parse_record(_load_json(file.read_text(), str(file)), str(file)))
            continue
        for number, line in enumerate(file.read_text().splitlines(), start=1):
            if line.strip():
                where = f"{file}:{number}"
                records.append(parse_record(_load_json(line, where), where))
    if not records:
        raise ScalingInputError(f"{path}: no run records found")
    return records


def _load_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ScalingInputError(f"{where}: not valid JSON ({err.msg})") from None


def common_hashes(records: list[RunRecord]) -> dict[str, str | None]:
    """The one data/tokenizer hash all runs share; different hashes are an error."""
    shared: dict[str, str | None] = {}
    for field in HASH_FIELDS:
        by_family: dict[str, set[str]] = {}
        for record in records:
            if getattr(record, field) is not None:
                by_family.setdefault(record.family, set()).add(getattr(record, field))
        values = set().union(*by_family.values())
        if len(values) > 1:
            seen = "; ".join(f"{fam}: {sorted(v)}" for fam, v in sorted(by_family.items()))
            raise ScalingInputError(
                f"{field} differs between runs ({seen}): IsoFLOP curves and the compute gap "
                "are only comparable on the same data and tokenizer"
            )
        shared[field] = values.pop() if values else None
    return shared


def budget_labels(records: list[RunRecord], tolerance: float) -> list[float]:
    """Each run's budget: its `budget` field, else its flops grouped by relative closeness
    (snapped to a declared budget within `tolerance`, so mixed records still line up)."""
    declared = sorted({r.budget for r in records if r.budget is not None})
    labels = [r.budget for r in records]
    loose = [i for i, r in enumerate(records) if r.budget is None]
    if loose:
        grouped = fit.group_budgets(np.array([records[i].flops for i in loose]), tolerance)
        for i, label in zip(loose, grouped):
            near = [b for b in declared if abs(label / b - 1.0) <= tolerance]
            labels[i] = near[0] if near else float(label)
    return labels


def refuse_duplicates(records: list[RunRecord], labels: list[float]) -> None:
    """One run per family, size and budget: a second record of the same cell (a stale or
    copied file) would silently reweight that curve's fit and narrow its intervals."""
    seen: dict[tuple[str, float, float], RunRecord] = {}
    for record, label in zip(records, labels):
        key = (record.family, record.n_params, label)
        if key in seen:
            raise ScalingInputError(
                f"{seen[key].source} and {record.source} are both the {record.family} run of "
                f"N={record.n_params:.0f} at budget {label:.3g} FLOPs: expected one record per "
                "family, size and budget (remove the stale or duplicated one)")
        seen[key] = record


def family_curves(records: list[RunRecord], labels: list[float], family: str) -> list[fit.BudgetCurve]:
    groups: dict[float, list[RunRecord]] = {}
    for record, label in zip(records, labels):
        if record.family == family:
            groups.setdefault(label, []).append(record)
    curves = []
    for budget, runs in sorted(groups.items()):
        sizes = sorted({r.n_params for r in runs})
        if len(sizes) < fit.MIN_SIZES:
            raise ScalingInputError(
                f"{family}: budget {budget:.3g} FLOPs has {len(sizes)} distinct size(s) "
                f"{[int(s) for s in sizes]}; an IsoFLOP quadratic needs >= {fit.MIN_SIZES}"
            )
        runs.sort(key=lambda r: r.n_params)
        curves.append(fit.BudgetCurve(
            budget=budget,
            log_n=np.log([r.n_params for r in runs]),
            loss=np.array([r.loss for r in runs]),
            stderr=np.array([r.loss_stderr for r in runs]),
        ))
    return curves


def _warn(message: str, notes: list[str]) -> None:
    warnings.warn(message, ScalingWarning, stacklevel=3)
    log.warning(message)
    notes.append(message)


def check_family(family: str, result: fit.FamilyFit, strict: bool, notes: list[str]) -> str | None:
    """Warn (or, strict, fail) about edge minima; return why the intervals are degenerate."""
    for curve, minimum in zip(result.curves, result.minima):
        if not minimum.interior:
            shape = "opens downward" if minimum.quadratic[2] <= 0 else "has its vertex outside the sizes"
            message = (
                f"{family}: budget {curve.budget:.3g} FLOPs has no interior minimum (the quadratic "
                f"{shape}; N* taken at the {minimum.add_sizes} edge): add {minimum.add_sizes} sizes"
            )
            if strict:
                raise NoInteriorMinimumError(message)
            _warn(message, notes)
        if not fit.has_noise_estimate(curve):
            _warn(f"{family}: budget {curve.budget:.3g} FLOPs has 3 sizes and no loss_stderr: "
                  "the bootstrap cannot perturb its minimum", notes)
    budgets = len(result.curves)
    if budgets == 1:
        _warn(f"{family}: only one budget: no power laws fitted (L*(C), N*(C) and the compute "
              "gap need >= 2 budgets)", notes)
        return "one budget: no power laws"
    if budgets == 2:
        note = ("two budgets: the power laws pass exactly through both minima, so the intervals "
                "show per-budget noise only, not any departure from a power law (degenerate)")
        _warn(f"{family}: {note}", notes)
        return note
    if not any(fit.has_noise_estimate(c) for c in result.curves):
        return "no curve has a noise estimate: the intervals collapse to the point estimates"
    return None


def family_summary(result: fit.FamilyFit, confidence: float, note: str | None) -> dict[str, Any]:
    """JSON view of one family: laws with intervals, and every budget's minimum."""
    summary: dict[str, Any] = {
        "n_runs": int(sum(c.loss.size for c in result.curves)),
        "n_budgets": len(result.curves),
        "interval_degenerate": note is not None,
        "interval_note": note,
        "minima": [
            {
                "budget": curve.budget, "n_opt": m.n_opt, "loss_opt": m.loss_opt,
                "interior": m.interior, "add_sizes": m.add_sizes,
                "sizes": [int(round(n)) for n in np.exp(curve.log_n)],
                "n_opt_interval": fit.exp_interval(result.boot_log_n[:, j], confidence),
                "loss_opt_interval": fit.exp_interval(result.boot_log_loss[:, j], confidence),
                "quadratic_log_n": list(m.quadratic),
            }
            for j, (curve, m) in enumerate(zip(result.curves, result.minima))
        ],
    }
    boots = result.boot_laws()
    for name, law in (("loss", result.loss_law), ("size", result.size_law)):
        slope, intercept = boots.get(name, (np.array([]), np.array([])))
        summary[f"{name}_coefficient"] = law.coefficient if law else None
        summary[f"{name}_exponent"] = law.exponent if law else None
        summary[f"{name}_coefficient_interval"] = fit.exp_interval(intercept, confidence)
        summary[f"{name}_exponent_interval"] = fit.percentile_interval(slope, confidence)
    return summary


def flat_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The numbers worth tracking, flat and without nulls (trackers take floats only)."""
    metrics: dict[str, Any] = {}
    for family, summary in result["families"].items():
        for key in ("loss_exponent", "loss_coefficient", "size_exponent", "size_coefficient",
                    "n_budgets"):
            metrics[f"{family}/{key}"] = summary[key]
        minima = summary["minima"]
        metrics[f"{family}/interior_fraction"] = sum(m["interior"] for m in minima) / len(minima)
    for key in ("compute_gap", "optimal_size_ratio"):
        metrics[key] = result[key]
        interval = result[f"{key}_interval"] or [None, None]
        metrics[f"{key}_lo"], metrics[f"{key}_hi"] = interval
    return {k: float(v) for k, v in metrics.items() if v is not None}


def run(
    cfg: ScalingConfig,
    runs_path: str | Path,
    out_dir: str | Path,
    tracker: Tracker,
    metrics_path: str | Path | None = None,
) -> dict[str, float]:
    """Fit both families' runs; write scaling.json (also to `metrics_path`) and the figures."""
    from pipeline_steps.analysis import scaling_figures  # matplotlib only once the inputs are sound

    records = read_runs(runs_path)
    hashes = common_hashes(records)
    labels = budget_labels(records, cfg.budget_tolerance)
    refuse_duplicates(records, labels)
    curves = {f: family_curves(records, labels, f) for f in FIT_ORDER}
    rng = np.random.default_rng(cfg.seed)
    notes: list[str] = []
    fits, summaries = {}, {}
    for family in FIT_ORDER:
        if curves[family]:
            fits[family] = fit.fit_family(curves[family], cfg.bootstrap, rng)
            note = check_family(family, fits[family], cfg.strict, notes)
            summaries[family] = family_summary(fits[family], cfg.confidence, note)
    comparison = fit.compare_families(fits.get("arm"), fits.get("mdm"), cfg.confidence)
    if len(fits) < 2:
        _warn(f"only {list(fits)} runs: no compute gap or optimal-size ratio", notes)
    elif comparison["compute_gap"] is None:
        _warn("no compute gap: the MDM's L*(C) law is missing or does not decrease", notes)
    result = finite_json({"families": summaries, **comparison, **hashes, "warnings": notes,
                      "config": dataclasses.asdict(cfg)})

    out_dir = Path(out_dir)
    scaling_figures.plot_isoflop_curves(fits, out_dir / FIGURES[0])
    scaling_figures.plot_scaling_laws(fits, comparison, out_dir / FIGURES[1])
    atomic_write_json(out_dir / "scaling.json", result)
    if metrics_path is not None:
        atomic_write_json(metrics_path, result)
    metrics = flat_metrics(result)
    tracker.set_tags({"stage": "scaling", **{k: v for k, v in hashes.items() if v}})
    tracker.log_params(dataclasses.asdict(cfg))
    tracker.log_metrics(metrics)
    for name in (*FIGURES, "scaling.json"):
        tracker.log_artifact(out_dir / name, "scaling")
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("scaling", __doc__, {
        "--runs": ("runs/grid", "runs JSONL file or a folder of records"),
        "--out": ("reports/scaling", "folder for scaling.json and figures")},
        metrics=None, params=None)  # standalone: ScalingConfig's defaults, no metrics copy
    parser.add_argument("--strict", action=argparse.BooleanOptionalAction, default=None,
                        help="fail when a curve has no interior minimum")
    parser.add_argument("--bootstrap", type=int, help="bootstrap replicates")
    parser.add_argument("--seed", type=int, help="bootstrap seed")
    parser.add_argument("--confidence", type=float, help="confidence level of the intervals")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = {k: getattr(args, k) for k in ("strict", "bootstrap", "seed", "confidence")
                 if getattr(args, k) is not None}

    def body() -> None:
        # Standalone (no --params): ScalingConfig's defaults, which are the default profile's.
        cfg = load_config(ScalingConfig, "scaling", args.params) if args.params else ScalingConfig()
        try:
            cfg = dataclasses.replace(cfg, **overrides)
        except ValueError as err:
            raise ParamsError(f"command line: {err}") from None
        from pipeline_steps.core.run_tracking import stage_tracker  # MLflow only for the CLI

        with stage_tracker("scaling") as tracker:  # SMDM_TRACKING=off: a NullTracker
            metrics = run(cfg, args.runs, args.out, tracker, metrics_path=args.metrics)
        for key, value in sorted(metrics.items()):
            print(f"{key} = {value:.6g}")

    return guarded("pipeline_steps.scaling", body, args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
