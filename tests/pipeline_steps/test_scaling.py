"""The `scaling` stage end to end: records in, scaling.json + figures out, and its errors."""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from pipeline_steps import scaling
from pipeline_steps.core.params import ParamsError
from pipeline_steps.core.tracking import NullTracker
from tests.cli_errors import cli, one_line_error
from tests.pipeline_steps.analysis.test_isoflop_fit import (
    BUDGETS,
    SIGMA,
    SIZE_EXPONENT,
    chinchilla_loss,
    true_n_opt,
)

FAST = scaling.ScalingConfig(bootstrap=100, seed=0)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_records(families=("arm", "mdm"), budgets=BUDGETS, sizes=5, seed=0, dag_keys=False,
                 grid=(-1.4, 1.4)) -> list[dict]:
    """Runs of a Chinchilla-like grid; the MDM behaves at C like the ARM at C / 16. Realised
    flops wobble by up to 1% around the budget, as integer step counts make them.

    No irreducible loss, so L*(C) is an exact power law and the true gap is 16 (with E = 1.7
    the pure power law the paper fits bends away from L*(C) and the gap comes out ~12)."""
    rng = np.random.default_rng(seed)
    records = []
    for family in families:
        factor = 16.0 if family == "mdm" else 1.0
        for budget in budgets:
            n = np.round(true_n_opt(budget / factor) * np.exp(np.linspace(*grid, sizes)))
            loss = chinchilla_loss(n, budget / factor) + rng.normal(0, SIGMA, sizes)
            for size, value in zip(n, loss):
                record = {"family": family, "n_params": int(size),
                          "flops": budget * (1 + rng.uniform(-0.01, 0.01)),
                          "data_hash": "d0", "tokenizer_hash": "t0"}
                keys = ("val/loss", "val/loss_stderr") if dag_keys else ("loss", "loss_stderr")
                record.update({keys[0]: float(value), keys[1]: SIGMA})
                records.append(record)
    return records


@pytest.fixture
def no_figures(monkeypatch):
    """Rendering costs ~1.5 s a run on 2 cores: only the end-to-end test draws for real."""
    from pipeline_steps.analysis import scaling_figures

    def placeholder(*args) -> None:
        Path(args[-1]).parent.mkdir(parents=True, exist_ok=True)
        Path(args[-1]).write_bytes(PNG_MAGIC)

    monkeypatch.setattr(scaling_figures, "plot_isoflop_curves", placeholder)
    monkeypatch.setattr(scaling_figures, "plot_scaling_laws", placeholder)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def run_stage(tmp_path: Path, records: list[dict], cfg=FAST, **kwargs) -> tuple[dict, dict]:
    runs = write_jsonl(tmp_path / "runs.jsonl", records)
    metrics = scaling.run(cfg, runs, tmp_path / "out", NullTracker(), **kwargs)
    return metrics, json.loads((tmp_path / "out" / "scaling.json").read_text())


