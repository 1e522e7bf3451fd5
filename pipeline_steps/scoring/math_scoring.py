"""Math-study scores and tables (the stage: pipeline_steps/gsm8k.py).

Accuracy counts every problem asked, too long ones as wrong, with its binomial standard error;
beside it, how many were too long for the model's context and how many generations carried a
`####` at all (a model that never answers scores 0 for another reason than wrong arithmetic).
"""
from __future__ import annotations

from typing import Any

from pipeline_steps.scoring.evaluator import binomial_stderr
from pipeline_steps.scoring.tables import PAPER_TABLE2, table2

PAPER_GSM8K = PAPER_TABLE2["gsm8k"]  # PAPER.md section 7: MDM 1.1B 58.5, Llama-2 7B 58.6 (fine-tuned)


def score(rows: list[dict], seconds: float) -> dict[str, Any]:
    """One cell: n, correct, accuracy ± stderr, too long, answered (a `####` found), seconds per
    problem that fit."""
    n, fit = len(rows), [r for r in rows if r["text"] is not None]
    correct = sum(r["correct"] for r in rows)
    acc = correct / n if n else float("nan")
    return {"n": n, "correct": correct, "accuracy": acc, "stderr": binomial_stderr(acc, n),
            "too_long": n - len(fit), "answered": sum(r["answer"] is not None for r in fit),
            "seconds_per_problem": seconds / len(fit) if fit else float("nan")}


def main_cell(results: dict, family: str, name: str) -> dict:
    return next(c for c in results["cells"] if c["family"] == family and c["set"] == name and c["main"])


def pct(cell: dict) -> str:
    return f"{100 * cell['accuracy']:.1f} ± {100 * cell['stderr']:.1f}"


def _setting(cell: dict) -> str:
    if cell["family"] == "arm":
        return "greedy, KV cache"
    return f"{cell['sampler']}, {cell['steps_per_token']:g} steps/token, w={cell['cfg_scale']:g}"


def _models(results: dict) -> str:
    return "; ".join(f"{f.upper()} `{m['group']}` (fine-tuned from `{m['base']}`, {m['epochs']} epochs, "
                     f"context {m['context']})" for f, m in results["models"].items())


def math_table(results: dict) -> str:
    lines = ["# The math study: two-stage fine-tuning, MDM vs ARM", "",
             "PAPER.md section 7: after fine-tuning on GSM8K-Aug, the 1.1B MDM scores 58.5 on GSM8K and "
             "Llama-2 7B 58.6. Here: " + _models(results) + ". Accuracy in percent ± binomial standard error "
             "over every problem asked (too long ones count as wrong); answered = generations with a `####`.", "",
             "| test set | model | setting | n | accuracy | too long | answered | s / problem | paper |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, info in results["sets"].items():
        for family in ("mdm", "arm"):
            c = main_cell(results, family, name)
            paper = (PAPER_GSM8K["MDM 1.1B"] if family == "mdm" else PAPER_GSM8K["Llama-2 7B"]) if name == "gsm8k" \
                else "n/a (our task)"
            lines.append(f"| {name} ({info['what']}) | {family.upper()} | {_setting(c)} | {c['n']} | {pct(c)} | "
                         f"{c['too_long']} | {c['answered']} | {c['seconds_per_problem']:.4f} | {paper} |")
    return "\n".join(lines) + "\n"


def gsm8k_cells(results: dict) -> dict[str, str]:
    """Table 2's GSM8K cells: accuracy, n and the too-long count per family."""
    return {f: f"{pct(c)} (n={c['n']}, {c['too_long']} too long)"
            for f in ("mdm", "arm") for c in [main_cell(results, f, "gsm8k")]}


def table2_with_gsm8k(results: dict, evaluate_results: dict | None) -> str:
    """Table 2 with its GSM8K column from this study (the rest from the evaluate stage's results)."""
    cells = gsm8k_cells(results)
    if evaluate_results is not None:
        return table2(evaluate_results, cells)
    return ("# Table 2: MDM vs ARM (GSM8K only: no evaluate results)\n\n| task | our MDM | our ARM | paper MDM 1.1B "
            f"| paper Llama-2 7B |\n|---|---|---|---|---|\n| gsm8k | {cells['mdm']} | {cells['arm']} | "
            f"{PAPER_GSM8K['MDM 1.1B']:g} | {PAPER_GSM8K['Llama-2 7B']:g} |\n")


def table4_key(family: str, sampler: str | None, steps_per_token: float | None, cfg_scale: float) -> str:
    """Table 4's math cells are matched by this key: family, sampler, steps per generated token, w."""
    if family == "arm":
        return "arm"
    return f"mdm {sampler} {steps_per_token:g} w={cfg_scale:g}"


def table4_cells(results: dict) -> dict[str, dict]:
    """Our-test-split cells by table4_key (the generate stage fills Table 4's math column with them)."""
    return {table4_key(c["family"], c["sampler"], c["steps_per_token"], c["cfg_scale"]): c
            for c in results["cells"] if c["set"] == "math"}


def table4_math(results: dict) -> str:
    lines = ["# Table 4's verifiable column: math accuracy and time per sampler setting", "",
             f"Our generated test split, {_models(results)}; both stages timed together, seconds per problem "
             "that fit, on this machine. The generate stage's Table 4 shows these cells beside its rows of "
             "the same sampler and steps per token.", "",
             "| model | setting | n | accuracy | answered | s / problem |", "|---|---|---|---|---|---|"]
    for c in (c for c in results["cells"] if c["set"] == "math"):
        lines.append(f"| {c['family'].upper()} | {_setting(c)} | {c['n']} | {pct(c)} | {c['answered']} | "
                     f"{c['seconds_per_problem']:.4f} |")
    return "\n".join(lines) + "\n"


def flat_metrics(results: dict) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in results["sets"]:
        for family in ("mdm", "arm"):
            c = main_cell(results, family, name)
            for key in ("accuracy", "stderr", "too_long", "answered", "n"):
                out[f"{family}/{name}/{key}"] = float(c[key])
    return out
