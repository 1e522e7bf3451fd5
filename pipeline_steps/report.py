"""Stage `report`: the paper regenerated. Every table and figure of PAPER.md section 10 that the
other stages wrote, beside PAPER.md's values, with a verdict per claim by a stated rule (holds /
fails / inconclusive at this n, or missing with the reason), provenance (profile, git commit,
each stage's data hashes from dvc.lock and its MLflow run) and sample generations.

    reports/paper.md, reports/paper.html (self-contained), reports/paper.json (the claims),
    reports/figures/*.png

The stage's MLflow run and the pipeline's parent run both get the report as artifacts.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline_steps.core.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from pipeline_steps.core.profile import profile_of
from pipeline_steps.core.run_tracking import git_state
from pipeline_steps.core.stage_cli import run_stage
from pipeline_steps.core.tracking import Tracker
from pipeline_steps.reporting import document
from pipeline_steps.reporting.html import render_html
from pipeline_steps.reporting.verdicts import VERDICTS

CODE_DEPS = ("pipeline_steps", "model")
"""dvc.lock deps that are code, not data: left out of a stage's data hashes."""


@dataclass(frozen=True)
class ReportConfig:
    """The `report` section of params.yaml."""

    sigmas: float = 3.0
    """Standard errors a difference must exceed before a verdict reads holds or fails."""
    samples: int = 3
    """Sample generations shown per family and result."""
    mlflow_ui: str = "http://127.0.0.1:5000"
    """The MLflow UI that run links point to when the tracking store is a local database."""

    def __post_init__(self) -> None:
        if self.sigmas <= 0:
            raise ValueError(f"sigmas must be > 0, got {self.sigmas}")
        if self.samples < 0:
            raise ValueError(f"samples must be >= 0, got {self.samples}")


def data_hashes(lock: Path) -> dict[str, str]:
    """Per stage, its data inputs and their DVC hashes (first 8 hex digits), from dvc.lock."""
    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    out = {}
    for name, entry in stages.items():
        deps = [d for d in entry.get("deps", []) if not str(d["path"]).startswith(CODE_DEPS)]
        out[name] = ", ".join(f"{d['path']} {str(d.get('md5', '?'))[:8]}" for d in deps) or "no data inputs"
    return out


def changed_files(root: Path) -> str:
    """Tracked files that differ from the commit (a fresh run's dvc.lock is one): named, so that a
    reader can tell a new lock file from changed code."""
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                         text=True).stdout
    return ", ".join(line[3:] for line in out.splitlines())


def provenance(params: Path, lock: Path, runs: dict[str, str] | None) -> dict[str, Any]:
    root = params.resolve().parent
    return {"profile": profile_of(params), **git_state(root), "changed": changed_files(root),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "data": data_hashes(lock), "runs": runs or {}}


def run(cfg: ReportConfig, reports_dir: str | Path, params: str | Path, lock: str | Path, out_dir: str | Path,
        tracker: Tracker, runs: dict[str, str] | None = None) -> dict[str, float]:
    """Write the report from the stage outputs under `reports_dir`; metrics: verdict counts."""
    reports, out = Path(reports_dir), Path(out_dir)
    results = document.load_results(reports)
    info = provenance(Path(params), Path(lock), runs)
    markdown, pairs, missing = document.render(results, reports, "figures", info, cfg.sigmas, cfg.samples)
    for res in document.RESULTS:
        for rel in res.figures:
            if (reports / rel).is_file():
                atomic_write_bytes(out / "figures" / rel.replace("/", "_"), (reports / rel).read_bytes())
    atomic_write_text(out / "paper.md", markdown)
    atomic_write_text(out / "paper.html", render_html(markdown, out, "smdm: the paper, regenerated"))
    claims = [{"result": res.name, **dataclasses.asdict(claim)} for res, claim in pairs]
    atomic_write_json(out / "paper.json", {"provenance": info, "sigmas": cfg.sigmas, "claims": claims,
                                           "missing": missing,
                                           "digest": hashlib.sha256(markdown.encode()).hexdigest()})
    for name in ("paper.md", "paper.html", "paper.json"):
        tracker.log_artifact(out / name, "report")
    metrics = {f"verdicts/{v}": float(sum(c["verdict"] == v for c in claims)) for v in VERDICTS}
    return {**metrics, "claims": float(len(claims)), "missing_items": float(len(missing))}


def main(argv: list[str] | None = None) -> int:
    def run_cli(cfg: ReportConfig, args, tracker: Tracker) -> dict[str, float]:
        from pipeline_steps.core import run_tracking

        links = run_tracking.stage_run_links(cfg.mlflow_ui) if run_tracking.tracking_enabled() else None
        metrics = run(cfg, args.reports, args.params, args.lock, args.out, tracker, links)
        parent = run_tracking.parent_tracker(tracker)
        if parent is not None:  # the pipeline's own run carries the report too
            for name in ("paper.md", "paper.html", "paper.json"):
                parent.log_artifact(Path(args.out) / name, "report")
        return metrics

    return run_stage("report", __doc__, ReportConfig, {
        "--reports": ("reports", "the stages' report folders"),
        "--lock": ("dvc.lock", "DVC's lock file (the stages' data hashes)"),
        "--out": ("reports", "where paper.md, paper.html, paper.json and figures/ go")}, run_cli, argv,
        lambda m: "report: reports/paper.md and reports/paper.html; verdicts: "
                  + ", ".join(f"{int(m[f'verdicts/{v}'])} {v}" for v in VERDICTS))


if __name__ == "__main__":
    raise SystemExit(main())
