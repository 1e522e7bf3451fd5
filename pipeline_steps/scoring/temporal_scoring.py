"""Temporal-shift scores and Table 6 (the stage: pipeline_steps/temporal.py).

A text's score is its negative log-likelihood per token: the sum over documents over the sum of
their tokens, with the ratio estimator's standard error across documents (which holds the MDM's
Monte Carlo noise too; its Monte Carlo part alone is reported beside it). The claim is read from
the change in log-perplexity, later text minus same-era text, per model: the paper's MDM has
slightly higher perplexity in distribution and lower on the later text, so its change is smaller.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

READ_AT = 2.0
"""Standard errors a difference must exceed to be read as one."""


def per_token(nlls: Sequence[float], lengths: Sequence[int], mc_stderrs: Sequence[float] | None = None) -> dict:
    """NLL per token over documents, its standard error across documents, perplexity."""
    k, total = len(nlls), sum(lengths)
    mean = sum(nlls) / total
    spread = sum((nll - mean * n) ** 2 for nll, n in zip(nlls, lengths))
    stderr = math.sqrt(spread / (k * (k - 1))) / (total / k) if k > 1 else float("nan")
    out = {"nll": mean, "stderr": stderr, "ppl": math.exp(mean), "nlls": list(nlls)}
    if mc_stderrs is not None:
        out["mc_stderr"] = math.sqrt(sum(s * s for s in mc_stderrs if not math.isnan(s))) / total
    return out


ESTIMATES = {"arm": ("exact",), "mdm": ("elbo", "chain")}


def _influence(nlls: Sequence[float], lengths: Sequence[int], keep: Sequence[int]) -> tuple[float, list[float]]:
    """NLL per token over documents `keep`, and each one's linearised contribution to its error."""
    total = sum(lengths[i] for i in keep)
    mean = sum(nlls[i] for i in keep) / total
    return mean, [(nlls[i] - mean * lengths[i]) / (total / len(keep)) for i in keep]


def _paired(scores: dict, later: str, family: str, estimate: str, keys: list[str]) -> tuple[float, list[float]]:
    """Change in NLL per token on the documents both texts hold (by chapter key), with influences."""
    parts = []
    for text in (later, "same"):
        s = scores[text][family]
        where = {k: i for i, k in enumerate(s["keys"])}
        parts.append(_influence(s[estimate]["nlls"], s["lengths"], [where[k] for k in keys]))
    (a, ua), (b, ub) = parts
    return a - b, [x - y for x, y in zip(ua, ub)]


def _stderr(influence: Sequence[float]) -> float:
    k = len(influence)
    return math.sqrt(sum(u * u for u in influence) / (k * (k - 1))) if k > 1 else float("nan")


def _delta(scores: dict, later: str, family: str, estimate: str, keys: list[str] | None) -> tuple[float, float, list]:
    if keys is not None:  # paired documents: their shared content cancels in the change
        change, influence = _paired(scores, later, family, estimate, keys)
        return change, _stderr(influence), influence
    a, b = scores[later][family][estimate], scores["same"][family][estimate]
    return a["nll"] - b["nll"], math.hypot(a["stderr"], b["stderr"]), []


def reading(scores: dict, later_names: list[str], seen: dict[str, str] | None = None,
            paired: set[str] = frozenset()) -> dict:
    """Per later text: each model's change in log-perplexity, the MDM's minus the ARM's, a verdict
    (none for a text whose era the models saw: `seen` says why). For a `paired` text the changes
    use only the chapters both texts hold, and their standard errors the pairs' differences (the
    models read the same documents too, so the MDM's minus the ARM's is paired as well)."""
    out = {}
    for later in later_names:
        keys = None
        if later in paired:
            keys = [k for k in scores[later]["arm"]["keys"] if k in set(scores["same"]["arm"]["keys"])]
        arm, arm_se, arm_u = _delta(scores, later, "arm", "exact", keys)
        entry = {"arm": arm, "arm_stderr": arm_se, "pairs": None if keys is None else len(keys)}
        for estimate in ESTIMATES["mdm"]:
            mdm, mdm_se, mdm_u = _delta(scores, later, "mdm", estimate, keys)
            diff = mdm - arm
            se = _stderr([m - a for m, a in zip(mdm_u, arm_u)]) if keys is not None else math.hypot(mdm_se, arm_se)
            verdict = f"not read: {seen[later]}" if later in (seen or {}) else (
                       "MDM degrades less" if diff < -READ_AT * se else
                       "ARM degrades less" if diff > READ_AT * se else f"no difference within {READ_AT:g} standard errors")
            entry[estimate] = {"mdm": mdm, "mdm_stderr": mdm_se, "difference": diff, "stderr": se, "verdict": verdict}
        out[later] = entry
    return out


