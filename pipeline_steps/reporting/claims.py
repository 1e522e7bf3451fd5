"""The paper's qualitative claims, each read from the stage results of this run (PAPER.md section
10's figures and tables), with the rule that decides its verdict (verdicts.py).

Every function takes the loaded results of the stages (None where a stage's results are absent)
and `sigmas`, the number of standard errors a difference must exceed, and returns Claims. A
claim whose numbers are absent is `missing` with the reason, never left out.
"""
from __future__ import annotations

from typing import Any

from pipeline_steps.reporting import verdicts as v
from pipeline_steps.reporting.verdicts import Claim, Estimate
from pipeline_steps.scoring.tables import PAPER_TASKS, find

Results = dict[str, dict[str, Any] | None]


def _absent(results: Results, stage: str, result: str, claim: str, rule: str) -> list[Claim] | None:
    if results.get(stage) is None:
        return [v.missing(result, claim, rule, f"no results from stage `{stage}` (reports/{stage}/ not written)")]
    return None


def _cell(cell: dict[str, Any] | None) -> Estimate | None:
    return None if cell is None or cell.get("acc") is None else Estimate(cell["acc"], cell["stderr"], cell["n"])


# ---- Figures 1-2: the IsoFLOP analysis (stage scaling) ----

EDGES = ("; inconclusive while a family has fewer than 2 interior minima (its L* and N* are then the edge "
         "of the sizes trained, not measurements)")

def scaling(results: Results, sigmas: float) -> list[Claim]:
    claims = ("Each IsoFLOP curve has its minimum inside the sizes trained, for both families",
              "The MDM needs more compute than the ARM for the same loss (about 16x)",
              "The MDM's compute-optimal size is smaller than the ARM's (about half)",
              "The optimal loss L*(C) falls as a power of compute for both families")
    rules = ("holds if every budget of both families has an interior minimum, fails if a family has none, "
             "else inconclusive",
             "the scaling stage's bootstrap interval of the compute gap: holds if wholly above 1, fails if wholly "
             "below" + EDGES,
             "bootstrap interval of N*_MDM / N*_ARM: holds if wholly below 1, fails if wholly above" + EDGES,
             "bootstrap intervals of both loss exponents: holds if both wholly below 0, fails if one is wholly "
             "above; inconclusive for a family fitted through two budgets only (no interval)" + EDGES)
    results_of = ("Figure 1", "Figure 2", "Figure 2", "Figure 2")
    if (r := results.get("scaling")) is None:
        return [v.missing(res, c, rule, "no results from stage `scaling`") for res, c, rule in zip(results_of, claims, rules)]
    fams = r["families"]
    interior = {f: sum(m["interior"] for m in fams[f]["minima"]) for f in fams}
    budgets = {f: len(fams[f]["minima"]) for f in fams}
    shown = ", ".join(f"{f.upper()} {interior[f]} of {budgets[f]} budgets interior" for f in sorted(fams))
    if len(fams) < 2:
        verdict, why = v.MISSING, "the grid has only " + ", ".join(fams)
    elif all(interior[f] == budgets[f] for f in fams):
        verdict, why = v.HOLDS, "every budget"
    elif any(interior[f] == 0 for f in fams):
        verdict, why = v.FAILS, "a family has no interior minimum"
    else:
        verdict, why = v.INCONCLUSIVE, "some budgets have their vertex at an edge: add sizes"
    out = [Claim("Figure 1", claims[0], shown, rules[0], verdict, why)]
    thin = [f.upper() for f in sorted(fams) if interior[f] < 2]
    edges = f"; but {' and '.join(thin)}: fewer than 2 interior minima" if thin else ""

    def at_edges(verdict: str, why: str) -> tuple[str, str]:
        return (v.INCONCLUSIVE, why + edges) if thin and verdict in (v.HOLDS, v.FAILS) else (verdict, why)

    gap = r.get("compute_gap")
    if gap is None:
        out.append(v.missing("Figure 2", claims[1], rules[1], "no compute gap (a family or its loss law missing)"))
    else:
        verdict, why = at_edges(*v.interval(gap, r["compute_gap_interval"], 1.0, True, "compute gap"))
        out.append(Claim("Figure 2", claims[1], f"{gap:.1f}x (paper about 16x)", rules[1], verdict, why))
    ratio = r.get("optimal_size_ratio")
    if ratio is None:
        out.append(v.missing("Figure 2", claims[2], rules[2], "no size law for a family"))
    else:
        verdict, why = at_edges(*v.interval(ratio, r["optimal_size_ratio_interval"], 1.0, False, "N*_MDM / N*_ARM"))
        out.append(Claim("Figure 2", claims[2], f"{ratio:.2f} (paper 114M/217M = 0.53 at 1e19)", rules[2], verdict, why))
    parts = {f: (v.INCONCLUSIVE, f"{f.upper()} exponent {fams[f]['loss_exponent']:.3g}: no interval "
                 f"({fams[f].get('interval_note') or 'too few budgets'})") if fams[f].get("interval_degenerate")
             else v.interval(fams[f]["loss_exponent"], fams[f]["loss_exponent_interval"], 0.0, False,
                             f"{f.upper()} exponent") for f in sorted(fams)}
    states = {p[0] for p in parts.values()}
    verdict, why = at_edges(v.FAILS if v.FAILS in states else v.HOLDS if states == {v.HOLDS} else v.INCONCLUSIVE,
                            "; ".join(p[1] for p in parts.values()))
    ours = ", ".join(f"{f.upper()} L* = {fams[f]['loss_coefficient']:.3g} C^{fams[f]['loss_exponent']:.3f}"
                     for f in sorted(fams))
    out.append(Claim("Figure 2", claims[3], ours, rules[3], verdict, why))
    return out