def run_warned(tmp_path: Path, records: list[dict], cfg=FAST) -> tuple[dict, list[str]]:
    """Run the stage and return scaling.json with the messages of every ScalingWarning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, result = run_stage(tmp_path, records, cfg)
    messages = [str(w.message) for w in caught if issubclass(w.category, scaling.ScalingWarning)]
    assert messages == result["warnings"]  # every warning is also recorded in the output
    return result, messages


def test_run_writes_scaling_json_figures_and_metrics(tmp_path):
    tracker = NullTracker()
    runs = write_jsonl(tmp_path / "runs.jsonl", make_records())
    metrics = scaling.run(FAST, runs, tmp_path / "out", tracker, metrics_path=tmp_path / "m.json")
    result = json.loads((tmp_path / "out" / "scaling.json").read_text())
    assert result == json.loads((tmp_path / "m.json").read_text())
    assert set(result["families"]) == {"arm", "mdm"}
    for family, summary in result["families"].items():
        lo, hi = summary["size_exponent_interval"]
        assert lo <= SIZE_EXPONENT <= hi, family
        assert summary["loss_exponent"] < 0 and summary["loss_coefficient"] > 0
        assert len(summary["minima"]) == 5 and all(m["interior"] for m in summary["minima"])
        assert summary["minima"][0]["budget"] == pytest.approx(6e18, rel=0.02)
        assert len(summary["minima"][0]["sizes"]) == 5
    lo, hi = result["compute_gap_interval"]
    assert lo <= 16.0 <= hi and lo <= result["compute_gap"] <= hi
    assert len(result["compute_gap_per_budget"]) == 5
    assert result["optimal_size_ratio"] == pytest.approx(16.0 ** -SIZE_EXPONENT, rel=0.1)
    assert result["optimal_size_ratio_compute"] == pytest.approx(np.exp(np.log(BUDGETS).mean()), rel=0.02)
    assert result["data_hash"] == "d0" and result["warnings"] == []
    assert metrics["compute_gap"] == result["compute_gap"]
    assert metrics["mdm/size_exponent"] == result["families"]["mdm"]["size_exponent"]
    assert {"arm/loss_exponent", "optimal_size_ratio", "compute_gap_lo"} <= set(metrics)
    for name in scaling.FIGURES:
        assert (tmp_path / "out" / name).read_bytes().startswith(PNG_MAGIC)
    assert {p.name for p in tracker.artifacts} == {*scaling.FIGURES, "scaling.json"}
    assert tracker.metrics == [(metrics, None)] and tracker.params["bootstrap"] == 100


def test_folder_of_dag_records_gives_the_same_fit(tmp_path, no_figures):
    records = make_records(dag_keys=True)
    folder = tmp_path / "runs"
    for i, record in enumerate(records[:20]):  # one .json record per run folder
        (folder / f"run{i}").mkdir(parents=True)
        (folder / f"run{i}" / "record.json").write_text(json.dumps(record))
    write_jsonl(folder / "rest.jsonl", records[20:])
    (folder / ".dvc").mkdir()
    (folder / ".dvc" / "state.json").write_text("{}")  # hidden tool state is not a record
    scaling.run(FAST, folder, tmp_path / "a", NullTracker())
    _, plain = run_stage(tmp_path, make_records())
    from_folder = json.loads((tmp_path / "a" / "scaling.json").read_text())
    assert from_folder["compute_gap"] == pytest.approx(plain["compute_gap"], rel=1e-9)


def test_declared_budget_field_wins_over_flops(tmp_path, no_figures):
    records = make_records(families=("arm",))
    for r in records:  # half the runs 10% off: closeness alone would split every budget
        r["budget"] = min(BUDGETS, key=lambda b: abs(np.log(r["flops"] / b)))
        r["flops"] *= 1.1 if r["n_params"] % 2 else 1.0
    result, _ = run_warned(tmp_path, records)
    assert [m["budget"] for m in result["families"]["arm"]["minima"]] == list(BUDGETS)


def test_one_family_fits_alone_without_a_gap(tmp_path, no_figures):
    result, messages = run_warned(tmp_path, make_records(families=("mdm",)))
    assert messages == ["only ['mdm'] runs: no compute gap or optimal-size ratio"]
    metrics = scaling.flat_metrics(result)
    assert result["compute_gap"] is None and result["optimal_size_ratio"] is None
    assert result["families"]["mdm"]["size_exponent"] is not None
    assert "compute_gap" not in metrics and "mdm/size_exponent" in metrics


def test_two_budgets_fit_with_a_degenerate_interval(tmp_path, no_figures):
    result, messages = run_warned(tmp_path, make_records(budgets=BUDGETS[:2]))
    assert [m.split(":")[0] for m in messages] == ["arm", "mdm"] and "two budgets" in messages[0]
    summary = result["families"]["arm"]
    assert summary["interval_degenerate"] and "exactly through both" in summary["interval_note"]
    assert summary["loss_exponent"] is not None and result["compute_gap"] is not None


def test_one_budget_skips_power_laws(tmp_path, no_figures):
    result, messages = run_warned(tmp_path, make_records(budgets=BUDGETS[:1]))
    assert "arm: only one budget" in messages[0] and "no compute gap" in messages[-1]
    assert result["families"]["arm"]["loss_exponent"] is None
    assert result["families"]["arm"]["minima"][0]["interior"]
    assert result["compute_gap"] is None


def test_edge_minimum_warns_with_budget_and_side_and_fails_when_strict(tmp_path, no_figures):
    records = make_records(grid=(-4.0, -1.5))  # every size far below N*
    result, messages = run_warned(tmp_path, records)
    assert len(messages) == 10  # one per curve, each naming its family, budget and side
    assert re.match(r"arm: budget 6(\.\d+)?e\+18 FLOPs has no interior minimum .*add larger sizes$",
                    messages[0])
    assert not any(m["interior"] for m in result["families"]["arm"]["minima"])
    assert result["families"]["arm"]["minima"][0]["add_sizes"] == "larger"
    with pytest.raises(scaling.NoInteriorMinimumError, match=r"arm: budget 6(\.\d+)?e\+18"):
        run_stage(tmp_path, records, cfg=scaling.ScalingConfig(bootstrap=10, strict=True))


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda rs: rs[0].pop("flops"), r"runs.jsonl:1: missing field\(s\) \['flops'\]"),
        (lambda rs: rs[2].update(family="gpt"), r"runs.jsonl:3: unknown family 'gpt'"),
        (lambda rs: rs[1].update(loss="low"), r"runs.jsonl:2: field 'loss' must be a number"),
        (lambda rs: rs[1].update(n_params=-5), r"runs.jsonl:2: field 'n_params' must be"),
        (lambda rs: rs[-1].update(data_hash="other"), r"data_hash differs .*mdm: \['d0', 'other'\]"),
        (lambda rs: [r.update(tokenizer_hash="t1") for r in rs if r["family"] == "mdm"],
         r"tokenizer_hash differs .*arm: \['t0'\]; mdm: \['t1'\]"),
        (lambda rs: rs.__delitem__(slice(2, 5)), r"arm: budget [56]\.?\d*e\+18 FLOPs has 2 distinct size"),
        (lambda rs: rs.append(dict(rs[3], loss=rs[3]["loss"] + 0.01)),
         r"runs.jsonl:4 and .*runs.jsonl:51 are both the arm run of N=\d+ at budget .*expected one record"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, no_figures, edit, match):
    records = make_records()
    edit(records)
    with pytest.raises(scaling.ScalingInputError, match=match):
        run_stage(tmp_path, records)


@pytest.mark.slow
def test_a_record_copied_into_a_second_file_is_refused_in_one_line(tmp_path):
    records = make_records()
    (tmp_path / "runs").mkdir()
    write_jsonl(tmp_path / "runs" / "grid.jsonl", records)
    write_jsonl(tmp_path / "runs" / "stale.jsonl", records[:1])
    out = cli(["-m", "pipeline_steps.scaling", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")],
              tmp_path)
    one_line_error(out, "grid.jsonl:1 and", "stale.jsonl:1", "expected one record per family, size and budget")
    assert not (tmp_path / "out").exists()


def test_invalid_json_and_missing_path_name_the_place(tmp_path):
    good = json.dumps(make_records()[0])
    (tmp_path / "runs.jsonl").write_text(f"{good}\n\n{{oops\n")
    with pytest.raises(scaling.ScalingInputError, match=r"runs.jsonl:3: not valid JSON"):
        scaling.read_runs(tmp_path / "runs.jsonl")
    with pytest.raises(scaling.ScalingInputError, match="no such runs file"):
        scaling.read_runs(tmp_path / "absent.jsonl")
    with pytest.raises(ValueError, match="confidence"):
        scaling.ScalingConfig(confidence=1.5)


def test_cli_reads_params_and_flags_override(tmp_path, no_figures, monkeypatch, capsys):
    monkeypatch.setenv("SMDM_TRACKING", "off")
    runs = write_jsonl(tmp_path / "runs.jsonl", make_records(grid=(-4.0, -1.5)))
    params = tmp_path / "params.yaml"
    params.write_text("scaling:\n  bootstrap: 50\n  seed: 3\n  confidence: 0.9\n  strict: true\n")
    out, metrics = tmp_path / "out", tmp_path / "metrics" / "scaling.json"
    assert scaling.main(["--runs", str(runs), "--out", str(out), "--params", str(params)]) == 2
    assert "no interior minimum" in capsys.readouterr().err
    argv = ["--runs", str(runs), "--out", str(out), "--params", str(params), "--no-strict",
            "--bootstrap", "20", "--metrics", str(metrics)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scaling.ScalingWarning)  # the edge warnings: tested above
        scaling.main(argv)
    result = json.loads(metrics.read_text())
    assert len(result["warnings"]) == 10 and result == json.loads((out / "scaling.json").read_text())
    config = result["config"]
    assert config == {"bootstrap": 20, "seed": 3, "confidence": 0.9, "strict": False,
                      "budget_tolerance": 0.05}
    assert "compute_gap =" in capsys.readouterr().out
    params.write_text("scaling:\n  bootstrapp: 50\n")
    assert scaling.main(["--runs", str(runs), "--out", str(out), "--params", str(params)]) == 2
    assert "unknown key" in capsys.readouterr().err


def test_params_section_builds_the_config_strictly():
    from pipeline_steps.core.params import build_config

    cfg = build_config(scaling.ScalingConfig, {"bootstrap": 200, "strict": True}, "scaling")
    assert cfg == scaling.ScalingConfig(bootstrap=200, strict=True)
    with pytest.raises(ParamsError, match="bootstrap must be >= 1"):
        build_config(scaling.ScalingConfig, {"bootstrap": 0}, "scaling")
