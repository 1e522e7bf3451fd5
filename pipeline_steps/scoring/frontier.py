"""The generate stage's samples, judge scores, frontier reading, Tables 3, 4, 13 and the frontier plot.

A sample set is keyed by what determines its tokens (model, sampler, steps, block, w; the ARM's
cache does not: it is exact), so exact variants share one set and each set is judged once.
Reading of a pair (PAPER.md section 6): among the MDM's settings whose judge perplexity is at most
the ARM's plus its standard error and whose entropy is within `ENTROPY_TOLERANCE` nats of it,
the fastest at batch 1, over the KV-cache ARM's time (the paper: 1/1.4 = 0.71 at 16x compute).
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless stage processes and CI
import matplotlib.pyplot as plt  # noqa: E402

from pipeline_steps.core.files import atomic_write_bytes, atomic_write_text  # noqa: E402
from pipeline_steps.scoring import math_scoring  # noqa: E402

ENTROPY_TOLERANCE = 0.1
"""Nats: an MDM setting at the ARM's quality also matches its samples' unigram entropy this closely."""
REFERENCE = "reference"
"""The sample set of the real continuations."""


def sample_key(setting: dict) -> str:
    if setting["family"] == "arm":
        return f"{setting['model']} arm"
    block = setting["block_length"] or "-"
    return f"{setting['model']} {setting['sampler']} steps={setting['steps']} block={block} w={setting['cfg_scale']:g}"


def decode_samples(settings: list[dict], prompts: list[dict], sp) -> dict[str, list[str]]:
    """Texts of every distinct sample set (generated tokens only, no prompt), and the reference."""
    def text(tokens: list[int]) -> str:
        return sp.decode([t for t in tokens if t < sp.get_piece_size()])

    texts = {REFERENCE: [text(p["reference"]) for p in prompts]}
    for setting in settings:
        setting["key"] = sample_key(setting)
        texts.setdefault(setting["key"], [text(row) for row in setting["tokens"]])
    return texts


def judge_samples(texts: dict[str, list[str]], enabled: bool, batch_size: int) -> dict[str, dict[str, float]]:
    """Per sample set: judge perplexity, its standard error, mean unigram entropy, tokens judged."""
    if not enabled:
        return {}
    from pipeline_steps.scoring.judge import Judge, generative_perplexity  # the `judge` extra

    judge = Judge.load()
    out = {}
    for key, group in texts.items():
        scores = judge.score(group, batch_size=batch_size)
        ppl, se = generative_perplexity(scores)
        out[key] = {"gen_ppl": ppl, "gen_ppl_se": se, "entropy": sum(s.entropy for s in scores) / len(scores),
                    "tokens": sum(s.tokens for s in scores)}
    return out


def pair_readings(cfg, settings: list[dict], judged: dict[str, dict]) -> dict[str, dict]:
    """Per pair: the KV-cache ARM's quality and time, and the MDM's time at that quality."""
    readings = {}
    for name, pair in cfg.pairs.items():
        arm = next(s for s in settings if s["model"] == pair.arm and s.get("kv_cache"))
        arm_plain = next(s for s in settings if s["model"] == pair.arm and s.get("kv_cache") is False)
        mdm = [s for s in settings if s["model"] == pair.mdm]
        reading: dict[str, Any] = {"mdm": pair.mdm, "arm": pair.arm, "arm_seconds_1": arm["seconds_per_sample_1"],
                                   "arm_no_cache_seconds_1": arm_plain["seconds_per_sample_1"],
                                   "match": None, "closest": None}
        q_arm = judged.get(arm["key"])
        if q_arm:
            reading.update(arm_ppl=q_arm["gen_ppl"], arm_ppl_se=q_arm["gen_ppl_se"], arm_entropy=q_arm["entropy"])
            matches = [s for s in mdm if judged[s["key"]]["gen_ppl"] <= q_arm["gen_ppl"] + q_arm["gen_ppl_se"]
                       and abs(judged[s["key"]]["entropy"] - q_arm["entropy"]) <= ENTROPY_TOLERANCE]
            # Where the frontiers come closest: among settings at least as good in perplexity, the
            # smallest entropy gap (a low perplexity bought by repetition is not the ARM's quality);
            # without any, the lowest perplexity.
            good = [s for s in mdm if judged[s["key"]]["gen_ppl"] <= q_arm["gen_ppl"] + q_arm["gen_ppl_se"]]
            closest = (min(good, key=lambda s: abs(judged[s["key"]]["entropy"] - q_arm["entropy"])) if good
                       else min(mdm, key=lambda s: judged[s["key"]]["gen_ppl"]))
            for label, s in (("match", min(matches, key=lambda s: s["seconds_per_sample_1"]) if matches else None),
                             ("closest", closest)):
                if s is not None:
                    reading[label] = {"key": s["key"], "gen_ppl": judged[s["key"]]["gen_ppl"],
                                      "entropy": judged[s["key"]]["entropy"],
                                      "time_ratio_1": s["seconds_per_sample_1"] / arm["seconds_per_sample_1"],
                                      "time_ratio_batch": s["seconds_per_sample_batch"] / arm["seconds_per_sample_batch"]}
        readings[name] = reading
    return readings


# ---------------------------------------------------------------------------------------------
# Tables and the plot.

def _q(judged: dict, key: str) -> str:
    q = judged.get(key)
    return f"{q['gen_ppl']:.1f} ± {q['gen_ppl_se']:.1f} | {q['entropy']:.2f}" if q else "missing (judge off) | missing"


def _math_intro(math: dict | None) -> str:
    if not math or "missing" in math:
        return "Math accuracy (the verifiable column): " + (math or {}).get("missing", "missing (not run)") + "."
    models = ", ".join(f"{m['group']} (from {m['base']})" for m in math["models"].values())
    return ("Math accuracy (the verifiable column, reports/gsm8k): the math-fine-tuned models " + models +
            " on our test split, at the row's sampler, steps per generated token and w ('not run' where "
            "gsm8k.table4_* has no such setting); ± binomial standard error.")


def _math_cell(results: dict, s: dict) -> str:
    math = results.get("math")
    if not math or "missing" in math:
        return "missing"
    if s["family"] == "mdm" and s["block_length"] is not None:
        return "not run (blocks)"
    spt = None if s["family"] == "arm" else s["steps"] / results["config"]["length"]
    cell = math["cells"].get(math_scoring.table4_key(s["family"], s.get("sampler"), spt, s.get("cfg_scale", 0.0)))
    return "not run" if cell is None else f"{100 * cell['accuracy']:.1f} ± {100 * cell['stderr']:.1f}"


def table4(results: dict) -> str:
    judged = results["judged"]
    lines = ["# Table 4: generation quality and time, ARM vs MDM across steps", "",
             "Paper (PAPER.md section 6): an MDM with 16x the ARM's pretraining compute matches it on MT-Bench "
             "while sampling 1.4x faster (A100, batch 1, 128 steps). Here: judge = SmolLM2-135M-Instruct "
             "generative perplexity ± standard error over samples, entropy = mean unigram entropy (nats) of "
             f"the samples' judge tokens; seconds on this machine ({results['config']['device']}, "
             f"{results['config']['threads'] or 'default'} torch threads). The no-cache ARM's rows are whole prefixes. "
             + _math_intro(results.get("math")), "",
             "| model | setting | forward rows / sample | s / sample, batch 1 | s / sample, batch "
             f"{results['config']['batch']} | judge ppl | entropy | math accuracy |", "|---|---|---|---|---|---|---|---|",
             f"| real text | held-out continuations | - | - | - | {_q(judged, REFERENCE)} | - |"]
    for s in results["settings"]:
        what = ("KV cache" if s["kv_cache"] else "no cache") if s["family"] == "arm" else s["key"].split(" ", 1)[1]
        lines.append(f"| {s['model']} ({s['family'].upper()}) | {what} | {s['forward_rows_per_sample']:.0f} | "
                     f"{s['seconds_per_sample_1']:.4f} | {s['seconds_per_sample_batch']:.4f} | "
                     f"{_q(judged, s['key'])} | {_math_cell(results, s)} |")
    lines += ["", "Reading per pair (the MDM's fastest setting within the ARM's standard error of its judge "
              f"perplexity and {ENTROPY_TOLERANCE} nats of its entropy, time over the KV-cache ARM's; the paper: 0.71):", ""]
    for name, r in results["pairs"].items():
        lines.append(f"- {name} ({r['mdm']} vs {r['arm']}): " + reading_line(r))
    return "\n".join(lines) + "\n"


def reading_line(r: dict) -> str:
    if "arm_ppl" not in r:
        return "quality missing (judge off)"
    arm = f"ARM ppl {r['arm_ppl']:.1f} ± {r['arm_ppl_se']:.1f}, entropy {r['arm_entropy']:.2f}"
    if r["match"]:
        m = r["match"]
        return (f"{arm}; the MDM reaches it at `{m['key']}` (ppl {m['gen_ppl']:.1f}, entropy {m['entropy']:.2f}) in "
                f"{m['time_ratio_1']:.2f}x the ARM's time at batch 1 ({m['time_ratio_batch']:.2f}x batched)")
    c = r["closest"]
    return (f"{arm}; no MDM setting reaches it: the frontiers do not cross. Closest: `{c['key']}` at ppl "
            f"{c['gen_ppl']:.1f}, entropy {c['entropy']:.2f} ({c['entropy'] - r['arm_entropy']:+.2f} nats), "
            f"{c['time_ratio_1']:.2f}x the ARM's time at batch 1")


def _row(results: dict, model: str, steps: int, w: float) -> dict | None:
    return next((s for s in results["settings"] if s["model"] == model and s.get("sampler") == "ancestral"
                 and s["steps"] == steps and not s["block_length"] and s["cfg_scale"] == w), None)


def table3(results: dict) -> str:
    cfg, judged = results["config"], results["judged"]
    lines = ["# Table 3: CFG for conditional generation (ancestral, "
             f"{cfg['cfg_steps']} steps)", "",
             "| MDM | guidance | w | judge ppl | entropy |", "|---|---|---|---|---|"]
    for model in sorted({p["mdm"] for p in cfg["pairs"].values()}):
        none = _row(results, model, cfg["cfg_steps"], 0.0)
        lines.append(f"| {model} | none | 0 | " + (_q(judged, none["key"]) if none else
                     f"missing: {cfg['cfg_steps']} is not in ancestral_steps | missing") + " |")
        lines.append(f"| {model} | standard | - | not applicable: a pretrained MDM had no prompt dropout (the "
                     "fine-tuned rows below) | - |")
        for w in cfg["cfg_scales"]:
            row = _row(results, model, cfg["cfg_steps"], w)
            lines.append(f"| {model} | unsupervised | {w:g} | {_q(judged, row['key'])} |")
    finetuned = results.get("finetuned", [])
    if not finetuned:
        lines.append("| fine-tuned (`generate.sft_mdm`, `sft_mdm_cfg`) | none / standard / unsupervised | - | missing: "
                     "no fine-tuned pair named or no finetune folder given | missing |")
    for row in sorted(finetuned, key=lambda r: (r["cfg_scale"] > 0, r["cfg_scale"], r["role"])):
        guidance = ("none" if row["cfg_scale"] == 0 else
                    "standard (prompt dropout in fine-tuning)" if row["role"] == "sft_mdm_cfg" else "unsupervised")
        lines.append(f"| {row['model']} | {guidance} | {row['cfg_scale']:g} | {_q(judged, row['key'])} |")
    return "\n".join(lines) + "\n"


def table13(results: dict) -> str:
    cfg, judged = results["config"], results["judged"]
    steps = cfg["cfg_steps"]
    lines = [f"# Table 13: CFG vs no CFG at equal nominal sampling compute (CFG at {steps} steps: two rows per "
             f"step, as no CFG at {2 * steps} steps)", "",
             "Nominal: the paper's sampler runs every step. Ours skips the rows of steps that revealed nothing "
             "(exact), so the forward rows it actually computed differ and are shown.", "",
             "| MDM | setting | forward rows / sample | s / sample, batch 1 | judge ppl | entropy |",
             "|---|---|---|---|---|---|"]
    for model in sorted({p["mdm"] for p in cfg["pairs"].values()}):
        rows = [(f"no CFG, {2 * steps} steps", _row(results, model, 2 * steps, 0.0))]
        rows += [(f"CFG w = {w:g}, {steps} steps", _row(results, model, steps, w)) for w in cfg["cfg_scales"]]
        for label, row in rows:
            lines.append(f"| {model} | {label} | " + (
                f"{row['forward_rows_per_sample']:.0f} | {row['seconds_per_sample_1']:.4f} | {_q(judged, row['key'])}"
                if row else f"missing: {2 * steps} is not in ancestral_steps | - | - | -") + " |")
    return "\n".join(lines) + "\n"


def frontier_plot(results: dict, path: Path) -> None:
    judged = results["judged"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in results["settings"]:
        q = judged.get(s["key"])
        if q is None:
            continue
        marker = {"arm": "s", "ancestral": "o", "confidence": "^", "first_hitting": "D"}[s.get("sampler", "arm")]
        label = f"{s['model']} " + (("KV cache" if s["kv_cache"] else "no cache") if s["family"] == "arm"
                                    else f"{s['sampler']} {s['steps']}" + (f" w{s['cfg_scale']:g}" if s["cfg_scale"] else ""))
        ax.errorbar(s["seconds_per_sample_1"], q["gen_ppl"], yerr=q["gen_ppl_se"], fmt=marker,
                    color="tab:red" if s["family"] == "arm" else "tab:blue", alpha=0.8)
        ax.annotate(label, (s["seconds_per_sample_1"], q["gen_ppl"]), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
    if REFERENCE in judged:
        ax.axhline(judged[REFERENCE]["gen_ppl"], color="gray", ls=":", label="real text")
        ax.legend(fontsize=7)
    if not judged:
        ax.text(0.5, 0.5, "judge off: no quality axis", ha="center", va="center", transform=ax.transAxes)
    ax.set_xscale("log")
    ax.set_xlabel("seconds per sample, batch 1 (CPU, one thread)")
    ax.set_ylabel("judge perplexity (lower is better)")
    ax.set_title("Speed-quality frontier: MDM (blue) vs ARM (red)", fontsize=10)
    buffer = io.BytesIO()  # render to memory first: a crash mid-render leaves no truncated PNG
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def write_reports(results: dict, texts: dict[str, list[str]], out_dir: Path) -> list[Path]:
    """table3/4/13.md, frontier.png and samples.jsonl in `out_dir`, each written atomically."""
    written = []
    for name, render in (("table3", table3), ("table4", table4), ("table13", table13)):
        atomic_write_text(out_dir / f"{name}.md", render(results))
        written.append(out_dir / f"{name}.md")
    frontier_plot(results, out_dir / "frontier.png")
    atomic_write_text(out_dir / "samples.jsonl", "".join(
        json.dumps({"set": key, "texts": group}) + "\n" for key, group in texts.items()))
    return [*written, out_dir / "frontier.png", out_dir / "samples.jsonl"]


def flat_metrics(results: dict) -> dict[str, float]:
    metrics = {"total/seconds": float(results["seconds"])}
    for key, q in results["judged"].items():
        for field in ("gen_ppl", "gen_ppl_se", "entropy"):
            metrics[f"judge/{key.replace(' ', '_').replace('=', '')}/{field}"] = float(q[field])
    for name, r in results["pairs"].items():
        metrics[f"pair/{name}/arm_seconds_1"] = float(r["arm_seconds_1"])
        if r["match"]:  # absent when the frontiers do not cross (metrics files hold no NaN)
            metrics[f"pair/{name}/time_ratio"] = float(r["match"]["time_ratio_1"])
        if r["closest"]:
            metrics[f"pair/{name}/closest_time_ratio"] = float(r["closest"]["time_ratio_1"])
    return metrics
