"""The report stage: verdicts follow their stated rules, a changed input changes the verdict,
absent results are listed as missing, and the HTML carries its figures inside it."""
import json
import math
from pathlib import Path

import pytest

from pipeline_steps import report
from pipeline_steps.core.tracking import NullTracker
from pipeline_steps.reporting import verdicts as v
from pipeline_steps.reporting.document import RESULTS
from pipeline_steps.reporting.verdicts import Estimate


def test_the_difference_rule_reads_the_standard_errors():
    assert v.difference(Estimate(0.62, 0.03), Estimate(0.0, 0.0), 3)[0] == v.HOLDS  # 20.7 se
    assert v.difference(Estimate(0.0, 0.0), Estimate(0.62, 0.03), 3)[0] == v.FAILS
    assert v.difference(Estimate(0.5, 0.1), Estimate(0.3, 0.1), 3)[0] == v.INCONCLUSIVE  # 1.4 se
    assert v.difference(Estimate(0.5, 0.1), Estimate(0.3, 0.1), 1)[0] == v.HOLDS
    assert v.difference(Estimate(0.0, 0.0), Estimate(0.0, 0.0), 3)[0] == v.INCONCLUSIVE
    assert v.interval(41.0, [31.0, 65.0], 1.0, True, "gap")[0] == v.HOLDS
    assert v.interval(1.2, [1.06, 1.6], 1.0, False, "ratio")[0] == v.FAILS
    assert v.interval(1.2, [0.9, 1.6], 1.0, False, "ratio")[0] == v.INCONCLUSIVE
    p = v.proportion(6, 10)
    assert p.value == 0.6 and p.stderr == pytest.approx(math.sqrt(0.24 / 10))


def reversal_results(mdm_reverse: float, arm_reverse: float = 0.0) -> dict:
    rows = [("mdm", "reverse", "held-out", 0.8, mdm_reverse), ("mdm", "reverse", "held-out", 0.0, mdm_reverse / 2),
            ("mdm", "same", "trained", 0.8, 0.9), ("arm", "reverse", "held-out", 0.0, arm_reverse)]
    generations = [{"family": f, "direction": d, "templates": t, "cfg_scale": w, "subset": s, "n": 40, "substring": p}
                   for f, d, t, w, p in rows for s in ("DtN", "NtD")]
    return {"config": {"table5_cfg": 0.8, "min_same": 0.8}, "generations": generations, "ranks": [], "samples": []}


def write_report(tmp_path: Path, reversal: dict | None, sigmas: float = 3.0) -> dict:
    reports = tmp_path / "reports"
    if reversal is not None:
        (reports / "reversal").mkdir(parents=True, exist_ok=True)
        (reports / "reversal" / "results.json").write_text(json.dumps(reversal))
    metrics = report.run(report.ReportConfig(sigmas=sigmas), reports, tmp_path / "params.yaml", tmp_path / "dvc.lock",
                         reports, NullTracker())
    paper = json.loads((reports / "paper.json").read_text())
    return {"metrics": metrics, "paper": paper, "md": (reports / "paper.md").read_text(),
            "html": (reports / "paper.html").read_text()}


def verdict(paper: dict, result: str, start: str) -> str:
    [claim] = [c for c in paper["claims"] if c["result"] == result and c["claim"].startswith(start)]
    return claim["verdict"]


def test_changing_an_input_changes_the_verdict(tmp_path):
    broken = write_report(tmp_path / "a", reversal_results(mdm_reverse=0.6))
    assert verdict(broken["paper"], "Table 5", "The MDM breaks") == v.HOLDS
    assert "reverse exact match %: MDM (w=0.8) 60.0 ± 5.5, n=80 vs ARM 0.0 ± 0.0, n=80: holds" in broken["md"]
    assert verdict(broken["paper"], "Table 14", "CFG raises") == v.HOLDS  # 60% vs 30% at n=80
    cursed = write_report(tmp_path / "b", reversal_results(mdm_reverse=0.0))
    assert verdict(cursed["paper"], "Table 5", "The MDM breaks") == v.INCONCLUSIVE  # 0 vs 0: nothing to judge
    arm_wins = write_report(tmp_path / "c", reversal_results(mdm_reverse=0.0, arm_reverse=0.5))
    assert verdict(arm_wins["paper"], "Table 5", "The MDM breaks") == v.FAILS
    close = write_report(tmp_path / "d", reversal_results(mdm_reverse=0.1, arm_reverse=0.05))
    assert verdict(close["paper"], "Table 5", "The MDM breaks") == v.INCONCLUSIVE  # 1.2 se at 3
    looser = write_report(tmp_path / "e", reversal_results(mdm_reverse=0.1, arm_reverse=0.05), sigmas=1.0)
    assert verdict(looser["paper"], "Table 5", "The MDM breaks") == v.HOLDS