# ---- Figure 3 and Tables 1, 2, 10, 11: zero-shot benchmarks (stage evaluate) ----

def figure3(results: Results, sigmas: float) -> list[Claim]:
    claim = "Downstream accuracy rises as the validation loss falls"
    rule = ("per task, accuracy of the grid's lowest-loss MDM minus its highest-loss MDM, averaged over tasks; "
            + v.difference_rule(sigmas, "that mean", "0"))
    if (absent := _absent(results, "evaluate", "Figure 3", claim, rule)) is not None:
        return absent
    by_task: dict[str, list[dict]] = {}
    for cell in results["evaluate"]["grid"]:
        by_task.setdefault(cell["task"], []).append(cell)
    diffs, shown = [], []
    for task, cells in by_task.items():
        if len({c["val_loss"] for c in cells}) < 2:
            continue
        best, worst = min(cells, key=lambda c: c["val_loss"]), max(cells, key=lambda c: c["val_loss"])
        diffs.append(Estimate(best["acc"] - worst["acc"], (best["stderr"] ** 2 + worst["stderr"] ** 2) ** 0.5))
        shown.append(f"{task}: {100 * best['acc']:.1f}% at loss {best['val_loss']:.2f} vs "
                     f"{100 * worst['acc']:.1f}% at {worst['val_loss']:.2f}")
    if not diffs:
        return [v.missing("Figure 3", claim, rule, "fewer than 2 grid models evaluated (evaluate.grid_models)")]
    verdict, why = v.difference(v.pooled(diffs), Estimate(0.0, 0.0), sigmas, 100, " points")
    return [Claim("Figure 3", claim, "; ".join(shown), rule, verdict, why)]


