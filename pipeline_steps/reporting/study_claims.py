"""The claims of the generation and fine-tuning studies (Tables 3, 4, 5, 6, 13, 14), read from
the generate, reversal and temporal stages' results; the rules as in claims.py."""
from __future__ import annotations

from typing import Any

from pipeline_steps.reporting import verdicts as v
from pipeline_steps.reporting.claims import Results, _absent
from pipeline_steps.reporting.verdicts import Claim, Estimate


def _judged(results: dict[str, Any], key: str) -> Estimate | None:
    row = results["judged"].get(key)
    return None if row is None else Estimate(row["gen_ppl"], row["gen_ppl_se"])


def table3(results: Results, sigmas: float) -> list[Claim]:
    claim = "Unsupervised CFG beats no guidance and standard CFG in conditional generation"
    rule = ("judge perplexity (lower is better) of the fine-tuned MDM: its best unsupervised w against no guidance "
            "and against the prompt-dropout model's best w (standard CFG); holds if both are lower by more than "
            f"{sigmas:g} combined standard errors, fails if either is higher by as much, else inconclusive "
            "(the best w is picked on the same prompts)")
    if (absent := _absent(results, "generate", "Table 3", claim, rule)) is not None:
        return absent
    r = results["generate"]
    rows = r.get("finetuned") or []
    def best(role: str, guided: bool) -> tuple[float, Estimate] | None:
        found = [(row["cfg_scale"], _judged(r, row["key"])) for row in rows
                 if row["role"] == role and (row["cfg_scale"] > 0) == guided and _judged(r, row["key"])]
        return min(found, key=lambda f: f[1].value) if found else None
    none, unsup, standard = best("sft_mdm", False), best("sft_mdm", True), best("sft_mdm_cfg", True)
    if none is None or unsup is None or standard is None:
        return [v.missing("Table 3", claim, rule, "the fine-tuned MDMs were not sampled and judged "
                          "(generate.sft_mdm, generate.sft_mdm_cfg, generate.judge)")]
    parts = [v.difference(other[1], unsup[1], sigmas, 1, "") for other in (none, standard)]
    states = {p[0] for p in parts}
    verdict = v.FAILS if v.FAILS in states else v.HOLDS if states == {v.HOLDS} else v.INCONCLUSIVE
    ours = (f"judge ppl: unsupervised w={unsup[0]:g} {unsup[1].text(digits=0)}; none {none[1].text(digits=0)}; "
            f"standard w={standard[0]:g} {standard[1].text(digits=0)}")
    return [Claim("Table 3", claim, ours, rule, verdict,
                  f"vs none: {parts[0][1]}; vs standard: {parts[1][1]}")]


def table4(results: Results, sigmas: float) -> list[Claim]:
    claim = ("An MDM with more pre-training compute matches the KV-cache ARM's sample quality and samples faster "
             "at batch 1 (paper: 16x compute, 1.4x faster at 128 steps)")
    rule = ("the generate stage's match: the MDM's fastest setting with judge perplexity within the ARM's standard "
            "error and entropy within 0.1 nats; holds if one exists and is faster than the KV-cache ARM at batch 1, "
            "inconclusive if it exists but is slower, fails if no setting reaches the ARM's quality")
    if (absent := _absent(results, "generate", "Table 4", claim, rule)) is not None:
        return absent
    out = []
    for name, pair in results["generate"]["pairs"].items():
        head = f"pair {name} ({pair['mdm']} vs {pair['arm']}): ARM ppl {pair['arm_ppl']:.0f} ± {pair['arm_ppl_se']:.0f}"
        match, closest = pair.get("match"), pair.get("closest")
        if match:
            ratio = match["time_ratio_1"]
            verdict = v.HOLDS if ratio < 1 else v.INCONCLUSIVE
            ours = f"{head}; match {match['key']}, ppl {match['gen_ppl']:.0f}"
            why = f"MDM time / ARM time at batch 1 = {ratio:.2f}"
        else:
            verdict = v.FAILS
            ours = head + (f"; closest {closest['key']}, ppl {closest['gen_ppl']:.0f}, entropy "
                           f"{closest['entropy']:.2f} vs {pair['arm_entropy']:.2f}" if closest else "")
            why = "no MDM setting reaches the ARM's quality" + (
                f" (the closest is {closest['time_ratio_1']:.2f}x the ARM's time at batch 1)" if closest else "")
        out.append(Claim("Table 4", claim, ours, rule, verdict, why, timing=True))
    return out or [v.missing("Table 4", claim, rule, "generate.pairs is empty")]


def table13(results: Results, sigmas: float) -> list[Claim]:
    claim = "CFG beats no CFG at equal sampling compute (CFG at half the steps)"
    rule = ("judge perplexity of the base MDM: the best CFG w at generate.cfg_steps against no CFG at twice the "
            "steps; " + v.difference_rule(sigmas, "no CFG's perplexity", "CFG's"))
    if (absent := _absent(results, "generate", "Table 13", claim, rule)) is not None:
        return absent
    r = results["generate"]
    steps = r["config"]["cfg_steps"]
    rows = [s for s in r["settings"] if s["family"] == "mdm" and s["sampler"] == "ancestral" and s["block_length"] is None]
    plain = [_judged(r, s["key"]) for s in rows if s["cfg_scale"] == 0 and s["steps"] == 2 * steps]
    guided = [(s["cfg_scale"], _judged(r, s["key"])) for s in rows if s["cfg_scale"] > 0 and s["steps"] == steps]
    guided = [g for g in guided if g[1] is not None]
    if not plain or plain[0] is None or not guided:
        return [v.missing("Table 13", claim, rule, f"no judged pair of no CFG at {2 * steps} steps and CFG at {steps} "
                          "(generate.ancestral_steps must hold both)")]
    w, cfg = min(guided, key=lambda g: g[1].value)
    verdict, why = v.difference(plain[0], cfg, sigmas, 1, "")
    return [Claim("Table 13", claim, f"CFG w={w:g} at {steps} steps {cfg.text(digits=0)} vs no CFG at {2 * steps} "
                  f"{plain[0].text(digits=0)} (judge ppl)", rule, verdict, why)]


