"""Bad inputs of the data stages (corpus, tokenizer, shards, tasks) and of task items end as one
line naming the file, line, field or value; the tokenizer trains to the same bytes every time."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

# Local files go through `datasets` streaming; nothing here may reach a hub.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeline_steps import tokenizer  # noqa: E402
from pipeline_steps.core.errors import InputError  # noqa: E402
from pipeline_steps.core.tracking import NullTracker  # noqa: E402
from pipeline_steps.data.corpus_rows import read_rows  # noqa: E402
from pipeline_steps.data.task_sources import in_domain, race  # noqa: E402
from pipeline_steps.data.task_sources.items import read_items, read_jsonl  # noqa: E402
from tests.cli_errors import cli, one_line_error  # noqa: E402
from tests.conftest import write_corpus  # noqa: E402

QUIET = {"TQDM_DISABLE": "1"}  # progress bars are not errors; the one line is what is checked


def params(folder: Path, section: str, **values) -> str:
    path = folder / f"{section}.yaml"
    path.write_text(yaml.safe_dump({section: values}))
    return str(path)


def replace_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[number - 1] = text + "\n"
    path.write_text("".join(lines))


# ---------------------------------------------------------------- corpus rows


@pytest.mark.parametrize("line, says", [
    ('{"id": "x", "text": "cut off', "not valid JSON (column 21: Unterminated string"),
    ('["a list"]', "a JSON list, not an object"),
    ('{"id": "x", "source": "s"}', "no field 'text' (fields: ['id', 'source'])"),
    ('{"id": "x", "text": 5}', '"text" has type int, not str'),
])
def test_a_bad_corpus_row_names_file_and_line(tmp_path, line, says):
    corpus = write_corpus(tmp_path / "corpus", n_train=5, n_val=3)
    replace_line(corpus / "train.jsonl", 4, line)
    with pytest.raises(InputError) as err:
        list(read_rows(corpus / "train.jsonl"))
    assert str(err.value).startswith(f"{corpus / 'train.jsonl'}:4: {says}")
    assert 'expected one JSON object per line, {"id", "source", "year", "text"}' in str(err.value)


def test_corpus_rows_skip_blank_lines_and_name_bad_utf8(tmp_path):
    path = tmp_path / "val.jsonl"
    path.write_bytes(b'{"id": "a", "text": "one"}\n\n{"id": "b", "text": "two"}\n\xc3\x28 caf\xe9\n')
    with pytest.raises(InputError, match=r"val\.jsonl:4: not valid JSON \('utf-8' codec can't decode"):
        list(read_rows(path))
    path.write_bytes(b'{"id": "a", "text": "one"}\n\n{"id": "b", "text": "two"}\n')
    assert [r["id"] for r in read_rows(path, ("id", "text"))] == ["a", "b"]


def test_in_domain_readers_name_the_bad_row(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", n_train=3, n_val=3)
    replace_line(corpus / "val.jsonl", 2, '{"source": "s", "text": "no id here."}')
    with pytest.raises(InputError, match=r"val\.jsonl:2: no field 'id'"):
        in_domain.read_val_documents(corpus / "val.jsonl")
    replace_line(corpus / "train.jsonl", 3, "{")
    with pytest.raises(InputError, match=r"train\.jsonl:3: not valid JSON"):
        in_domain.train_sentence_keys(corpus / "train.jsonl")


def test_tokenizer_and_shards_clis_name_the_bad_corpus_line(tiny_data, tmp_path):
    corpus = Path(shutil.copytree(tiny_data["corpus"], tmp_path / "corpus"))
    replace_line(corpus / "train.jsonl", 3, '{"id": "x", "text": "cut off')
    out = cli(["-m", "pipeline_steps.tokenizer", "--params", params(tmp_path, "tokenizer", vocab_size=320),
               "--corpus", str(corpus), "--out", str(tmp_path / "tok"), "--metrics", str(tmp_path / "m.json")],
              tmp_path)
    one_line_error(out, f"{corpus / 'train.jsonl'}:3: not valid JSON")
    assert not (tmp_path / "tok").exists() and not (tmp_path / ".tok.staging").exists()
    # shards reads both splits; here val line 2 lacks "text" (train is fine again)
    shutil.copy(tiny_data["corpus"] / "train.jsonl", corpus / "train.jsonl")
    replace_line(corpus / "val.jsonl", 2, '{"id": "val-1", "body": "words"}')
    out = cli(["-m", "pipeline_steps.shards", "--params", params(tmp_path, "shards", workers=1),
               "--corpus", str(corpus), "--tokenizer", str(tiny_data["tokenizer"]),
               "--out", str(tmp_path / "shards"), "--metrics", str(tmp_path / "m.json")], tmp_path, **QUIET)
    one_line_error(out, f"{corpus / 'val.jsonl'}:2: no field 'text' (fields: ['body', 'id'])")
    assert not (tmp_path / "shards").exists() and not (tmp_path / ".shards.staging").exists()


# ---------------------------------------------------------------- tokenizer


def test_training_twice_gives_byte_identical_models(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", n_train=40, n_val=2)
    cfg = tokenizer.TokenizerConfig(vocab_size=300)
    tokenizer.run(cfg, corpus, tmp_path / "a" / "tok", NullTracker())
    tokenizer.run(cfg, corpus, tmp_path / "b" / "tok", NullTracker())  # another folder: no path leaks in
    first, second = (tmp_path / "a" / "tok" / "tokenizer.model"), (tmp_path / "b" / "tok" / "tokenizer.model")
    assert first.read_bytes() == second.read_bytes()
    assert str(tmp_path).encode() not in first.read_bytes()


def test_a_given_file_that_is_not_sentencepiece_names_the_given_path(tmp_path):
    for name, data in (("notes.txt", b"just some text\n"), ("empty.model", b"")):
        (tmp_path / name).write_bytes(data)
        cfg = tokenizer.TokenizerConfig(kind="file", path=str(tmp_path / name))
        with pytest.raises(InputError, match=rf"tokenizer\.path: {tmp_path / name}: not a SentencePiece model"):
            tokenizer.run(cfg, tmp_path, tmp_path / "tok", NullTracker())
        assert not (tmp_path / "tok").exists() and not (tmp_path / ".tok.staging").exists()


@pytest.mark.parametrize("wheel", ["mistral-common", "mistral-common==", "==1.13.1", "mistral-common=1.13.1"])
def test_a_wheel_spec_needs_name_and_version(wheel):
    with pytest.raises(ValueError, match=rf"wheel must be `name==version`, got '{wheel}'"):
        tokenizer.TokenizerConfig(kind="wheel", wheel=wheel, wheel_sha256="ab", member="m")


def test_tokenizer_cli_bad_model_file_and_wheel(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model\n")
    base = ["--corpus", str(tmp_path), "--out", str(tmp_path / "tok"), "--metrics", str(tmp_path / "m.json")]
    out = cli(["-m", "pipeline_steps.tokenizer", "--params",
               params(tmp_path, "tokenizer", kind="file", path=str(tmp_path / "notes.txt")), *base], tmp_path)
    one_line_error(out, f"tokenizer.path: {tmp_path / 'notes.txt'}: not a SentencePiece model")
    out = cli(["-m", "pipeline_steps.tokenizer", "--params",
               params(tmp_path, "tokenizer", kind="wheel", wheel="mistral-common", wheel_sha256="ab", member="m"),
               *base], tmp_path)
    one_line_error(out, "tokenizer: wheel must be `name==version`, got 'mistral-common'")


def test_a_vocabulary_too_large_for_the_corpus_is_one_error(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", n_train=5, n_val=1)
    with pytest.raises(InputError, match=r"train\.jsonl: SentencePiece cannot train on it with vocab_size=5000.*"
                                         r"Vocabulary size too high"):
        tokenizer.run(tokenizer.TokenizerConfig(vocab_size=5000), corpus, tmp_path / "tok", NullTracker())


def test_shards_name_a_tokenizer_folder_without_a_model(tiny_data, tmp_path):
    from pipeline_steps import shards

    with pytest.raises(InputError, match=r"tokenizer\.model: missing or not a SentencePiece model"):
        shards.run(shards.ShardsConfig(workers=1), tiny_data["corpus"], tmp_path, tmp_path / "out", NullTracker())


# ---------------------------------------------------------------- task items

MC = {"id": "q#0", "query": "Question: 2 + 2?\nAnswer:", "choices": [" 4", " 5"], "gold": 0}


@pytest.mark.parametrize("change, says", [
    ({"gold": 2}, r"gold must be an integer in \[0, 2\) \(an index into the 2 choices\), got 2"),
    ({"gold": -1}, r"gold must be an integer in \[0, 2\).*got -1"),
    ({"gold": "0"}, r"gold must be an integer in \[0, 2\).*got '0'"),
    ({"gold": True}, r"gold must be an integer.*got True"),
    ({"choices": [" 4"]}, r"choices must be a list of >= 2 strings, got \[' 4'\]"),
    ({"choices": []}, r"choices must be a list of >= 2 strings, got \[\]"),
    ({"choices": [" 4", ""]}, r"choice 1 is blank \(''\); every choice needs text"),
    ({"choices": [" 4", 5]}, r"choice 1 must be a string, got int 5"),
    ({"query": "Answer: "}, r"query ends in whitespace"),
    ({"answer": 1}, r"has fields \['answer', 'choices', 'gold', 'id', 'query'\], expected those of one format"),
])
def test_a_bad_item_names_file_line_and_field(tmp_path, change, says):
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps(MC) + "\n\n" + json.dumps({**MC, "id": "q#1", **change}) + "\n")
    with pytest.raises(InputError, match=rf"^{path}:3: item 'q#1'.*{says}"):
        read_items(path)


def test_bad_json_and_mixed_formats_name_the_line(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps(MC) + "\n" + '{"id": "q#1", "query": \n')
    with pytest.raises(InputError, match=rf"^{path}:2: not valid JSON \(column 24: Expecting value\)"):
        read_items(path)
    with pytest.raises(InputError, match=rf"^{path}:2: not valid JSON"):
        read_jsonl(path)
    path.write_text(json.dumps(MC) + "\n" + json.dumps({"id": "w", "query": "The", "target": " end"}) + "\n")
    with pytest.raises(InputError, match=rf"^{path}:2: a greedy item among mc items"):
        read_items(path)


def test_greedy_and_math_items_still_read(tmp_path):
    rows = {"greedy": [{"id": "a", "query": "The cat sat on the", "target": " mat"}],
            "math": [{"id": "m", "question": "2 + 3?", "answer": "5"}],
            "mc": [MC, {"gold": 1, "choices": [" 4", " 5"], "query": "Q:", "id": "reordered"}]}
    for kind, items in rows.items():
        path = tmp_path / f"{kind}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in items))
        assert read_items(path) == items
    (tmp_path / "greedy.jsonl").write_text(json.dumps({"id": "a", "query": "The cat", "target": " "}) + "\n")
    with pytest.raises(InputError, match=r"greedy\.jsonl:1: item 'a': query ends in whitespace or the target is blank"):
        read_items(tmp_path / "greedy.jsonl")


@pytest.mark.slow
def test_evaluate_cli_names_the_bad_item(tmp_path):
    folder = tmp_path / "tasks" / "arc_easy"
    folder.mkdir(parents=True)
    (folder / "test.jsonl").write_text(json.dumps(MC) + "\n" + json.dumps({**MC, "id": "q#1", "gold": "1"}) + "\n")
    p = params(tmp_path, "evaluate", tasks=["arc_easy"], grid_tasks=[], task_max_items={}, min_items=1)
    out = cli(["-m", "pipeline_steps.evaluate", "--params", p, "--tasks", str(tmp_path / "tasks"),
               "--models", str(tmp_path / "none"), "--out", str(tmp_path / "out"),
               "--metrics", str(tmp_path / "m.json")], tmp_path)
    one_line_error(out, f"{folder / 'test.jsonl'}:2: item 'q#1': gold must be an integer in [0, 2)", "got '1'")


# ---------------------------------------------------------------- task sources


RACE_ROW = {"example_id": "high1.txt", "article": "Tom keeps bees.", "question": "What does Tom keep?",
            "options": ["bees", "cats", "dogs", "fish"], "answer": "A"}


@pytest.mark.parametrize("change, says", [
    ({"answer": None}, r"no field 'answer' \(fields: \['article', 'example_id', 'options', 'question'\]\); "
                       r"RACE rows need \['example_id', 'article', 'question', 'options', 'answer'\]"),
    ({"answer": "E"}, r"answer 'E' is not one of \['A', 'B', 'C', 'D'\]"),
    ({"answer": ""}, r"answer '' is not one of"),
    ({"options": ["bees"]}, r"choices must be a list of >= 2 strings"),
])
def test_a_bad_race_row_names_source_split_and_row(tmp_path, change, says):
    path = tmp_path / "race.jsonl"
    bad = {k: v for k, v in {**RACE_ROW, **change}.items() if v is not None}
    path.write_text(json.dumps(RACE_ROW) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(InputError, match=rf"tasks\.race: {path} \(split local\) row 2: .*{says}"):
        race.load(str(path), "high")


def test_race_and_local_corpus_files_that_cannot_be_parsed(tmp_path):
    from pipeline_steps.data.sources import hub

    path = tmp_path / "race.jsonl"
    path.write_text(json.dumps(RACE_ROW) + "\n{broken\n")
    with pytest.raises(InputError, match=rf"tasks\.race: cannot read {path} as json: JSON parse error"):
        race.load(str(path), "high")
    (tmp_path / "race.csv").touch()
    with pytest.raises(InputError, match=r"tasks\.race: cannot tell the format of .*race\.csv"):
        race.load(str(tmp_path / "race.csv"), "high")
    with pytest.raises(InputError, match=rf"data_files: cannot read {path} as json"):
        list(hub.local_documents((str(path),), "article", None))


def write_val(folder: Path, sources: list[str]) -> Path:
    """A val split of one document per source (and a tiny train split)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"{s}/doc{d}", "source": s, "year": 1900,
             "text": " ".join(f"The boat {k} of town {d} sailed past the dock at dawn." for k in range(20))}
            for d, s in enumerate(sources)]
    (folder / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "train.jsonl").write_text(json.dumps({"id": "t/0", "source": "t", "text": "Other words."}) + "\n")
    return folder


