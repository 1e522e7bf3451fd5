"""Task sources on data these tests make: in-domain, reversal, math, RACE, and the item helpers."""
from __future__ import annotations

import json
import os
import re

import pytest

# Local files go through `datasets` streaming; nothing here may reach a hub.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeline_steps import tasks  # noqa: E402
from pipeline_steps.core.tracking import NullTracker  # noqa: E402
from pipeline_steps.core.errors import InputError  # noqa: E402
from pipeline_steps.data.task_sources import (  # noqa: E402
    gsm8k_aug,
    in_domain,
    items,
    math_format,
    math_problems,
    race,
    reversal,
)

# ---------------------------------------------------------------- in-domain


def write_val(folder, n_docs=5):
    """Val documents of distinct vocabularies, plus a train split of a word val never uses."""
    folder.mkdir(parents=True, exist_ok=True)
    docs = []
    for d in range(n_docs):
        lines = [f"Mrs. Rowe of town {d} saw the boat {k} near the dock. The boat {k} of {d} "
                 f"sailed past the dock at dawn and came back to the boat. Birds of town {d} sang "
                 f"{k} times." for k in range(12)]
        docs.append({"id": f"val/doc{d}", "source": "st"[d % 2], "year": 1900, "text": "\n".join(lines)})
    (folder / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in docs))
    # One val sentence recurs in train (as a duplicated Bible passage would): it is blocked.
    train = {"id": "train/0", "source": "s", "year": 1900,
             "text": "Zebrafinch trainword sentences are only in training. " * 100
             + "\nBirds of town 0 sang 3 times."}
    (folder / "train.jsonl").write_text(json.dumps(train) + "\n")
    return folder


def test_in_domain_items_come_only_from_val_text(tmp_path):
    corpus = write_val(tmp_path / "corpus")
    cfg = tasks.TasksConfig(tasks=("in_domain_lastword", "in_domain_continuation"),
                            in_domain_items=30, in_domain_min_words=10, in_domain_max_words=40,
                            heldout_size=5, heldout_fraction=0.5)
    tasks.run(cfg, corpus, tmp_path / "out", NullTracker())
    val_text = (corpus / "val.jsonl").read_text()
    for task in cfg.tasks:
        test = items.read_jsonl(tmp_path / "out" / task / "test.jsonl")
        heldout = items.read_jsonl(tmp_path / "out" / task / "heldout.jsonl")
        assert test and heldout
        # Held-out items come from other documents than reported ones.
        assert not {items.group_of(i) for i in test} & {items.group_of(i) for i in heldout}
        for item in test + heldout:
            text = json.dumps(item)
            assert "trainword" not in text and "Zebrafinch" not in text
            assert "town 0 sang 3 times" not in text
            for piece in [item["query"], *item.get("choices", []), item.get("target", "")]:
                assert piece.strip() in val_text or piece.strip().split(". ")[0] in val_text


def test_lastword_items_end_the_passage_with_a_word_seen_before(tmp_path):
    val = write_val(tmp_path) / "val.jsonl"
    found = in_domain.lastword_items(val, 50, 10, 40, target_in_context=True, seed=0)
    assert found
    for item in found:
        assert set(item) == {"id", "query", "target"}
        word = item["target"]
        assert word.startswith(" ") and word.strip().isalpha() and len(word.strip()) >= 3
        assert word.strip().lower() in item["query"].lower()
        assert not item["query"].endswith(" ")
    assert in_domain.lastword_items(val, 50, 10, 40, True, seed=0) == found


def test_continuation_items_have_one_true_next_sentence(tmp_path):
    val = write_val(tmp_path) / "val.jsonl"
    found = in_domain.continuation_items(val, 40, 10, 40, choices=4, seed=1,
                                         distractors="other_document")
    assert found
    docs = {doc.id: doc.sentences for doc in in_domain.read_val_documents(val)}
    for item in found:
        doc_id, start = item["id"].split("#")[1].rsplit(":", 1)
        start = int(start)
        assert items.group_of(item) == doc_id.removeprefix("s/")
        assert len(item["choices"]) == 4 and len(set(item["choices"])) == 4
        sentences = docs[doc_id]
        assert item["query"].startswith(sentences[start])
        gold = item["choices"][item["gold"]].strip()
        assert gold in sentences and gold not in item["query"]
        others = [c.strip() for k, c in enumerate(item["choices"]) if k != item["gold"]]
        assert not set(others) & set(sentences)
    assert in_domain.split_sentences("Mrs. Rowe came. She left!") == ["Mrs. Rowe came.",
                                                                       "She left!"]


