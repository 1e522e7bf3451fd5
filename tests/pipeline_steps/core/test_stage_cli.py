"""The shared stage CLI: params section in, metrics out; an input error is one line and exit 2."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from pipeline_steps.core.errors import InputError, one_line
from pipeline_steps.core.files import finite_json
from pipeline_steps.core.stage_cli import guarded, run_stage


@pytest.fixture(autouse=True)
def no_tracking(monkeypatch):
    monkeypatch.setenv("SMDM_TRACKING", "off")  # a session fixture may have turned it on


@dataclass(frozen=True)
class ToyConfig:
    """A stage's config: one checked value."""

    steps: int = 3
    """Must be positive."""

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


def toy_run(cfg: ToyConfig, args, tracker) -> dict[str, float]:
    if args.data == "missing":
        raise FileNotFoundError(2, "No such file or directory", "data/missing.jsonl")
    if args.data == "bug":
        raise KeyError("a bug keeps its traceback")
    tracker.log_metrics({"steps": float(cfg.steps)})
    return {"steps": float(cfg.steps)}


def main(tmp_path, steps: int | str, data: str = "ok", *extra: str) -> int:
    params = tmp_path / "params.yaml"
    params.write_text(f"toy:\n  steps: {steps}\n")
    return run_stage("toy", "A toy stage.", ToyConfig, {"--data": ("ok", "input")}, toy_run,
                     ["--params", str(params), "--data", data, "--metrics", str(tmp_path / "m.json"),
                      *extra], summary=lambda m: f"steps={m['steps']:.0f}")


def test_a_good_run_writes_its_metrics_and_summary(tmp_path, capsys):
    assert main(tmp_path, 5) == 0
    assert json.loads((tmp_path / "m.json").read_text()) == {"steps": 5.0}
    assert capsys.readouterr().out.strip() == "steps=5"


@pytest.mark.parametrize("steps, data, needle", [
    (0, "ok", "toy: steps must be >= 1, got 0"),
    ("many", "ok", "toy.steps: expected an integer, got 'many'"),
    (5, "missing", "data/missing.jsonl: No such file or directory"),
])
def test_input_errors_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, steps, data, needle):
    assert main(tmp_path, steps, data) == 2
    err = capsys.readouterr().err
    assert err == f"pipeline_steps.toy: {err.split(': ', 1)[1]}" and needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "m.json").exists()


def test_debug_shows_the_input_error_and_bugs_always_raise(tmp_path):
    with pytest.raises(InputError, match="steps must be"):
        main(tmp_path, 0, "ok", "--debug")
    with pytest.raises(KeyError):
        main(tmp_path, 5, "bug")


def test_guarded_collapses_a_multi_line_message(capsys):
    def fail() -> None:
        raise InputError("`npm pack x` failed:\n  npm ERR! 404\n\n  not found")

    assert guarded("smdm-x", fail) == 2
    assert capsys.readouterr().err == "smdm-x: `npm pack x` failed: npm ERR! 404 not found\n"
    assert one_line(FileNotFoundError(2, "No such file", "a.txt")) == "a.txt: No such file"


def test_finite_json_turns_nan_and_inf_into_null_at_any_depth():
    value = {"a": float("nan"), "b": [1.0, float("inf"), {"c": -float("inf")}], "d": (2.0, "x")}
    assert finite_json(value) == {"a": None, "b": [1.0, None, {"c": None}], "d": [2.0, "x"]}
    assert json.dumps(finite_json(value), allow_nan=False)
