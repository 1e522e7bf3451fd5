"""The scaling stage's figures as PNG files (matplotlib, Agg: no display, no CDN).

Figure 1: IsoFLOP curves, loss against N (log x), one panel per family, one colour per budget
(the same colour for a budget in both panels), the fitted quadratics and their minima (a filled
star when interior, an open one when taken at the edge of the grid).
Figure 2: L*(C) and N*(C) with their power laws, the compute gap drawn as arrows from each ARM
minimum to the compute the MDM's law needs for the same loss, and the N* ratio.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless stage processes and CI: never look for a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FormatStrFormatter  # noqa: E402

from pipeline_steps.analysis.isoflop_fit import FamilyFit, PowerLaw  # noqa: E402
from pipeline_steps.core.files import atomic_write_bytes  # noqa: E402

FAMILY_COLOURS = {"arm": "tab:blue", "mdm": "tab:orange"}
FAMILY_NAMES = {"arm": "ARM", "mdm": "MDM"}


def _save(fig: plt.Figure, path: Path) -> None:
    # render to memory first, so a crash mid-render never leaves a truncated PNG behind
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _budget_colours(fits: dict[str, FamilyFit]) -> dict[float, Any]:
    budgets = sorted({c.budget for f in fits.values() for c in f.curves})
    cmap = plt.get_cmap("viridis")
    return {b: cmap(i / max(len(budgets) - 1, 1) * 0.9) for i, b in enumerate(budgets)}


def plot_isoflop_curves(fits: dict[str, FamilyFit], path: str | Path) -> None:
    """Figure 1: loss against N per budget with the fitted quadratics, one panel per family."""
    colours = _budget_colours(fits)
    fig, axes = plt.subplots(1, max(len(fits), 1), figsize=(6 * max(len(fits), 1), 4.5), layout="constrained",
                             sharey=True, squeeze=False)
    for ax, (family, result) in zip(axes[0], fits.items()):
        for curve, minimum in zip(result.curves, result.minima):
            colour = colours[curve.budget]
            sizes = np.exp(curve.log_n)
            ax.errorbar(sizes, curve.loss, yerr=curve.stderr if curve.stderr.any() else None,
                        fmt="o", ms=4, color=colour, label=f"C = {curve.budget:.2g}")
            grid = np.linspace(curve.log_n.min() - 0.2, curve.log_n.max() + 0.2, 100)
            a0, a1, a2 = minimum.quadratic
            ax.plot(np.exp(grid), a0 + a1 * grid + a2 * grid**2, color=colour, lw=1.2)
            ax.plot(minimum.n_opt, minimum.loss_opt, marker="*", ms=13, color=colour,
                    markerfacecolor=colour if minimum.interior else "none", markeredgecolor=colour)
        ax.set_xscale("log")
        ax.set_title(f"{FAMILY_NAMES[family]} IsoFLOP curves")
        ax.set_xlabel("non-embedding parameters N")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, title="budget (FLOPs)", title_fontsize=8)
    axes[0][0].set_ylabel("validation loss")
    _save(fig, Path(path))


def _law_label(family: str, law: PowerLaw, what: str) -> str:
    return f"{FAMILY_NAMES[family]}: {what} = {law.coefficient:.3g} C^{law.exponent:.4f}"


def _draw_gap(ax: plt.Axes, comparison: dict[str, Any], arm: FamilyFit | None) -> None:
    if arm is None or comparison.get("compute_gap") is None:
        return
    for entry, minimum in zip(comparison["compute_gap_per_budget"], arm.minima):
        budget, gap = entry["budget"], entry["compute_gap"]
        ax.annotate("", xy=(budget * gap, minimum.loss_opt), xytext=(budget, minimum.loss_opt),
                    arrowprops={"arrowstyle": "->", "color": "grey", "lw": 0.8, "ls": ":"})
    interval = comparison.get("compute_gap_interval")
    spread = f" [{interval[0]:.3g}, {interval[1]:.3g}]" if interval else ""
    ax.set_title(f"L*(C): MDM needs {comparison['compute_gap']:.3g}x{spread} the ARM's compute",
                 fontsize=10)


def plot_scaling_laws(fits: dict[str, FamilyFit], comparison: dict[str, Any],
                      path: str | Path) -> None:
    """Figure 2: L* and N* against C with their power-law fits and the compute gap."""
    fig, (ax_loss, ax_size) = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    gaps = [e["compute_gap"] for e in comparison.get("compute_gap_per_budget", [])]
    for family, result in fits.items():
        colour = FAMILY_COLOURS[family]
        budgets = np.array([c.budget for c in result.curves])
        span = np.geomspace(budgets.min() / 1.5, budgets.max() * max(gaps + [1.5]) * 1.2, 100)
        for ax, values, law, what in (
            (ax_loss, [m.loss_opt for m in result.minima], result.loss_law, "L*"),
            (ax_size, [m.n_opt for m in result.minima], result.size_law, "N*"),
        ):
            hollow = [not m.interior for m in result.minima]
            ax.scatter(budgets, values, color=colour, zorder=3,
                       label=f"{FAMILY_NAMES[family]} {what}")
            if any(hollow):
                ax.scatter(budgets[hollow], np.array(values)[hollow], s=90, facecolors="none",
                           edgecolors="red", zorder=4, label=f"{FAMILY_NAMES[family]} edge minimum")
            if law is not None:
                ax.plot(span, law(span), color=colour, lw=1.2, label=_law_label(family, law, what))
    ax_loss.set_title("L*(C)", fontsize=10)
    _draw_gap(ax_loss, comparison, fits.get("arm"))
    ratio = comparison.get("optimal_size_ratio")
    ax_size.set_title("N*(C)" if ratio is None else
                      f"N*(C): N*_MDM / N*_ARM = {ratio:.3g} at "
                      f"C = {comparison['optimal_size_ratio_compute']:.2g}", fontsize=10)
    for ax, ylabel in ((ax_loss, "optimal loss L*"), (ax_size, "optimal size N*")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("compute C (FLOPs)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for which in ("major", "minor"):  # losses span < 1 decade: plain numbers, not 2x10^0
        getattr(ax_loss.yaxis, f"set_{which}_formatter")(FormatStrFormatter("%.2f"))
    _save(fig, Path(path))
