"""The math study on tiny math-fine-tuned artifacts: both stages' rows, the stage-2 prompt built from
tokens, too-long problems counted, the tables it writes (and Table 2's and Table 4's cells), its
one-line input errors."""
import json
import logging
import math

import pytest
import sentencepiece as spm

from pipeline_steps import finetune, gsm8k, tasks
from pipeline_steps.core.errors import InputError
from pipeline_steps.core.tracking import NullTracker
from pipeline_steps.data.task_sources.items import math_item, write_jsonl
from pipeline_steps.gsm8k import Gsm8kConfig
from pipeline_steps.scoring import math_scoring as ms
from pipeline_steps.training import finetune_runs
from pipeline_steps.training.finetune_config import FinetuneConfig, FinetuneGroup
from pipeline_steps.training.sft_data import math_rows
from tests.pipeline_steps.test_finetune import config, inputs  # noqa: F401  (the module fixture)

CONTEXT = 256
GROUPS = {"m_mdm": FinetuneGroup("mdm", "mdm_base", "math", epochs=1, batch=8, context=CONTEXT),
          "m_arm": FinetuneGroup("arm", "arm_base", "math", epochs=1, batch=8, context=CONTEXT)}
LONG = "Ann has 3 pens. " * 60 + "How many pens does Ann have?"  # far more than CONTEXT tokens