def test_continuation_needs_two_documents_and_two_sources(tmp_path):
    one_doc = write_val(tmp_path / "one", ["s"])
    with pytest.raises(InputError, match=r"in_domain_continuation needs val text from >= 2 documents .*found 1 "
                                         r"after in_domain_skip_sources=\[\]; enlarge the corpus val split"):
        in_domain.continuation_items(one_doc / "val.jsonl", 10, 5, 30, 4, 0)
    one_source = write_val(tmp_path / "two", ["s", "s"])
    with pytest.raises(InputError, match=r"in_domain_distractors=other_source needs val text from >= 2 sources, "
                                         r"found \['s'\].*use other_document or add a source"):
        in_domain.continuation_items(one_source / "val.jsonl", 10, 5, 30, 4, 0)
    assert in_domain.continuation_items(one_source / "val.jsonl", 10, 5, 30, 4, 0, distractors="other_document")


def test_tasks_cli_names_a_val_split_of_one_source(tmp_path):
    corpus = write_val(tmp_path / "corpus", ["s", "s", "s"])
    p = params(tmp_path, "tasks", tasks=["in_domain_continuation"], in_domain_min_words=5, in_domain_max_words=30)
    out = cli(["-m", "pipeline_steps.tasks", "--params", p, "--corpus", str(corpus), "--out", str(tmp_path / "out"),
               "--metrics", str(tmp_path / "m.json")], tmp_path, **QUIET)
    one_line_error(out, f"{corpus / 'val.jsonl'}: in_domain_distractors=other_source needs val text from >= 2 sources")
    assert not (tmp_path / "out").exists()
    # An empty val split: the last-word task says what to change
    (corpus / "val.jsonl").write_text("")
    p = params(tmp_path, "tasks", tasks=["in_domain_lastword"])
    out = cli(["-m", "pipeline_steps.tasks", "--params", p, "--corpus", str(corpus), "--out", str(tmp_path / "out"),
               "--metrics", str(tmp_path / "m.json")], tmp_path, **QUIET)
    one_line_error(out, "in_domain_lastword: no items from", "enlarge the corpus val split")