def test_every_result_is_listed_and_absent_ones_are_missing_with_the_reason(tmp_path):
    out = write_report(tmp_path, None)
    claims = out["paper"]["claims"]
    assert {c["result"] for c in claims} == {r.name for r in RESULTS}  # none left out
    assert {c["verdict"] for c in claims} == {v.MISSING}
    assert out["metrics"]["verdicts/missing"] == len(claims) and out["metrics"]["verdicts/holds"] == 0
    missing = out["md"].split("## Missing results")[1]
    for res in RESULTS:
        for rel in (*res.tables, *res.figures):
            assert f"reports/{rel} not written (stage `{rel.split('/')[0]}` has not run)" in missing
    assert "no results from stage `reversal`" in missing
    assert "not in PAPER.md" in out["md"] and "<table>" in out["html"]


def test_the_html_carries_its_figures_and_tables(tmp_path):
    import matplotlib.pyplot as plt

    reports = tmp_path / "reports"
    (reports / "scaling").mkdir(parents=True)
    plt.figure(figsize=(1, 1))
    plt.savefig(reports / "scaling" / "isoflop_curves.png")
    plt.close()
    out = write_report(tmp_path, reversal_results(0.6))
    assert (reports / "figures" / "scaling_isoflop_curves.png").read_bytes() == \
        (reports / "scaling" / "isoflop_curves.png").read_bytes()
    assert "![Figure 1](figures/scaling_isoflop_curves.png)" in out["md"]
    assert out["html"].count('src="data:image/png;base64,') == 1 and 'src="figures/' not in out["html"]
    separators = [line for line in out["md"].splitlines() if line.startswith("|---")]
    assert out["html"].count("<table>") == len(separators) >= 2  # every Markdown table became one


def scaling_results(mdm_interior: list[bool]) -> dict:
    def family(interior: list[bool], exponent: float) -> dict:
        return {"minima": [{"interior": k} for k in interior], "interval_degenerate": False, "interval_note": None,
                "loss_coefficient": 40.0, "loss_exponent": exponent, "loss_exponent_interval": [exponent - 0.01, exponent + 0.01],
                "size_coefficient": 1.0, "size_exponent": 0.5}
    return {"families": {"arm": family([True, True, True], -0.07), "mdm": family(mdm_interior, -0.06)},
            "compute_gap": 12.0, "compute_gap_interval": [8.0, 20.0],
            "optimal_size_ratio": 0.5, "optimal_size_ratio_interval": [0.3, 0.8]}


def test_the_scaling_verdicts_need_interior_minima():
    from pipeline_steps.reporting.claims import scaling

    measured = {c.claim: c.verdict for c in scaling({"scaling": scaling_results([True, True, True])}, 3.0)}
    assert list(measured.values()) == [v.HOLDS] * 4  # minima inside, gap > 1, ratio < 1, exponents < 0
    edges = scaling({"scaling": scaling_results([False, False, True])}, 3.0)
    assert [c.verdict for c in edges] == [v.INCONCLUSIVE] * 4  # one MDM minimum: its L* and N* are edges
    assert "but MDM: fewer than 2 interior minima" in edges[1].why
    none = scaling({"scaling": scaling_results([False, False, False])}, 3.0)
    assert none[0].verdict == v.FAILS and none[0].ours == "ARM 3 of 3 budgets interior, MDM 0 of 3 budgets interior"
