"""The reversal stage on tiny fine-tuned artifacts, its scores against hand-computed ones, its input errors."""
import json
import math

import pytest

from pipeline_steps import finetune, reversal
from pipeline_steps.core.errors import InputError
from pipeline_steps.core.tracking import NullTracker
from pipeline_steps.data.task_sources.reversal import load_folder as reversal_files
from pipeline_steps.reversal import ReversalConfig
from pipeline_steps.scoring import reversal_scoring as rs
from tests.pipeline_steps.test_finetune import config, inputs  # noqa: F401  (the module fixture)


@pytest.fixture(scope="module")
def finetuned(inputs, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("reversal_models")
    cfg = config(root)
    for group in ("rev_mdm", "rev_arm"):
        finetune.run(cfg, group, inputs["pretrain"], inputs["tasks"], inputs["corpus"], root / group, NullTracker())
    return root


def test_exact_match_reads_the_text_up_to_eos_with_both_rules():
    assert rs.exact_match("Alsa Yarlton. The end", " Alsa Yarlton.") == (True, True)
    assert rs.exact_match("it was alsa  yarlton", " Alsa Yarlton.") == (False, True)  # case, spaces, period
    assert rs.exact_match("Alsa", " Alsa Yarlton.") == (False, False)
    assert rs.cut_at_eos([5, 6, 2, 7, 8], eos=2) == [5, 6] and rs.cut_at_eos([5, 6], eos=2) == [5, 6]


def test_bleu_is_on_words_so_a_wrong_description_scores_near_zero():
    ref = ' the acclaimed director of the documentary "Amber Atlas".'
    assert rs.word_bleu([ref.strip()], [ref]) == pytest.approx(100)
    wrong = 'the reclusive composer of the opera "Cinder Echo".'
    assert rs.word_bleu([wrong], [ref]) < 15  # nltk's character BLEU gives such a pair about 0.27
    scores = rs.score_generations(["Alsa Yarlton.", "Bo Ran"], [" Alsa Yarlton.", " Ka Lu."])
    assert scores["substring"] == 0.5 and scores["substring_stderr"] == pytest.approx(math.sqrt(0.25 / 2))
    ranks = rs.score_ranks([1, 3, 1, 2], [4, 4, 4, 4])
    assert ranks["top1"] == 0.5 and ranks["mean_rank"] == 1.75 and ranks["chance_top1"] == 0.25


def test_the_stage_writes_tables_5_and_14_with_every_cell(inputs, finetuned, tmp_path):  # noqa: F811
    cfg = ReversalConfig(mdm="rev_mdm", arm="rev_arm", max_items=3, rank_candidates=3)
    metrics = reversal.run(cfg, inputs["tasks"], finetuned, tmp_path, NullTracker())
    results = json.loads((tmp_path / "results.json").read_text())
    # six files; the MDM at both CFG scales, the ARM once; every family ranks every file
    assert len(results["generations"]) == 6 * 3 and len(results["ranks"]) == 6 * 2
    files = reversal_files(inputs["tasks"] / "reversal")
    assert all(len(files[g["file"]]) == 4 and g["n"] == 3 for g in results["generations"])  # cut to max_items
    for key in ("mdm/reverse/exact_match", "arm/same/exact_match", "mdm/same_trained/exact_match",
                "arm/NtD/reverse/held-out/rank/top1", "mdm/DtN/same/trained/w0.8/bleu"):
        assert 0 <= metrics[key] <= 100 and not math.isnan(metrics[key])
    table5 = (tmp_path / "table5.md").read_text()
    assert "| MDM 1.1B (paper) | 97 | 92 | 49 (76) | 37 (67) |" in table5 and "| ARM (ours) |" in table5
    assert "| MDM (ours, CFG 0.8) |" in table5 and "missing" not in table5 and "| MDM (ours) |" in table5
    assert "below the bar" in table5  # 3 epochs memorise nothing: the table says so
    table14 = (tmp_path / "table14.md").read_text()
    # two CFG scales of the MDM, then the two families' ranks
    assert table14.count("| NtD | reverse | held-out |") == 4 and "/ 2 |" in table14  # 2 people a file: 2 candidates
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert {s["family"] for s in samples} == {"mdm", "arm"} and all("generated" in s for s in samples)


def test_bad_inputs_are_one_line(inputs, finetuned, tmp_path):  # noqa: F811
    with pytest.raises(InputError, match=r"reversal.mdm: .*rev_gone: no fine-tuned model artifact"):
        reversal.run(ReversalConfig(mdm="rev_gone", arm="rev_arm"), inputs["tasks"], finetuned, tmp_path, NullTracker())
    with pytest.raises(InputError, match=r"reversal.arm: .*rev_mdm holds a 'mdm' model, expected 'arm'"):
        reversal.run(ReversalConfig(mdm="rev_mdm", arm="rev_mdm"), inputs["tasks"], finetuned, tmp_path, NullTracker())
    with pytest.raises(FileNotFoundError, match="missing reversal files"):
        reversal.run(ReversalConfig(mdm="rev_mdm", arm="rev_arm"), tmp_path, finetuned, tmp_path, NullTracker())
    with pytest.raises(ValueError, match="table5_cfg 0.5 must be one of cfg_scales"):
        ReversalConfig(table5_cfg=0.5)