def table6(results: dict) -> str:
    scores, models = results["scores"], results["models"]
    loss = results["val_loss"]
    lines = ["# Table 6: perplexity on same-era and later text (ARM exact; MDM ELBO bound and chain rule; "
             "[brackets]: ± one standard error across documents)", "",
             f"Models: ARM {models['arm']} (val loss {_num(loss['arm'])}), MDM {models['mdm']} (val loss "
             f"{_num(loss['mdm'])}): picked by the closest in-distribution validation losses unless named. "
             "The paper's cells: not in PAPER.md; its claim: the MDM has slightly higher perplexity in "
             "distribution and lower on both later dumps.", "",
             "| text | documents | ARM ppl | MDM ppl (ELBO bound) | MDM ppl (chain rule) |", "|---|---|---|---|---|"]
    for text, by_family in scores.items():
        arm, mdm = by_family["arm"], by_family["mdm"]
        lines.append(f"| {text} | {arm['documents']} | {_ppl(arm['exact'])} | {_ppl(mdm['elbo'])}, Monte Carlo "
                     f"± {mdm['elbo']['mc_stderr']:.3f} nats | {_ppl(mdm['chain'])} |")
    lines += ["", "Change in log-perplexity, later minus same era (nats per token; on paired texts over the "
              "chapters both hold, standard errors from the pairs):", "",
              "| later text | ARM | MDM (ELBO) | MDM - ARM (ELBO) | MDM (chain) | MDM - ARM (chain) "
              "| reading (ELBO; chain rule) |",
              "|---|---|---|---|---|---|---|"]
    for later, r in results["reading"].items():
        e, c = r["elbo"], r["chain"]
        lines.append(f"| {later} | {r['arm']:+.3f} ± {r['arm_stderr']:.3f} | {e['mdm']:+.3f} ± {e['mdm_stderr']:.3f} "
                     f"| {e['difference']:+.3f} ± {e['stderr']:.3f} | {c['mdm']:+.3f} ± {c['mdm_stderr']:.3f} "
                     f"| {c['difference']:+.3f} ± {c['stderr']:.3f} | {e['verdict']}; {c['verdict']} |")
    return "\n".join(lines) + "\n"


def flat_metrics(results: dict) -> dict[str, float]:
    out: dict[str, float] = {}
    for text, by_family in results["scores"].items():
        for family, estimates in ESTIMATES.items():
            for estimate in estimates:
                s = by_family[family][estimate]
                out[f"{text}/{family}/{estimate}/nll"] = s["nll"]
                out[f"{text}/{family}/{estimate}/stderr"] = s["stderr"]
    for later, r in results["reading"].items():
        out[f"delta/{later}/arm"] = r["arm"]
        for estimate in ESTIMATES["mdm"]:
            out[f"delta/{later}/mdm_{estimate}"] = r[estimate]["mdm"]
            out[f"delta/{later}/mdm_minus_arm_{estimate}"] = r[estimate]["difference"]
    return out


def _ppl(s: dict) -> str:
    hi, lo = math.exp(s["nll"] + s["stderr"]), math.exp(s["nll"] - s["stderr"])
    return f"{s['ppl']:.1f} [{lo:.1f}, {hi:.1f}]"


def _num(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.3f}"