@pytest.mark.slow
def test_corpus_cli_names_a_missing_text_field(tmp_path):
    (tmp_path / "notes.jsonl").write_text(json.dumps({"body": "Some text."}) + "\n")
    p = params(tmp_path, "corpus", kind="local", data_files=[str(tmp_path / "notes.jsonl")])
    out = cli(["-m", "pipeline_steps.corpus", "--params", p, "--out", str(tmp_path / "out"),
               "--metrics", str(tmp_path / "m.json")], tmp_path, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", **QUIET)
    one_line_error(out, "notes.jsonl: row 1 has no field text_field='text' (fields: ['body'])",
                   "set corpus.text_field")


def test_reversal_files_name_the_bad_row(tmp_path):
    from pipeline_steps.data.task_sources import reversal

    for name in reversal.REQUIRED:
        (tmp_path / f"{name}.jsonl").write_text(json.dumps({"prompt": "p", "completion": " c."}) + "\n")
    (tmp_path / "p2d_prompts_test.jsonl").write_text(json.dumps({"prompt": "p", "completion": " c."}) + "\n[1]\n")
    with pytest.raises(InputError, match=r"p2d_prompts_test\.jsonl row 2: needs string `prompt` and `completion`"):
        reversal.load_folder(tmp_path)
    (tmp_path / "p2d_prompts_test.jsonl").write_text('{"prompt": "p",\n')
    with pytest.raises(InputError, match=r"p2d_prompts_test\.jsonl:1: not valid JSON"):
        reversal.load_folder(tmp_path)