def table1(results: Results, sigmas: float) -> list[Claim]:
    claim = "Unsupervised CFG raises zero-shot accuracy"
    rule = ("accuracy at the held-out-selected w minus at w = 0, averaged over the tasks whose selected w > 0; "
            + v.difference_rule(sigmas, "that mean", "0") + "; inconclusive if every task selected w = 0")
    if (absent := _absent(results, "evaluate", "Table 1", claim, rule)) is not None:
        return absent
    r = results["evaluate"]
    diffs, shown = [], []
    for task, sel in r["selection"].items():
        on, off = _cell(find(r, task, "mdm", sel["method"], sel["w"])), _cell(find(r, task, "mdm", sel["method"], 0.0))
        if sel["w"] > 0 and on is not None and off is not None:
            diffs.append(Estimate(on.value - off.value, (on.stderr ** 2 + off.stderr ** 2) ** 0.5))
            shown.append(f"{task} w={sel['w']:g}: {on.text(100)} vs {off.text(100)}")
    if not diffs:
        return [Claim("Table 1", claim, "w = 0 selected on every task", rule, v.INCONCLUSIVE,
                      "held-out selection chose no guidance anywhere: no guided cell to compare")]
    verdict, why = v.difference(v.pooled(diffs), Estimate(0.0, 0.0), sigmas, 100, " points")
    return [Claim("Table 1", claim, "; ".join(shown), rule, verdict, why)]


def table2(results: Results, sigmas: float) -> list[Claim]:
    claim = "The MDM is competitive with ARMs on zero-shot benchmarks (1.1B MDM beats TinyLlama on 4 of 8 tasks)"
    rule = ("per task the difference rule on MDM minus ARM accuracy; holds if the MDM wins at least one task and "
            "no fewer than it loses, fails if it loses more than it wins, else inconclusive")
    out: list[Claim] = []
    if (absent := _absent(results, "evaluate", "Table 2", claim, rule)) is not None:
        out += absent
    else:
        r = results["evaluate"]
        wins, losses, shown = [], [], []
        for task in PAPER_TASKS:
            sel = r["selection"].get(task)
            mdm = _cell(find(r, task, "mdm", sel["method"], sel["w"])) if sel else None
            arm = _cell(find(r, task, "arm")) if sel else None
            if mdm is None or arm is None:
                shown.append(f"{task}: not evaluated")
                continue
            verdict, _ = v.difference(mdm, arm, sigmas)
            (wins if verdict == v.HOLDS else losses if verdict == v.FAILS else []).append(task)
            shown.append(f"{task} {100 * mdm.value:.0f} vs {100 * arm.value:.0f}")
        verdict = (v.HOLDS if wins and len(wins) >= len(losses) else v.FAILS if len(losses) > len(wins)
                   else v.INCONCLUSIVE)
        out.append(Claim("Table 2", claim, "MDM vs ARM %: " + "; ".join(shown), rule, verdict,
                         f"MDM wins {len(wins)} ({', '.join(wins) or '-'}), loses {len(losses)} "
                         f"({', '.join(losses) or '-'}), the rest within {sigmas:g} standard errors"))
    return out + gsm8k(results, sigmas)


def gsm8k(results: Results, sigmas: float) -> list[Claim]:
    rule = (f"inconclusive if neither model is above 0 by {sigmas:g} standard errors (both at the floor); "
            f"otherwise fails if the ARM exceeds the MDM by more than {sigmas:g} combined standard errors, else holds")
    out = []
    for name, what in (("gsm8k", "GSM8K test"), ("math", "our generated test split")):
        claim = f"After the same fine-tuning, the MDM matches the ARM on math ({what}; paper 58.5 vs 58.6)"
        if (absent := _absent(results, "gsm8k", "Table 2", claim, rule)) is not None:
            out += absent
            continue
        cells = {c["family"]: c for c in results["gsm8k"]["cells"] if c.get("main") and c["set"] == name}
        if set(cells) != {"mdm", "arm"}:
            out.append(v.missing("Table 2", claim, rule, f"set {name} has no main cell for both families"))
            continue
        mdm, arm = (Estimate(cells[f]["accuracy"], cells[f]["stderr"], cells[f]["n"]) for f in ("mdm", "arm"))
        ours = f"MDM {mdm.text(100)} vs ARM {arm.text(100)} (% correct)"
        if all(e.value <= sigmas * e.stderr for e in (mdm, arm)):
            verdict, why = v.INCONCLUSIVE, "both at the floor"
        else:
            verdict, why = v.difference(mdm, arm, sigmas, 100, " points")
            verdict = v.FAILS if verdict == v.FAILS else v.HOLDS
        out.append(Claim("Table 2", claim, ours, rule, verdict, why))
    return out


