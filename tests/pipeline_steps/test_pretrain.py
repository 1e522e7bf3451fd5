"""Training runs end to end: in-process through `run()` (seconds), and through the stage CLI
(records, artifacts, kill + resume, DDP, one-line errors)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from model.artifact import load_artifact
from pipeline_steps import pretrain
from pipeline_steps.core.params import load_config
from pipeline_steps.core.profile import render
from pipeline_steps.core.tracking import NullTracker
from pipeline_steps.training.config import PretrainConfig
from tests.conftest import check_golden

ROOT = Path(__file__).resolve().parents[2]
RECORD_KEYS = {"family", "size", "n_params", "flops", "tokens", "steps", "train/loss", "val/loss",
               "val/loss_stderr", "data_hash", "tokenizer_hash", "seconds"}


def write_params(folder: Path, group: dict, **train) -> Path:
    params = render("default", ROOT / "profiles")
    params["pretrain"]["train"].update({"seq_len": 16, "global_batch": 4, "checkpoint_every": 10,
                                        "log_every": 5, "checkpoint_dir": str(folder / "ckpt"),
                                        "threads": 1, **train})
    params["pretrain"]["optim"]["min_warmup_steps"] = 3
    params["pretrain"]["validation"].update({"windows": 8, "mc_samples": 4, "batch_size": 8})
    params["pretrain"]["groups"] = {"g": group}
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def pretrain_cmd(folder: Path, params: Path, data: dict) -> list[str]:
    return [sys.executable, "-m", "pipeline_steps.pretrain", "--group", "g", "--params", str(params),
            "--shards", str(data["shards"]), "--tokenizer", str(data["tokenizer"]),
            "--out", str(folder / "models"), "--runs", str(folder / "runs.jsonl"),
            "--metrics", str(folder / "metrics.json")]


def run_cli(folder, params, data, **kwargs):
    env = {**os.environ, "SMDM_TRACKING": "off", "PYTHONPATH": str(ROOT)}
    return subprocess.run(pretrain_cmd(folder, params, data), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600, **kwargs)


def run_in_process(folder: Path, data: dict, group: dict, **train) -> dict[str, float]:
    cfg = load_config(PretrainConfig, "pretrain", write_params(folder, group, parallel_runs=1, **train))
    return pretrain.run(cfg, "g", data["shards"], data["tokenizer"], folder / "models",
                        folder / "runs.jsonl", NullTracker())


def test_run_in_process_trains_validates_and_records(tiny_data, tmp_path):
    group = {"family": "arm", "kind": "grid", "flops": 1.0e8, "sizes": ["9k", "16k"]}
    metrics = run_in_process(tmp_path, tiny_data, group)
    records = [json.loads(line) for line in open(tmp_path / "runs.jsonl")]
    assert [r["size"] for r in records] == ["9k", "16k"]
    assert metrics == {f"{r['size']}/{k}": r[k] for r in records
                       for k in ("train/loss", "val/loss", "val/loss_stderr")}
    assert all(r["val/loss_stderr"] == 0 and 0 < r["val/loss"] < 7 for r in records)  # ARM: exact NLL
    assert (tmp_path / "models" / "16k" / "model.safetensors").exists()


def test_golden_losses_of_seeded_tiny_runs(tiny_data, tmp_path):
    """Both families' seeded losses on the synthetic fixture, pinned (no network, seconds)."""
    losses = {}
    for family in ("mdm", "arm"):
        folder = tmp_path / family
        folder.mkdir()
        group = {"family": family, "kind": "base", "flops": 4.0e8, "sizes": ["16k"]}  # ~65 steps
        metrics = run_in_process(folder, tiny_data, group)
        losses.update({f"{family}/16k/{key}": metrics[f"16k/{key}"] for key in ("train/loss", "val/loss")})
    check_golden("tiny_pretrain_losses", losses, rel=1e-4)


