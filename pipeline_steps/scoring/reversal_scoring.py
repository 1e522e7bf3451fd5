"""Reversal-curse scores and Tables 5 and 14 (the stage: pipeline_steps/reversal.py).

Exact match reads the generation up to its first EOS only (the authors' test searched the whole
canvas, text after EOS included) and compares case-insensitively with the completion, both with
their trailing period dropped and white space collapsed: `starts_with` (the generation begins with
the completion) and `substring` (the paper's rule: the completion appears in it). BLEU is
sacrebleu's corpus BLEU on words (the authors' was nltk's on characters, where a wrong
description scores 0.27). The rank is the true completion's log-likelihood rank among other
people's completions from the same file: 1 is best, 1 / candidates is chance for the top-1 share.
"""
from __future__ import annotations

from collections.abc import Sequence

import sacrebleu

from pipeline_steps.scoring.evaluator import binomial_stderr

# file -> (subset, direction, templates): NtD = Berglund's NameToDescription (p2d) people, DtN = d2p.
FILES = {
    "p2d_prompts_train": ("NtD", "same", "trained"),
    "d2p_prompts_train": ("DtN", "same", "trained"),
    "p2d_prompts_test": ("NtD", "same", "held-out"),
    "d2p_prompts_test": ("DtN", "same", "held-out"),
    "p2d_reverse_prompts_test": ("NtD", "reverse", "held-out"),
    "d2p_reverse_prompts_test": ("DtN", "reverse", "held-out"),
}
TABLE5_COLUMNS = (("DtN", "same"), ("DtN", "reverse"), ("NtD", "same"), ("NtD", "reverse"))
PAPER_TABLE5 = {  # PAPER.md section 8: exact match % (BLEU)
    "GPT-3 175B": ("97", "0", "50", "0"),
    "Llama-2 13B": ("99", "0", "(74)", "(19)"),
    "T5 3B": ("100", "0", "47 (87)", "0 (20)"),
    "MDM 1.1B": ("97", "92", "49 (76)", "37 (67)"),
}


def cut_at_eos(tokens: list[int], eos: int) -> list[int]:
    """The tokens before the first EOS: nothing after it counts."""
    return tokens[:tokens.index(eos)] if eos in tokens else tokens


def normalise(text: str) -> str:
    return " ".join(text.strip().rstrip(".").lower().split())


def exact_match(generated: str, completion: str) -> tuple[bool, bool]:
    """(starts_with, substring) of the completion in the generation, normalised."""
    gen, ref = normalise(generated), normalise(completion)
    return gen.startswith(ref), ref in gen


def word_bleu(generated: Sequence[str], completions: Sequence[str]) -> float:
    """sacrebleu's corpus BLEU (0-100) of the generations against the completions, on words."""
    refs = [c.strip() for c in completions]
    return sacrebleu.corpus_bleu([g.strip() for g in generated], [refs]).score


def score_generations(generated: Sequence[str], completions: Sequence[str]) -> dict:
    """Exact match (both rules, with standard errors) and BLEU of one file's generations."""
    matches = [exact_match(g, c) for g, c in zip(generated, completions)]
    n = len(matches)
    starts = sum(s for s, _ in matches) / n
    sub = sum(s for _, s in matches) / n
    return {"n": n, "starts_with": starts, "starts_with_stderr": binomial_stderr(starts, n),
            "substring": sub, "substring_stderr": binomial_stderr(sub, n),
            "bleu": word_bleu(generated, completions)}


def score_ranks(ranks: Sequence[int], candidates: Sequence[int]) -> dict:
    """Top-1 share (with its standard error), mean rank, and chance's top-1 share."""
    n = len(ranks)
    top1 = sum(r == 1 for r in ranks) / n
    return {"top1": top1, "top1_stderr": binomial_stderr(top1, n), "mean_rank": sum(ranks) / n,
            "chance_top1": sum(1 / c for c in candidates) / n}


def _cell(entry: dict | None, bleu: bool) -> str:
    if entry is None:
        return "missing"
    text = f"{100 * entry['substring']:.0f} ± {100 * entry['substring_stderr']:.0f}"
    return f"{text} ({entry['bleu']:.0f})" if bleu else text


