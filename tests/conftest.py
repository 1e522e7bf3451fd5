"""Shared fixtures: a tiny synthetic corpus, a tokenizer trained on it and its shards."""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("SMDM_TRACKING", "off")  # stages in tests use NullTracker unless a test opts in
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402

# Tiny models on 2 shared cores: extra intra-op threads only add contention.
torch.set_num_threads(1)

WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at "
         "which but have an they you were her she there one all we their house river light").split()


def write_corpus(folder: Path, n_train: int = 120, n_val: int = 20, seed: int = 0) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        with open(folder / f"{split}.jsonl", "w") as handle:
            for i in range(n):
                lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 15))) + "." for _ in range(8)]
                row = {"id": f"{split}-{i}", "source": "synthetic", "year": 2000, "text": "\n".join(lines)}
                handle.write(json.dumps(row) + "\n")
    return folder


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    """data/corpus, data/tokenizer and data/shards for a synthetic corpus (session-shared, read-only)."""
    from pipeline_steps import shards, tokenizer
    from pipeline_steps.core.tracking import NullTracker

    root = tmp_path_factory.mktemp("tiny_data")
    corpus = write_corpus(root / "corpus")
    tokenizer.run(tokenizer.TokenizerConfig(vocab_size=320), corpus, root / "tokenizer", NullTracker())
    shards.run(shards.ShardsConfig(shard_tokens=5000, workers=2), corpus, root / "tokenizer",
               root / "shards", NullTracker())
    return {"corpus": corpus, "tokenizer": root / "tokenizer", "shards": root / "shards", "root": root}


@pytest.fixture(scope="session")
def toy_template(tmp_path_factory) -> Path:
    """A toy DVC + git project (tests/flows/toy_repo.py), built once per session."""
    from tests.flows.toy_repo import make_repo

    return make_repo(tmp_path_factory.mktemp("template") / "toy")


@pytest.fixture
def toy_repo(toy_template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the toy project (copying beats `git init` + `dvc init` by ~2 s)."""
    return Path(shutil.copytree(toy_template, tmp_path / "toy", symlinks=True)).resolve()


GOLDEN = Path(__file__).parent / "golden"
UPDATE_GOLDEN = os.environ.get("SMDM_UPDATE_GOLDEN") == "1"
"""Regenerate every golden file: `SMDM_UPDATE_GOLDEN=1 python -m pytest -m "" tests -k golden`."""


def check_golden(name: str, losses: dict[str, float], rel: float) -> None:
    """Seeded losses equal tests/golden/<name>.json within `rel` (float noise across CPUs only).

    A change of numbers is a deliberate act: rerun with SMDM_UPDATE_GOLDEN=1 and commit the new
    file on its own, stating the old and new losses."""
    path = GOLDEN / f"{name}.json"
    if UPDATE_GOLDEN:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(json.dumps(losses, indent=2, sort_keys=True) + "\n")
        return
    assert path.exists(), f"{path}: no golden losses; write them with SMDM_UPDATE_GOLDEN=1"
    golden = json.loads(path.read_text())
    assert sorted(losses) == sorted(golden), f"{path}: other runs than the golden ones"
    moved = {k: (golden[k], v) for k, v in losses.items() if abs(v - golden[k]) > rel * abs(golden[k])}
    assert not moved, f"{path}: losses moved (golden, now): {moved}"


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Path:
    """Screenshots and the like: $SMDM_TEST_ARTIFACTS (CI keeps it), else a temporary folder."""
    folder = Path(os.environ.get("SMDM_TEST_ARTIFACTS") or tmp_path_factory.mktemp("artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1000")


@pytest.fixture
def browser():
    """Headless Debian Chromium through selenium (skipped where chromium is absent)."""
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: apt-get install -y chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))  # no driver download
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