def test_cli_input_errors_are_one_line(tiny_data, tmp_path):
    group = {"family": "mdm", "kind": "grid", "flops": 6.0e7, "sizes": ["16k"]}
    params = write_params(tmp_path, group)
    command = pretrain_cmd(tmp_path, params, tiny_data)
    env = {**os.environ, "SMDM_TRACKING": "off", "PYTHONPATH": str(ROOT)}
    cases = {"--group": ("nope", "no group 'nope'"), "--shards": (str(tmp_path / "none"), "meta.json")}
    for flag, (value, message) in cases.items():
        argv = list(command)
        argv[argv.index(flag) + 1] = value
        out = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 2 and message in out.stderr, out.stderr[-2000:]
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_group_writes_records_artifacts_and_metrics(tiny_data, tmp_path):
    group = {"family": "mdm", "kind": "grid", "flops": 6.0e7, "sizes": ["16k", "33k"]}
    out = run_cli(tmp_path, write_params(tmp_path, group), tiny_data)
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads(line) for line in open(tmp_path / "runs.jsonl")]
    assert [r["size"] for r in records] == ["16k", "33k"]
    for r in records:
        assert RECORD_KEYS <= set(r)
        assert r["flops"] == pytest.approx(6 * r["n_params"] * r["tokens"])
        assert r["tokens"] == r["steps"] * 4 * 16 and r["val/loss_stderr"] > 0
    model, config = load_artifact(tmp_path / "models" / "16k")
    assert config["family"] == "mdm" and config["mask_id"] == config["vocab_size"] == 320
    assert model.count_non_embedding_params() == records[0]["n_params"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["33k/val/loss"] == records[1]["val/loss"]
    assert not list((tmp_path / "ckpt").glob("*/last.ckpt"))  # resume checkpoints cleaned up


def wait_for_checkpoint(folder: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        ckpts = list(folder.glob("ckpt/*/last.ckpt"))
        if ckpts and ckpts[0].stat().st_size > 0:  # Lightning writes it atomically
            return
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared before the run ended")


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(tiny_data, tmp_path):
    # ~190 steps: long enough that the kill lands mid-run even on an idle machine; stochastic
    # length, so that the tokens trained on (counted per step) must survive the resume too
    group = {"family": "mdm", "kind": "base", "flops": 1.2e9, "sizes": ["16k"], "stochastic_length_ratio": 0.25}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    for folder in (straight, killed):
        folder.mkdir()
    assert run_cli(straight, write_params(straight, group), tiny_data).returncode == 0

    params = write_params(killed, group)
    env = {**os.environ, "SMDM_TRACKING": "off", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(pretrain_cmd(killed, params, tiny_data), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_checkpoint(killed, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "runs.jsonl").exists()
    resumed = run_cli(killed, params, tiny_data)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    record = json.loads((killed / "runs.jsonl").read_text())
    assert record["resumed"] is True
    assert record["tokens"] == json.loads((straight / "runs.jsonl").read_text())["tokens"] < record["steps"] * 4 * 16
    a = load_file(straight / "models" / "16k" / "model.safetensors")
    b = load_file(killed / "models" / "16k" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


@pytest.mark.slow
def test_two_ranks_match_one_rank_with_the_whole_batch(tiny_data, tmp_path):
    group = {"family": "mdm", "kind": "base", "flops": 8.0e7, "sizes": ["16k"]}  # 6 steps (>= MIN_STEPS)
    one, two = tmp_path / "one", tmp_path / "two"
    for folder in (one, two):
        folder.mkdir()
    assert run_cli(one, write_params(one, group, global_batch=8), tiny_data).returncode == 0
    params = write_params(two, group, global_batch=8, devices=2, strategy="ddp", parallel_runs=1)
    out = run_cli(two, params, tiny_data)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "MEMBER: 2/2" in out.stdout + out.stderr  # really two processes
    r1 = json.loads((one / "runs.jsonl").read_text())
    r2 = json.loads((two / "runs.jsonl").read_text())
    assert r1["steps"] == r2["steps"] and r1["val/loss"] == pytest.approx(r2["val/loss"], rel=1e-4)
    a = load_file(one / "models" / "16k" / "model.safetensors")
    b = load_file(two / "models" / "16k" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_parallel_runs_match_sequential_runs(tiny_data, tmp_path):
    group = {"family": "arm", "kind": "grid", "flops": 6.0e7, "sizes": ["16k", "33k", "9k"]}
    results = {}
    for parallel in (1, 2):
        folder = tmp_path / f"parallel{parallel}"
        folder.mkdir()
        out = run_cli(folder, write_params(folder, group, parallel_runs=parallel), tiny_data)
        assert out.returncode == 0, out.stderr[-3000:]
        results[parallel] = [json.loads(line) for line in open(folder / "runs.jsonl")]
    assert [r["size"] for r in results[2]] == ["16k", "33k", "9k"]  # the group's order, not finish order
    for one, two in zip(results[1], results[2]):
        assert two["val/loss"] == one["val/loss"] and two["train/loss"] == one["train/loss"]