def table5(results: dict, mdm_cfg: float) -> str:
    """The paper's rows beside ours: substring exact match % ± standard error (word BLEU)."""
    lines = ["# Table 5: the reversal curse (exact match %, substring rule, held-out templates; word BLEU "
             "in brackets)", "",
             "| model | DtN same | DtN reverse | NtD same | NtD reverse |", "|---|---|---|---|---|"]
    for name, cells in PAPER_TABLE5.items():
        lines.append(f"| {name} (paper) | " + " | ".join(cells) + " |")
    for family, label in (("arm", "ARM (ours)"), ("mdm", f"MDM (ours, CFG {mdm_cfg:g})")):
        w = mdm_cfg if family == "mdm" else 0.0
        cells = [_cell(_find(results, family, subset, direction, "held-out", w), True)
                 for subset, direction in TABLE5_COLUMNS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Without a sampler: the true completion's log-likelihood rank among other people's "
              "(top-1 %, chance in brackets):", "", "| model | DtN same | DtN reverse | NtD same | NtD reverse |",
              "|---|---|---|---|---|"]
    for family in ("arm", "mdm"):
        cells = []
        for subset, direction in TABLE5_COLUMNS:
            e = _find(results, family, subset, direction, "held-out", None, "ranks")
            cells.append("missing" if e is None else f"{100 * e['top1']:.0f} ± {100 * e['top1_stderr']:.0f} "
                                                     f"({100 * e['chance_top1']:.0f})")
        lines.append(f"| {family.upper()} (ours) | " + " | ".join(cells) + " |")
    lines += ["", _models_line(results), "", "Same direction at the trained templates "
              "(the bar before reading the reverse: >= "
              f"{100 * results['config']['min_same']:.0f}%):", ""]
    for family in ("arm", "mdm"):
        cells = [e for subset in ("DtN", "NtD") if (e := _find(results, family, subset, "same", "trained", 0.0))]
        below = bool(cells) and min(e["substring"] for e in cells) < results["config"]["min_same"]
        lines.append(f"- {family.upper()}: " + ", ".join(f"{e['subset']} {100 * e['substring']:.0f}%" for e in cells)
                     + (": below the bar, so its reverse exact match reads as undertrained, not as the curse"
                        if below else ""))
    return "\n".join(lines) + "\n"


def table14(results: dict) -> str:
    """The MDM with and without CFG, every file; the ARM's likelihood ranks beside the MDM's."""
    lines = ["# Table 14: CFG on the reversal curse (MDM; exact match %, substring / starts-with, word "
             "BLEU), and likelihood ranks", "",
             "| subset | direction | templates | CFG w | exact match (substring) | starts-with | BLEU |",
             "|---|---|---|---|---|---|---|"]
    for entry in results["generations"]:
        if entry["family"] == "mdm":
            lines.append(f"| {entry['subset']} | {entry['direction']} | {entry['templates']} | {entry['cfg_scale']:g} "
                         f"| {100 * entry['substring']:.1f} ± {100 * entry['substring_stderr']:.1f} "
                         f"| {100 * entry['starts_with']:.1f} | {entry['bleu']:.1f} |")
    lines += ["", "| model | subset | direction | templates | top-1 (chance) | mean rank of |",
              "|---|---|---|---|---|---|"]
    for entry in results["ranks"]:
        lines.append(f"| {entry['family'].upper()} | {entry['subset']} | {entry['direction']} | {entry['templates']} "
                     f"| {100 * entry['top1']:.0f}% ± {100 * entry['top1_stderr']:.0f} ({100 * entry['chance_top1']:.0f}%) "
                     f"| {entry['mean_rank']:.2f} / {entry['candidates']} |")
    return "\n".join(lines + ["", _models_line(results)]) + "\n"


def _find(results: dict, family: str, subset: str, direction: str, templates: str, w: float | None,
          kind: str = "generations") -> dict | None:
    """The `kind` entry (generations, or ranks with w None) of one cell."""
    for entry in results[kind]:
        if (entry["family"], entry["subset"], entry["direction"], entry["templates"], entry.get("cfg_scale")) == (
                family, subset, direction, templates, w):
            return entry
    return None


def _models_line(results: dict) -> str:
    return "Models: " + "; ".join(f"{family.upper()} {m['group']} (fine-tuned from {m['base']}, {m['epochs']} "
                                  f"epochs)" for family, m in results["models"].items())


def flat_metrics(results: dict) -> dict[str, float]:
    """Every cell as `family/subset/direction/templates/w<cfg>/<score>`, ranks as `.../rank/<score>`,
    and per family the held-out same and reverse exact match (mean of both subsets, Table 5's CFG
    for the MDM) and the trained-template same direction (the bar)."""
    out: dict[str, float] = {}
    for e in results["generations"]:
        key = f"{e['family']}/{e['subset']}/{e['direction']}/{e['templates']}/w{e['cfg_scale']:g}"
        out.update({f"{key}/{s}": float(e[s]) for s in ("substring", "starts_with", "bleu")})
    for e in results["ranks"]:
        key = f"{e['family']}/{e['subset']}/{e['direction']}/{e['templates']}/rank"
        out.update({f"{key}/{s}": float(e[s]) for s in ("top1", "mean_rank", "chance_top1")})
    w5 = results["config"]["table5_cfg"]
    for family in ("mdm", "arm"):
        w = w5 if family == "mdm" else 0.0
        for name, direction, templates, cfg_w in (("same", "same", "held-out", w), ("reverse", "reverse", "held-out", w),
                                                  ("same_trained", "same", "trained", 0.0)):
            cells = [_find(results, family, s, direction, templates, cfg_w) for s in ("DtN", "NtD")]
            if all(cells):
                out[f"{family}/{name}/exact_match"] = sum(c["substring"] for c in cells) / 2
    return out