def _reverse_match(r: dict[str, Any], family: str, w: float, direction: str = "reverse",
                   templates: str = "held-out") -> Estimate | None:
    rows = [g for g in r["generations"] if g["family"] == family and g["direction"] == direction
            and g["templates"] == templates and g["cfg_scale"] == w]
    n = sum(g["n"] for g in rows)
    return v.proportion(sum(g["substring"] * g["n"] for g in rows), n) if n else None


def table5(results: Results, sigmas: float) -> list[Claim]:
    claim = "The MDM breaks the reversal curse: its reverse-direction exact match exceeds the ARM's (paper 92/37 vs 0)"
    rule = (v.difference_rule(sigmas, "the MDM's reverse exact match (both subsets, held-out templates)", "the ARM's")
            + "; inconclusive instead of fails while the MDM is below the reversal stage's same-direction bar "
            "(undertrained)")
    rank_claim = "The MDM ranks the true reverse completion first more often than the ARM"
    rank_rule = v.difference_rule(sigmas, "the MDM's reverse top-1 rate among candidates", "the ARM's")
    if (absent := _absent(results, "reversal", "Table 5", claim, rule)) is not None:
        return absent + [v.missing("Table 5", rank_claim, rank_rule, absent[0].why)]
    r = results["reversal"]
    w = r["config"]["table5_cfg"]
    mdm, arm = _reverse_match(r, "mdm", w), _reverse_match(r, "arm", 0.0)
    same = _reverse_match(r, "mdm", w, "same", "trained") or _reverse_match(r, "mdm", 0.0, "same", "trained")
    out = []
    if mdm is None or arm is None:
        out.append(v.missing("Table 5", claim, rule, "no reverse-direction generations for both families"))
    else:
        verdict, why = v.difference(mdm, arm, sigmas, 100, " points")
        bar = r["config"]["min_same"]
        if verdict == v.FAILS and same is not None and same.value < bar:
            verdict, why = v.INCONCLUSIVE, f"{why}; MDM same direction {100 * same.value:.0f}% < bar {100 * bar:.0f}%"
        out.append(Claim("Table 5", claim, f"reverse exact match %: MDM (w={w:g}) {mdm.text(100)} vs ARM {arm.text(100)}",
                         rule, verdict, why))
    ranks = {f: [Estimate(x["top1"], x["top1_stderr"]) for x in r.get("ranks", [])
                 if x["family"] == f and x["direction"] == "reverse"] for f in ("mdm", "arm")}
    if not ranks["mdm"] or not ranks["arm"]:
        out.append(v.missing("Table 5", rank_claim, rank_rule, "no likelihood ranking (reversal.rank_candidates)"))
    else:
        m, a = v.pooled(ranks["mdm"]), v.pooled(ranks["arm"])
        verdict, why = v.difference(m, a, sigmas, 100, " points")
        out.append(Claim("Table 5", rank_claim, f"reverse top-1 %: MDM {m.text(100)} vs ARM {a.text(100)}",
                         rank_rule, verdict, why))
    return out


def table14(results: Results, sigmas: float) -> list[Claim]:
    claim = "CFG raises the MDM's reverse-direction exact match"
    rule = v.difference_rule(sigmas, "reverse exact match with CFG (reversal.table5_cfg)", "without")
    if (absent := _absent(results, "reversal", "Table 14", claim, rule)) is not None:
        return absent
    r = results["reversal"]
    w = r["config"]["table5_cfg"]
    on, off = _reverse_match(r, "mdm", w), _reverse_match(r, "mdm", 0.0)
    if w == 0 or on is None or off is None:
        return [v.missing("Table 14", claim, rule, "the MDM was not sampled both with and without CFG")]
    verdict, why = v.difference(on, off, sigmas, 100, " points")
    return [Claim("Table 14", claim, f"w={w:g} {on.text(100)} vs w=0 {off.text(100)} (%)", rule, verdict, why)]


def table6(results: Results, sigmas: float) -> list[Claim]:
    claim = "On text from after the training data the MDM's perplexity rises less than the ARM's"
    rule = ("change in log-perplexity (later minus same era), MDM minus ARM, paired by document; holds if below 0 by "
            f"more than {sigmas:g} standard errors, fails if above by as much, else inconclusive")
    if (absent := _absent(results, "temporal", "Table 6", claim, rule)) is not None:
        return absent
    out = []
    for text, reading in results["temporal"]["reading"].items():
        for estimator, label in (("elbo", "MDM ELBO bound, the paper's measure"), ("chain", "MDM chain rule")):
            part = reading.get(estimator)
            if not part:
                continue
            verdict, why = v.difference(Estimate(-part["difference"], part["stderr"]), Estimate(0.0, 0.0), sigmas)
            paired = f" ({reading['pairs']} paired documents)" if reading.get("pairs") else ""
            ours = f"change: MDM {part['mdm']:+.3f} vs ARM {reading['arm']:+.3f} nats/token{paired}"
            out.append(Claim("Table 6", f"{claim} ({text}, {label})", ours, rule, verdict,
                             why.replace("difference", "ARM minus MDM")))
    return out or [v.missing("Table 6", claim, rule, "temporal.later names no later text")]
