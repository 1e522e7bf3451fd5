"""reports/paper.md: every table and figure of PAPER.md section 10 from this run, beside the
paper's values, with a verdict per claim, provenance and sample generations.

Each result names the stage files it shows; a file that is absent is listed under "Missing
results" with the stage that should have written it, never silently left out.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline_steps.reporting import claims as c
from pipeline_steps.reporting import study_claims as s
from pipeline_steps.reporting.verdicts import MISSING, VERDICTS, Claim
from pipeline_steps.scoring.tables import NOT_IN_PAPER, PAPER_CFG, PAPER_TABLE2

RESULT_FILES = {"scaling": "scaling/scaling.json", "evaluate": "evaluate/results.json",
                "generate": "generate/results.json", "gsm8k": "gsm8k/results.json",
                "reversal": "reversal/results.json", "temporal": "temporal/results.json"}
"""The stage results the claims read, relative to the reports folder."""

# PAPER.md section 3 (read off the paper's figure): the fits and the L* markers at its budgets.
PAPER_FIGURE2 = {"budgets": (6e18, 1e19, 3e19, 6e19, 1e20),
                 "arm": {"loss": "45.5 C^-0.0642", "size": "217M (C/1e19)^0.643", "markers": (2.85, 2.75, 2.56, 2.45, 2.38)},
                 "mdm": {"loss": "50.2 C^-0.0625", "size": "114M (C/1e19)^0.630", "markers": (3.37, 3.26, 3.04, 2.92, 2.83)}}


@dataclass(frozen=True)
class Result:
    """One of the paper's tables or figures and where this run's version of it lives."""

    name: str
    title: str
    stage: str
    paper: str
    """What PAPER.md carries for it (or says it does not)."""
    tables: tuple[str, ...] = ()
    figures: tuple[str, ...] = ()
    claims: tuple[Callable[[c.Results, float], list[Claim]], ...] = ()
    samples: Callable[[c.Results, int], list[str]] | None = None
    extra: Callable[[c.Results], str] | None = field(default=None, compare=False)


def _figure2_table(results: c.Results) -> str:
    r = results.get("scaling")
    rows = ["| family | fit | ours | paper |", "|---|---|---|---|"]
    for fam in ("arm", "mdm"):
        ours = (r or {}).get("families", {}).get(fam)
        loss = f"{ours['loss_coefficient']:.3g} C^{ours['loss_exponent']:.4f}" if ours else "not produced"
        size = f"{ours['size_coefficient']:.3g} C^{ours['size_exponent']:.3f}" if ours else "not produced"
        rows += [f"| {fam.upper()} | L*(C) | {loss} | {PAPER_FIGURE2[fam]['loss']} |",
                 f"| {fam.upper()} | N*(C) | {size} | {PAPER_FIGURE2[fam]['size']} |"]
    markers = ", ".join(f"{b:.0e}: ARM {a} / MDM {m}" for b, a, m in
                        zip(PAPER_FIGURE2["budgets"], PAPER_FIGURE2["arm"]["markers"], PAPER_FIGURE2["mdm"]["markers"]))
    return "\n".join(rows) + f"\n\nThe paper's L* markers (FLOPs: ARM / MDM): {markers}. Our budgets are far smaller, " \
        "so the fits are compared by shape (exponents, gap, ratio), not by value.\n"


def _generation_samples(results: c.Results, k: int) -> list[str]:
    r = results.get("generate")
    if r is None:
        return []
    sets = {}
    path = r.get("_samples_path")
    if path and Path(path).exists():
        sets = {row["set"]: row["texts"] for row in map(json.loads, Path(path).read_text().splitlines())}
    lines = []
    for pair in r["pairs"].values():
        mdm_key = (pair.get("match") or pair.get("closest") or {}).get("key")
        shown = (("reference", "reference"), (f"MDM {mdm_key}", mdm_key), (f"ARM {pair['arm']}", f"{pair['arm']} arm"))
        for label, key in shown:
            lines += [f"{label}: {text!r}" for text in sets.get(key, [])[:k]]
        break  # the first pair is the paper's kind of comparison; the others are in samples.jsonl
    return lines


def _reversal_samples(results: c.Results, k: int) -> list[str]:
    r = results.get("reversal")
    rows = [x for x in (r or {}).get("samples", []) if x["direction"] == "reverse"]
    picked = [x for f in ("mdm", "arm") for x in [y for y in rows if y["family"] == f][:k]]
    return [f"{x['family'].upper()} w={x['cfg_scale']:g}: {x['prompt']!r} -> {x['generated']!r} "
            f"(reference {x['completion'].strip()!r})" for x in picked]


def _math_samples(results: c.Results, k: int) -> list[str]:
    rows = (results.get("gsm8k") or {}).get("samples", [])
    picked = [x for f in ("mdm", "arm") for x in [y for y in rows if y["family"] == f][:k]]
    return [f"{x['family'].upper()} {x['set']} {x['id']}: {x['text']!r} (gold {x['gold']}, "
            f"{'right' if x['correct'] else 'wrong'})" for x in picked]


_CFG = ", ".join(f"{t} {w:g}" for t, w in PAPER_CFG.items())
_T2 = "; ".join(f"{t}: " + ", ".join(f"{m} {x:g}" for m, x in row.items()) for t, row in PAPER_TABLE2.items())
RESULTS = (
    Result("Figure 1", "IsoFLOP curves (ARM, MDM)", "scaling",
           f"Curves: {NOT_IN_PAPER}. Their minima are Figure 2's markers.",
           figures=("scaling/isoflop_curves.png",), claims=(lambda r, k: c.scaling(r, k)[:1],)),
    Result("Figure 2", "L*(C) and N*(C) power laws, the compute gap and the optimal-size ratio", "scaling",
           "Fits and markers below (PAPER.md section 3); the MDM needs about 16x the compute for the same "
           "loss and its optimal size is about half the ARM's.",
           figures=("scaling/scaling_laws.png",), claims=(lambda r, k: c.scaling(r, k)[1:],), extra=_figure2_table),
    Result("Figure 3", "Downstream accuracy vs validation loss", "evaluate", f"Values: {NOT_IN_PAPER}.",
           figures=("evaluate/figure3.png",), claims=(c.figure3,)),
    Result("Table 1", "Unsupervised CFG on the zero-shot tasks", "evaluate",
           f"Cells: {NOT_IN_PAPER}. The scales the authors picked (on test data): {_CFG}.",
           tables=("evaluate/table1.md",), claims=(c.table1,)),
    Result("Table 2", "MDM vs ARMs on 8 tasks and GSM8K", "gsm8k",
           f"{_T2}; every other cell {NOT_IN_PAPER}.", tables=("gsm8k/table2.md",), claims=(c.table2,),
           samples=_math_samples),
    Result("Table 3", "CFG for conditional generation: none / standard / unsupervised", "generate",
           f"Cells: {NOT_IN_PAPER}. The paper's w grid: 0.4, 0.6, 0.8, 1.",
           tables=("generate/table3.md",), claims=(s.table3,)),
    Result("Table 4", "Generation quality and sampling time, ARM vs MDM", "generate",
           f"Cells: {NOT_IN_PAPER}. The claim (PAPER.md section 6): the MDM with 16x the ARM's pre-training "
           "compute matches it on MT-Bench while sampling 1.4x faster (batch 1, 128 steps).",
           tables=("generate/table4.md",), figures=("generate/frontier.png",), claims=(s.table4,),
           samples=_generation_samples),
    Result("Table 5", "The reversal curse", "reversal", "The paper's rows are in the table (PAPER.md section 8).",
           tables=("reversal/table5.md",), claims=(s.table5,), samples=_reversal_samples),
    Result("Table 6", "Temporal shift: perplexity on later text", "temporal", f"Cells: {NOT_IN_PAPER}.",
           tables=("temporal/table6.md",), claims=(s.table6,)),
    Result("Table 10", "Fixes for the length mismatch", "evaluate", f"Cells: {NOT_IN_PAPER}. Stochastic length is "
           "about 20x cheaper at evaluation than mask padding (PAPER.md section 5).",
           tables=("evaluate/table10.md",), claims=(c.table10,)),
    Result("Table 11", "Monte Carlo vs chain-rule likelihood per task", "evaluate", f"Cells: {NOT_IN_PAPER}. "
           "The choice per task: chain rule for OpenBookQA, PIQA, LAMBADA; Monte Carlo for ARC-Easy, HellaSwag, "
           "RACE, SIQA; BoolQ either.", tables=("evaluate/table11.md",), claims=(c.table11,)),
    Result("Table 13", "CFG vs no CFG at equal sampling compute", "generate", f"Cells: {NOT_IN_PAPER}.",
           tables=("generate/table13.md",), claims=(s.table13,)),
    Result("Table 14", "CFG on the reversal curse", "reversal", f"Cells: {NOT_IN_PAPER}.",
           tables=("reversal/table14.md",), claims=(s.table14,)),
)


def load_results(reports: Path) -> c.Results:
    """Each stage's results, None where its file is absent."""
    out: c.Results = {}
    for stage, rel in RESULT_FILES.items():
        path = reports / rel
        out[stage] = json.loads(path.read_text()) if path.is_file() else None
    if out["generate"] is not None:
        out["generate"]["_samples_path"] = str(reports / "generate" / "samples.jsonl")
    return out