def test_parallel_chapters_share_a_group_and_never_supply_distractors(tmp_path):
    chapter = [f"Verse {k} says the lamp {k} was lit for the people. " * 2 for k in range(20)]
    rows = [{"id": f"{src}/Gen.1", "source": src, "year": 1, "text": "\n".join(chapter)}
            for src in ("kjv", "web")]
    rows.append({"id": "brown/a01", "source": "brown", "year": 1961,
                 "text": "\n".join(f"A jury of {k} men met in Fulton today. " * 2
                                   for k in range(20))})
    rows.append({"id": "wordnet/n/1", "source": "wordnet", "year": 2006,
                 "text": "dog: a domesticated canid that barks loudly at strangers"})
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    docs = in_domain.read_val_documents(tmp_path / "val.jsonl", skip_sources=("wordnet",))
    assert [(d.id, d.group) for d in docs] == [("kjv/Gen.1", "Gen.1"), ("web/Gen.1", "Gen.1"),
                                               ("brown/a01", "a01")]
    found = in_domain.continuation_items(tmp_path / "val.jsonl", 50, 8, 30, 2, seed=0,
                                         skip_sources=("wordnet",), distractors="other_document")
    assert found
    for item in found:
        wrong = item["choices"][1 - item["gold"]]
        assert ("Verse" in item["query"]) != ("Verse" in wrong)  # distractors cross groups
        assert "canid" not in json.dumps(item)



def test_other_source_distractors_never_share_the_passage_source(tmp_path):
    rows = [{"id": f"{src}/d{d}", "source": src, "year": 1,
             "text": "\n".join(f"The {src} text {d} has line {k} with words to spare here. " * 2
                               for k in range(20))}
            for src in ("alpha", "beta", "gamma") for d in range(2)]
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    found = in_domain.continuation_items(tmp_path / "val.jsonl", 60, 8, 30, 3, seed=0)
    assert len(found) >= 20
    for item in found:
        source = item["id"].split("#")[1].split("/")[0]
        wrong = [c for k, c in enumerate(item["choices"]) if k != item["gold"]]
        assert all(source not in c for c in wrong) and source in item["choices"][item["gold"]]
    one_source = tmp_path / "one"
    one_source.mkdir()
    (one_source / "val.jsonl").write_text("".join(json.dumps({**r, "source": "alpha"}) + "\n" for r in rows))
    with pytest.raises(ValueError, match="in_domain_distractors=other_source"):
        in_domain.continuation_items(one_source / "val.jsonl", 60, 8, 30, 3, seed=0)


# ---------------------------------------------------------------- reversal


def test_reversal_files_follow_berglund_format():
    files = reversal.generate(people=4, train_paraphrases=3, test_paraphrases=2, seed=0)
    assert set(files) == set(reversal.FILES)
    sizes = {name: len(rows) for name, rows in files.items()}
    assert sizes == {"p2d_prompts_train": 12, "d2p_prompts_train": 12, "both_prompts_train": 24,
                     "p2d_prompts_test": 8, "d2p_prompts_test": 8,
                     "p2d_reverse_prompts_test": 8, "d2p_reverse_prompts_test": 8,
                     "all_prompts_train": 48}
    for rows in files.values():
        for row in rows:
            assert set(row) == {"prompt", "completion"}
            assert row["completion"].startswith(" ") and row["completion"].endswith(".")
            assert not row["prompt"].endswith(" ")
    train_prompts = {r["prompt"] for r in files["all_prompts_train"]}
    # Same-direction tests use held-out paraphrases; reverse tests flip prompt and completion.
    assert not train_prompts & {r["prompt"] for r in files["p2d_prompts_test"]}
    p2d_train = " | ".join(r["prompt"] for r in files["p2d_prompts_train"])
    d2p_train = " | ".join(r["prompt"] for r in files["d2p_prompts_train"])
    for row in files["p2d_reverse_prompts_test"]:  # a p2d person's name, asked from the description
        assert row["completion"].strip(" .") in p2d_train
    for row in files["d2p_reverse_prompts_test"]:  # a d2p person's description, asked from the name
        assert row["completion"].strip(" .") in d2p_train
    descriptions = {r["completion"] for r in files["p2d_prompts_train"]}
    assert all(r["completion"] in descriptions for r in files["p2d_prompts_test"])
    assert len(descriptions) == 4
    assert reversal.generate(4, 3, 2, seed=0) == files != reversal.generate(4, 3, 2, seed=1)