def table10(results: Results, sigmas: float) -> list[Claim]:
    rule = ("mean accuracy over tasks with the fix minus without (w = 0, each task's selected method; the paired "
            "cells treated as independent, which is conservative); " + v.difference_rule(sigmas, "the fix", "none"))
    out = []
    for fix, model, padded in (("stochastic sequence length in pretraining", "mdm_stochlen", False),
                               ("[MASK] padding to the training length at evaluation", "mdm", True)):
        claim = f"The length mismatch is fixed by {fix}"
        if (absent := _absent(results, "evaluate", "Table 10", claim, rule)) is not None:
            out += absent
            continue
        r = results["evaluate"]
        if model == "mdm_stochlen" and not r.get("stochlen_trained"):
            out.append(v.missing("Table 10", claim, rule, "no stochastic-length MDM trained in this profile"))
            continue
        pairs = []
        for task, sel in r["selection"].items():
            plain = _cell(find(r, task, "mdm", sel["method"], 0.0))
            fixed = _cell(find(r, task, model, sel["method"] if padded else None, 0.0 if padded else None, padded))
            if plain is not None and fixed is not None:
                pairs.append((fixed, plain))
        if not pairs:
            out.append(v.missing("Table 10", claim, rule, "no task has both cells"))
            continue
        with_fix, without = v.pooled([p[0] for p in pairs]), v.pooled([p[1] for p in pairs])
        verdict, why = v.difference(with_fix, without, sigmas, 100, " points")
        out.append(Claim("Table 10", claim, f"mean over {len(pairs)} tasks {with_fix.text(100)} vs {without.text(100)}",
                         rule, verdict, why))
    return out


def table11(results: Results, sigmas: float) -> list[Claim]:
    claim = "Each task is scored best by the estimator the paper chose for it (Monte Carlo or chain rule)"
    rule = ("per paper task (not BoolQ, not greedy ones) the difference rule on the chosen estimator's accuracy "
            "(evaluate.methods, PAPER.md section 5's choice by default) minus the other's at w = 0; holds if more "
            "tasks significantly favour the choice than contradict it, fails if more contradict it, else inconclusive")
    if (absent := _absent(results, "evaluate", "Table 11", claim, rule)) is not None:
        return absent
    r = results["evaluate"]
    agree, against, shown = [], [], []
    for task, info in r["tasks"].items():
        chosen = info.get("default_method")
        if task not in PAPER_TASKS or task == "boolq" or chosen not in ("mc", "chain"):
            continue  # our own tasks have no paper choice; BoolQ's one-token answers score the same
        other = "chain" if chosen == "mc" else "mc"
        a, b = _cell(find(r, task, "mdm", chosen, 0.0)), _cell(find(r, task, "mdm", other, 0.0))
        if a is None or b is None:
            continue
        verdict, _ = v.difference(a, b, sigmas)
        (agree if verdict == v.HOLDS else against if verdict == v.FAILS else []).append(task)
        shown.append(f"{task} {chosen} {100 * a.value:.0f} vs {other} {100 * b.value:.0f}")
    if not shown:
        return [v.missing("Table 11", claim, rule, "no task scored by both estimators (evaluate.compare_methods)")]
    verdict = v.HOLDS if len(agree) > len(against) else v.FAILS if len(against) > len(agree) else v.INCONCLUSIVE
    return [Claim("Table 11", claim, "; ".join(shown), rule, verdict,
                  f"{len(agree)} tasks favour the choice, {len(against)} contradict it, "
                  f"{len(shown) - len(agree) - len(against)} within {sigmas:g} standard errors")]