def all_claims(results: c.Results, sigmas: float) -> list[tuple[Result, list[Claim]]]:
    return [(res, [claim for f in res.claims for claim in f(results, sigmas)]) for res in RESULTS]


def _demoted(markdown: str) -> str:
    """A stage's table file inside the report: its headings two levels down."""
    return "\n".join("###" + line if line.startswith("#") else line for line in markdown.splitlines())


def _verdict_table(rows: list[tuple[Result, Claim]]) -> list[str]:
    lines = ["| result | claim | ours | verdict | by the rule |", "|---|---|---|---|---|"]
    for res, claim in rows:
        why = claim.why + (" (timing-based)" if claim.timing else "")
        lines.append(f"| {res.name} | {claim.claim} | {claim.ours} | **{claim.verdict}** | {why} |".replace("\n", " "))
    return lines


def render(results: c.Results, reports: Path, figures_rel: str, provenance: dict[str, Any],
           sigmas: float, samples: int) -> tuple[str, list[tuple[Result, Claim]], list[str]]:
    """The Markdown, the (result, claim) pairs and the missing items (each with its reason)."""
    judged = all_claims(results, sigmas)
    pairs = [(res, claim) for res, found in judged for claim in found]
    counts = {v: sum(claim.verdict == v for _, claim in pairs) for v in VERDICTS}
    missing: list[str] = []
    runs = provenance.get("runs", {})
    lines = ["# Scaling up Masked Diffusion Models on Text: this run beside the paper", "",
             f"Profile **{provenance['profile']}**, git commit `{provenance['git_commit']}`"
             f"{' (uncommitted changes: ' + provenance['changed'] + ')' if provenance.get('changed') else ''}, written "
             f"{provenance['date']}. Paper values come from PAPER.md only; a cell it does not carry reads "
             f"\"{NOT_IN_PAPER}\".", "",
             "Verdicts: " + ", ".join(f"{counts[v]} {v}" for v in VERDICTS) +
             f". A difference counts when it exceeds {sigmas:g} combined standard errors (binomial for accuracies, "
             "delta-method or paired for perplexities); the rule of each claim is stated in its section. "
             "Timing-based verdicts depend on the machine.", "", "## Verdicts", "", *_verdict_table(pairs), ""]
    for res, found in judged:
        lines += [f"## {res.name}: {res.title}", "", f"**Paper (PAPER.md):** {res.paper}", ""]
        if res.extra is not None:
            lines += [res.extra(results), ""]
        for rel in res.tables:
            path = reports / rel
            if path.is_file():
                lines += [_demoted(path.read_text()), ""]
            else:
                missing.append(f"{res.name}: reports/{rel} not written (stage `{rel.split('/')[0]}` has not run)")
                lines += [f"*reports/{rel}: missing (stage `{rel.split('/')[0]}` has not run).*", ""]
        for rel in res.figures:
            name = rel.replace("/", "_")
            if (reports / rel).is_file():
                lines += [f"![{res.name}]({figures_rel}/{name})", ""]
            else:
                missing.append(f"{res.name}: reports/{rel} not written (stage `{rel.split('/')[0]}` has not run)")
                lines += [f"*Figure reports/{rel}: missing.*", ""]
        for claim in found:
            lines += [f"**Claim:** {claim.claim}.  ", f"**Rule:** {claim.rule}.  ",
                      f"**Ours:** {claim.line()}" + (" (timing-based)" if claim.timing else ""), ""]
            if claim.verdict == MISSING:
                missing.append(f"{res.name}: {claim.claim}: {claim.why}")
        if res.samples is not None:
            shown = res.samples(results, samples)
            lines += ["Sample generations:", ""] + [f"- {line}" for line in shown] + [""] if shown else []
        stage_run = runs.get(res.stage)
        lines += [f"*Source:* stage `{res.stage}`; MLflow run: {stage_run or 'not recorded (tracking off)'}; "
                  f"data: {provenance.get('data', {}).get(res.stage, 'no dvc.lock entry')}.", ""]
    lines += ["## Missing results", ""] + ([f"- {m}" for m in missing] or ["None: every result was produced."]) + [""]
    return "\n".join(lines), pairs, missing