def test_reversal_folder_loader(tmp_path):
    for name in reversal.REQUIRED:
        (tmp_path / f"{name}.jsonl").write_text(json.dumps(
            {"prompt": f"{name} prompt", "completion": " done.", "extra": 1}) + "\n")
    files = reversal.load_folder(tmp_path)
    assert files["p2d_prompts_test"] == [{"prompt": "p2d_prompts_test prompt",
                                          "completion": " done."}]
    assert len(files["all_prompts_train"]) == 3
    (tmp_path / "d2p_prompts_test.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="d2p_prompts_test"):
        reversal.load_folder(tmp_path)


# ---------------------------------------------------------------- math

LINE = re.compile(r"^(?P<q>[^|]+\?)\|\|(?P<eqs>(<<[-0-9+*/]+=\d+>> ?)+) #### (?P<a>\d+)$")


def test_math_lines_are_question_equations_answer():
    train, test = math_problems.generate(200, 50, max_steps=4, seed=0)
    assert len(train) == 200 and len(test) == 50
    for problem in train + test:
        match = LINE.match(problem.line())
        assert match, problem.line()
        results = []
        for expression, result in re.findall(r"<<([^=]+)=(\d+)>>", match["eqs"]):
            assert eval(expression) == int(result)  # noqa: S307 - digits and + - * / only
            results.append(int(result))
        assert results[-1] == problem.answer == int(match["a"])
        ops, ending = problem.template[:-1], problem.template[-1]
        assert len(problem.equations) == len(ops) + ops.count("packs") + (ending == "boxes")
        assert problem.numbers[0] == problem.start
        assert math_problems.parse_line(problem.line(), "x") == (problem.question, match["eqs"].strip(), match["a"])
    as_items = math_problems.as_items(test[:2], "test")
    assert as_items[0] == {"id": "test/0", "question": test[0].question,
                           "answer": str(test[0].answer)}


@pytest.mark.parametrize("steps", [(1, 1), (2, 3)])
def test_math_train_and_test_are_disjoint_by_template_and_by_numbers(steps):
    train, test = math_problems.generate(300, 60, max_steps=steps[1], seed=3, min_steps=steps[0], max_start=40)
    assert {len(p.template) - 1 for p in train + test} <= set(range(steps[0], steps[1] + 1))
    assert not {p.template for p in train} & {p.template for p in test}
    assert not {p.start for p in train} & {p.start for p in test}
    assert all(3 <= p.start <= 40 for p in train + test)
    # no test problem is a train problem in other words: its numbers, in order, never occur in train
    assert not {p.numbers for p in train} & {p.numbers for p in test}
    # every part of a test template (an operation, an ending) is also used by some train template
    assert {part for p in test for part in p.template} <= {part for p in train for part in p.template}
    again = math_problems.generate(300, 60, max_steps=steps[1], seed=3, min_steps=steps[0], max_start=40)
    assert again == (train, test) and math_problems.generate(300, 60, steps[1], 4, steps[0], 40) != (train, test)


def test_math_difficulty_and_impossible_requests_are_errors():
    easy, _ = math_problems.generate(50, 10, max_steps=1, seed=0)
    hard, _ = math_problems.generate(50, 10, max_steps=4, seed=0, min_steps=4)
    assert max(len(p.equations) for p in easy) <= 3 < min(len(p.equations) for p in hard)
    with pytest.raises(ValueError, match="min_steps <= max_steps"):
        math_problems.generate(10, 10, max_steps=1, seed=0, min_steps=2)


@pytest.mark.parametrize("line", ["What is 2+2?<<2+2=4>> #### 4", "What is 2+2?||<<2+2=4>> 4",
                                  "||<<2+2=4>> #### 4", "What is 2+2?||<<2+2=4>> #### "])
def test_a_malformed_math_line_is_one_error_naming_file_and_line(line):
    with pytest.raises(InputError, match=r"^train.txt:7: expected `question\|\|equations #### answer`"):
        math_problems.parse_line(line, "train.txt:7")


GSM8K_AUG = [{"question": "Tom has 3 apples and buys 2 more. How many?", "cot": "<<3+2=5>>", "answer": "5"},
             {"question": "Ann has 4 boxes of 3 pens. How many pens?", "cot": ["<<4*3=12>>"], "answer": "12"},
             {"question": "A third one?", "cot": ["<<1+1=2>>", "<<2*3=6>>"], "answer": 6}]


def write_rows(path, rows):
    """A .jsonl as given, or a .parquet (one type per column: cot a list, answer a string)."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{**r, "cot": [r["cot"]] if isinstance(r["cot"], str) else r["cot"],
                                          "answer": str(r["answer"])} for r in rows]), path)


@pytest.mark.parametrize("suffix", ["jsonl", "parquet", "txt"])
def test_gsm8k_aug_loads_local_files_as_math_lines(tmp_path, suffix):
    path = tmp_path / f"aug.{suffix}"
    lines = [gsm8k_aug.line_of_row(row, "x") for row in GSM8K_AUG]
    if suffix == "txt":
        path.write_text("".join(line + "\n\n" for line in lines))  # blank lines are skipped
    else:
        write_rows(path, GSM8K_AUG)
    assert gsm8k_aug.load(str(path), 2) == lines[:2] and gsm8k_aug.load(str(path), 10) == lines
    assert lines[2] == "A third one?||<<1+1=2>> <<2*3=6>> #### 6"


def test_a_malformed_gsm8k_aug_row_is_one_line(tmp_path):
    path = tmp_path / "aug.jsonl"
    write_rows(path, [GSM8K_AUG[0], {"question": "Q?", "answer": "3"}])
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}: row 2: expected GSM8K-Aug fields"):
        gsm8k_aug.load(str(path), 5)
    write_rows(path, [{"question": "Q?", "cot": ["<<1+1=2>>", 3], "answer": "2"}])
    with pytest.raises(InputError, match=r"row 1: expected GSM8K-Aug fields .* cot a string or a list"):
        gsm8k_aug.load(str(path), 5)
    txt = tmp_path / "aug.txt"
    txt.write_text("Q?||<<1+1=2>> #### 2\nQ?||<<1+1=2>> 2\n")
    with pytest.raises(InputError, match=rf"^{re.escape(str(txt))}:2: expected"):
        gsm8k_aug.load(str(txt), 5)
    txt.write_text("")
    with pytest.raises(InputError, match="has no problems"):
        gsm8k_aug.load(str(txt), 5)


def test_two_stage_rows_share_their_tokens(tiny_data):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tiny_data["tokenizer"] / "tokenizer.model"))
    line = "Mia has 12 shells. She finds 7 more. How many shells does Mia have now?||<<12+7=19>> #### 19"
    (p1, r1), (p2, r2) = math_format.two_stage_rows(sp, line, "x")
    assert p2 == p1 + r1  # stage 2's prompt is stage 1's tokens, not decoded text encoded again
    assert sp.decode(p1) == "Question: Mia has 12 shells. She finds 7 more. How many shells does Mia have now?"
    assert sp.decode(r1) == "Answer: <<12+7=19>>" and sp.decode(r2) == "#### 19"
    assert p1 == math_format.question_tokens(sp, line.split("||")[0])


def test_math_task_files(tmp_path):
    cfg = tasks.TasksConfig(tasks=("math",), math_train=40, math_test=20, heldout_size=5,
                            heldout_fraction=0.5, math_max_steps=2)
    metrics = tasks.run(cfg, tmp_path, tmp_path / "out", NullTracker())
    folder = tmp_path / "out" / "math"
    assert metrics == {"math/test/n": 15.0, "math/heldout/n": 5.0, "math/train/n": 40.0}
    for split, n in (("train", 40), ("test", 15), ("heldout", 5)):
        lines = (folder / f"{split}.txt").read_text().splitlines()
        assert len(lines) == n and all(LINE.match(line) for line in lines)
    test = items.read_jsonl(folder / "test.jsonl")
    lines = (folder / "test.txt").read_text().splitlines()
    assert [i["question"] for i in test] == [line.split("||")[0] for line in lines]
    # GSM8K-Aug in place of the generated train problems; test stays generated
    aug = tmp_path / "aug.txt"
    aug.write_text("".join(gsm8k_aug.line_of_row(row, "x") + "\n" for row in GSM8K_AUG))
    cfg = tasks.TasksConfig(tasks=("math",), math_train=2, math_test=20, heldout_size=5,
                            heldout_fraction=0.5, math_max_steps=2, math_source=str(aug))
    tasks.run(cfg, tmp_path, tmp_path / "aug_out", NullTracker())
    assert (tmp_path / "aug_out" / "math" / "train.txt").read_text().splitlines() == aug.read_text().splitlines()[:2]
    assert (tmp_path / "aug_out" / "math" / "test.txt").read_text() == "".join(line + "\n" for line in lines)


# ---------------------------------------------------------------- RACE

RACE_ROWS = [
    {"example_id": "high1.txt", "article": "Tom keeps bees. The bees make honey.",
     "question": "What do the bees make?", "options": ["milk", "honey", "wax", "bread"],
     "answer": "B"},
    {"example_id": "high1.txt", "article": "Tom keeps bees. The bees make honey.",
     "question": "The passage is mainly about _ .", "options": ["bees", "cows", "cats", "dogs"],
     "answer": "A"},
    *[{"example_id": f"high{k}.txt", "article": f"Article {k}.", "question": f"Q{k}?",
       "options": ["a", "b", "c", "d"], "answer": "D"} for k in range(2, 12)],
]


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_race_from_a_local_file_through_datasets_streaming(tmp_path, suffix):
    path = tmp_path / f"race.{suffix}"
    if suffix == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in RACE_ROWS))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(RACE_ROWS), path)
    test, pool, info = race.load(str(path), "high")
    assert pool is None and info["upstream_split"] == "file" and len(test) == len(RACE_ROWS)
    assert test[0] == {"id": "local/high1.txt#0",
                       "query": "Article: Tom keeps bees. The bees make honey.\n\n"
                                "Question: What do the bees make?\nAnswer:",
                       "choices": [" milk", " honey", " wax", " bread"], "gold": 1}
    assert test[1]["query"].endswith("\n\nThe passage is mainly about")
    assert test[1]["choices"][0] == " bees." and test[1]["gold"] == 0
    cfg = tasks.TasksConfig(tasks=("race",), race=str(path), heldout_size=3,
                            heldout_fraction=0.5)
    tasks.run(cfg, tmp_path, tmp_path / "out", NullTracker())
    reported = items.read_jsonl(tmp_path / "out" / "race" / "test.jsonl")
    heldout = items.read_jsonl(tmp_path / "out" / "race" / "heldout.jsonl")
    assert len(reported) + len(heldout) == len(RACE_ROWS) and len(heldout) >= 3
    # Both questions on article high1 land on the same side.
    sides = {("test" if i in reported else "heldout") for i in reported + heldout
             if i["id"].startswith("local/high1.txt#")}
    assert len(sides) == 1


# ---------------------------------------------------------------- item helpers


def test_take_groups_and_subsample_are_seeded_and_order_free():
    rows = [{"id": f"g{k // 3}#{k % 3}"} for k in range(30)]
    chosen, rest = items.take_groups(rows, 7, "salt")
    assert len(chosen) == 9 and {items.group_of(r) for r in chosen}.isdisjoint(
        {items.group_of(r) for r in rest})
    assert items.take_groups(list(reversed(rows)), 7, "salt")[0] == list(reversed(chosen))
    assert items.subsample(rows, 5, "s") == items.subsample(rows, 5, "s")
    assert len(items.subsample(rows, 5, "s")) == 5 and items.subsample(rows, None, "s") == rows
    with pytest.raises(ValueError, match="gold"):
        items.mc_item("x", "q", [" a", " b"], 2)
    with pytest.raises(ValueError, match="whitespace"):
        items.greedy_item("x", "q ", " a")