@pytest.fixture(scope="module")
def math_setup(inputs, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("math")
    folder = root / "tasks" / "math"
    folder.mkdir(parents=True)
    tasks.build_math(folder, tasks.TasksConfig(tasks=("math",), math_train=12, math_test=8, heldout_size=2,
                                               heldout_fraction=0.2, math_max_steps=1))
    gsm = [math_item("g/0", "Tom has 2 apples and buys 3 more. How many apples?", "5"),
           math_item("g/1", LONG, "3"), math_item("g/2", "What is 4 times 6?", "24")]
    (root / "tasks" / "gsm8k").mkdir()
    write_jsonl(root / "tasks" / "gsm8k" / "test.jsonl", gsm)
    base = config(root)
    cfg = FinetuneConfig(base.train, base.optim, base.conditional, GROUPS)
    for group in GROUPS:
        finetune.run(cfg, group, inputs["pretrain"], root / "tasks", inputs["corpus"], root / "ft" / group, NullTracker())
    return {"tasks": root / "tasks", "models": root / "ft", "cfg": cfg, "root": root}


def test_math_rows_are_both_stages_and_rows_past_the_context_are_left_out(inputs, math_setup, caplog):  # noqa: F811
    sp = spm.SentencePieceProcessor(model_file=str(next(inputs["pretrain"].glob("*/16k/tokenizer.model"))))
    rows = math_rows(math_setup["tasks"] / "math" / "train.txt", sp)
    assert len(rows) == 2 * 12 and all(rows[k + 1][0] == rows[k][0] + rows[k][1] for k in range(0, 24, 2))
    trained = json.loads((math_setup["models"] / "m_mdm" / "config.json").read_text())["finetune"]
    assert trained["rows"] == 24 and trained["data"] == "math"
    lengths = sorted(len(p) + len(r) + 2 for p, r in rows)
    cfg, group = math_setup["cfg"], GROUPS["m_arm"]
    with caplog.at_level(logging.WARNING):
        kept = finetune_runs.load_rows(cfg, group, sp, math_setup["tasks"], inputs["corpus"], lengths[5])
    assert len(kept) == sum(n <= lengths[5] for n in lengths) < 24 and "longer than the context" in caplog.text
    with pytest.raises(InputError, match=f"no math row fits the context {lengths[0] - 1}"):
        finetune_runs.load_rows(cfg, group, sp, math_setup["tasks"], inputs["corpus"], lengths[0] - 1)


def test_the_stage_prompts_stage_2_with_stage_1s_tokens_and_writes_every_table(math_setup, tmp_path, monkeypatch):
    calls = []
    real = gsm8k.continue_rows

    def recording(lm, prompts, length, cfg, setting):
        out = real(lm, prompts, length, cfg, setting)
        calls.append((lm.family, setting["sampler"], setting["steps_per_token"], length, prompts, out))
        return out

    monkeypatch.setattr(gsm8k, "continue_rows", recording)
    cfg = Gsm8kConfig(mdm="m_mdm", arm="m_arm", reasoning_tokens=24, answer_tokens=6, min_reasoning_tokens=8,
                      table4_samplers=("confidence", "ancestral"), table4_steps_per_token=(0.5, 1.0))
    metrics = gsm8k.run(cfg, math_setup["tasks"], math_setup["models"], tmp_path / "none.json", tmp_path, NullTracker())
    results = json.loads((tmp_path / "results.json").read_text())
    # every setting: stage 1 (a call per reasoning length), then stage 2 on stage 1's prompts + TOKENS
    pending, stage2_calls = [], 0
    for _family, _sampler, _spt, length, prompts, out in calls:
        assert all(len(o) <= length for o in out)
        if length == cfg.answer_tokens:
            assert sorted(prompts) == sorted(pending)
            pending, stage2_calls = [], stage2_calls + 1
        else:
            pending += [p + o for p, o in zip(prompts, out)]
    assert stage2_calls == 5 + 2 and not pending  # MDM: 4 settings on ours, 1 on GSM8K; ARM: 2
    # the MDM's Table 4 settings run on our split only: 4 settings there, the main one on GSM8K
    mdm_cells = [(c["set"], c["sampler"], c["steps_per_token"]) for c in results["cells"] if c["family"] == "mdm"]
    assert sorted(mdm_cells) == sorted([("math", "confidence", 1.0), ("gsm8k", "confidence", 1.0),
                                        ("math", "confidence", 0.5), ("math", "ancestral", 0.5),
                                        ("math", "ancestral", 1.0)])
    gsm = ms.main_cell(results, "arm", "gsm8k")
    assert gsm["n"] == 3 and gsm["too_long"] == 1 and metrics["mdm/gsm8k/too_long"] == 1
    reported = (math_setup["tasks"] / "math" / "test.jsonl").read_text().count("\n")
    assert metrics["arm/math/n"] == results["sets"]["math"]["n"] == reported < 8  # the rest held out
    for key, value in metrics.items():
        assert not math.isnan(value), key
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    long = next(s for s in samples if s["id"] == "g/1" and s["family"] == "arm")
    assert long["text"] is None and long["correct"] is False
    for s in samples:
        assert s["correct"] == (s["answer"] is not None and s["answer"] == s["gold"])  # integers: verify = equality
    table = (tmp_path / "math.md").read_text()
    assert table.count("| gsm8k (") == 2 and "| 58.5 |" in table and "| 58.6 |" in table
    assert f"| MDM | confidence, 1 steps/token, w=0 | {reported} |" in table and "| ARM | greedy, KV cache | 3 |" in table
    assert "(n=3, 1 too long)" in (tmp_path / "table2.md").read_text()
    assert (tmp_path / "table4_math.md").read_text().count("| MDM |") == 4


def test_scores_count_too_long_problems_as_wrong():
    rows = [{"text": "#### 5", "answer": "5", "correct": True}, {"text": "x", "answer": None, "correct": False},
            {"text": None, "answer": None, "correct": False}, {"text": "#### 4", "answer": "4", "correct": False}]
    cell = ms.score(rows, 3.0)
    assert cell["accuracy"] == 0.25 and cell["stderr"] == pytest.approx(math.sqrt(0.25 * 0.75 / 4))
    assert (cell["too_long"], cell["answered"], cell["seconds_per_problem"]) == (1, 2, 1.0)
    results = {"cells": [{"family": f, "set": "gsm8k", "main": True, **cell} for f in ("mdm", "arm")]}
    cells = ms.gsm8k_cells(results)
    assert cells["mdm"] == "25.0 ± 21.7 (n=4, 1 too long)"
    only = ms.table2_with_gsm8k(results, None)  # without the evaluate stage's results: the GSM8K row alone
    assert "| gsm8k | 25.0 ± 21.7 (n=4, 1 too long) | 25.0 ± 21.7 (n=4, 1 too long) | 58.5 | 58.6 |" in only
    assert ms.table4_key("mdm", "confidence", 0.25, 0.0) == "mdm confidence 0.25 w=0"
    assert ms.table4_key("arm", None, None, 0) == "arm"


def test_bad_inputs_are_one_line(math_setup, tmp_path):
    def run(cfg, tasks_dir):
        return gsm8k.run(cfg, tasks_dir, math_setup["models"], tmp_path / "e", tmp_path, NullTracker())

    with pytest.raises(InputError, match=r"gsm8k.mdm: .*gone: no fine-tuned model artifact"):
        run(Gsm8kConfig(mdm="gone", arm="m_arm"), math_setup["tasks"])
    with pytest.raises(InputError, match=r"gsm8k.arm: .*m_mdm holds a 'mdm' model, expected 'arm'"):
        run(Gsm8kConfig(mdm="m_mdm", arm="m_mdm"), math_setup["tasks"])
    with pytest.raises(InputError, match=r"math/test.jsonl: missing; the tasks stage writes it \(add `math`"):
        run(Gsm8kConfig(mdm="m_mdm", arm="m_arm"), tmp_path)
    with pytest.raises(ValueError, match="samplers must be in"):
        Gsm8kConfig(table4_samplers=("beam",))
