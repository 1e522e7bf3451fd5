"""The standalone evaluator: CLI, tokenization rule, accuracy definitions, ARM path, seeding."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from model.artifact import save_artifact
from model.config import config_for
from model.likelihood import LikelihoodEstimate, MonteCarloConfig
from model.transformer import Transformer
from pipeline_steps.data.task_sources.items import write_jsonl
from pipeline_steps.scoring import evaluator

MC_ITEMS = [
    {"id": "a", "query": "the house of the", "choices": [" river", " light of the house"], "gold": 0},
    {"id": "b", "query": "she was in the", "choices": [" house", " river", " light"], "gold": 1},
    {"id": "c", "query": "he is not", "choices": [" the one", " with her", " at all"], "gold": 2},
    {"id": "d", "query": "they were all", "choices": [" there", " from the river"], "gold": 0},
]
GREEDY_ITEMS = [
    {"id": "g1", "query": "the light of the", "target": " house"},
    {"id": "g2", "query": "she was with", "target": " her"},
    {"id": "g3", "query": "it was on the", "target": " river"},
]


def make_artifact(folder: Path, family: str, tokenizer_file: Path, size: str = "16k",
                  context: int = 32, seed: int = 0, run: dict | None = None) -> Path:
    """A random-init model artifact (what pretrain writes), with run.json when `run` is given."""
    torch.manual_seed(seed)
    vocab = json.loads((tokenizer_file.parent / "meta.json").read_text())["vocab_size"]
    model = Transformer(config_for(size, family, vocab, context))
    save_artifact(model, folder, tokenizer_file, {"size": size, "run": run or {}})
    if run is not None:
        (folder / "run.json").write_text(json.dumps(run))
    return folder


@pytest.fixture(scope="module")
def artifacts(tiny_data, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaluator")
    tok = tiny_data["tokenizer"] / "tokenizer.model"
    write_jsonl(root / "mc.jsonl", MC_ITEMS)
    write_jsonl(root / "greedy.jsonl", GREEDY_ITEMS)
    return {"mdm": make_artifact(root / "mdm", "mdm", tok), "arm": make_artifact(root / "arm", "arm", tok),
            "mc": root / "mc.jsonl", "greedy": root / "greedy.jsonl", "root": root}


def run_cli(artifacts, tmp_path, model: str, items: str, *extra: str) -> dict:
    out = tmp_path / "result.json"
    assert evaluator.main(["--model", str(artifacts[model]), "--items", str(artifacts[items]),
                           "--out", str(out), *extra]) == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("method", ["mc", "l_uniform", "chain"])
def test_cli_scores_every_choice_and_writes_every_field(artifacts, tmp_path, method):
    result = run_cli(artifacts, tmp_path, "mdm", "mc", "--method", method, "--samples", "8",
                     "--block", "4", "--cfg", "0.5")
    for key in ("n", "acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "forward_passes", "seconds",
                "method", "effective_method", "cfg_scale", "items"):
        assert key in result, key
    assert result["n"] == len(MC_ITEMS) and result["effective_method"] == method
    assert math.isclose(result["acc_stderr"], math.sqrt(result["acc"] * (1 - result["acc"]) / 4))
    for item, row in zip(MC_ITEMS, result["items"]):
        assert len(row["loglik"]) == len(item["choices"]) and all(ll < 0 for ll in row["loglik"])
        assert row["pred"] == max(range(len(row["loglik"])), key=row["loglik"].__getitem__)
    correct = sum(row["pred"] == item["gold"] for item, row in zip(MC_ITEMS, result["items"]))
    assert result["acc"] == correct / len(MC_ITEMS)
    # CFG doubles every row: chain pays 2 |c| per choice, Monte Carlo 2 x samples
    tokens = sum(n for row in result["items"] for n in row["n_tokens"])
    expected = 2 * tokens if method == "chain" else 2 * 8 * sum(len(i["choices"]) for i in MC_ITEMS)
    assert result["forward_passes"] == expected


def test_cli_greedy_decodes_targets_with_padding(artifacts, tmp_path):
    result = run_cli(artifacts, tmp_path, "mdm", "greedy", "--method", "greedy", "--pad-to", "context")
    assert result["pad_to"] == 32 and result["acc_norm"] is None and result["n"] == 3
    assert {"id", "target", "correct", "decoded"} <= set(result["items"][0])
    assert result["acc"] == sum(r["correct"] for r in result["items"]) / 3


def test_arm_maps_every_likelihood_method_to_the_exact_one(artifacts, tmp_path, capsys):
    results = [run_cli(artifacts, tmp_path, "arm", "mc", "--method", m) for m in ("mc", "chain")]
    assert {r["effective_method"] for r in results} == {"exact"}
    assert results[0]["items"] == results[1]["items"]
    assert results[0]["forward_passes"] == sum(len(i["choices"]) for i in MC_ITEMS)  # one row each
    greedy = run_cli(artifacts, tmp_path, "arm", "greedy", "--method", "greedy")
    assert greedy["effective_method"] == "greedy" and greedy["forward_passes"] == 3
    capsys.readouterr()
    assert evaluator.main(["--model", str(artifacts["arm"]), "--items", str(artifacts["mc"]),
                           "--cfg", "1.0"]) == 2  # one line, no traceback
    err = capsys.readouterr().err
    assert "ARM takes neither" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="ARM takes neither"):  # --debug: the error itself
        evaluator.main(["--model", str(artifacts["arm"]), "--items", str(artifacts["mc"]),
                        "--cfg", "1.0", "--debug"])


def test_acc_norm_divides_by_the_choice_length_in_characters():
    # " a" scores higher in total, but per character the long choice wins: the two metrics differ
    out = evaluator.choice_accuracy([[-2.0, -3.0]], [[" a", " much longer choice"]], [1])
    assert out["acc"] == 0.0 and out["acc_norm"] == 1.0
    assert out["acc_stderr"] == 0.0 and out["n"] == 1


def test_acc_norm_leaves_out_the_leading_space_as_lm_eval_does():
    # -1/1 < -1.9/2 without the space (lm-eval: len(choice), the space is target_delimiter);
    # counting it, -1/2 > -1.9/3 would pick " a"
    assert [evaluator.norm_length(c) for c in (" a", " bb", "c", "  d")] == [1, 2, 1, 2]
    out = evaluator.choice_accuracy([[-1.0, -1.9]], [[" a", " bb"]], [1])
    assert out["pred"] == [0] and out["pred_norm"] == [1] and out["acc_norm"] == 1.0


def test_acc_norm_through_evaluate_items(artifacts, monkeypatch):
    items = [{"id": "x", "query": "the", "choices": [" a", " much longer choice"], "gold": 1}]
    fake = [LikelihoodEstimate(-2.0, 0.0, 0, 1), LikelihoodEstimate(-3.0, 0.0, 0, 1)]
    monkeypatch.setattr(evaluator, "log_likelihoods", lambda lm, requests, s: fake[:len(requests)])
    lm = evaluator.load_model(artifacts["mdm"])
    result = evaluator.evaluate_items(lm, items, evaluator.EvalSettings(method="chain"))
    assert (result["acc"], result["acc_norm"]) == (0.0, 1.0)


def test_continuation_is_the_suffix_of_the_joint_encoding(artifacts):
    lm = evaluator.load_model(artifacts["mdm"])
    sp = lm.tokenizer
    prompt, cont = evaluator.split_request(sp, "the house of the", " river")
    assert prompt == [sp.bos_id()] + sp.encode("the house of the")
    assert prompt[1:] + cont == sp.encode("the house of the river")


def test_rows_are_cut_from_the_left_to_the_context():
    (prompt, cont), cut = evaluator.fit_context(([1, 5, 6, 7], [8, 9]), 4)
    assert cut and prompt == [6, 7] and cont == [8, 9]
    (prompt, cont), cut = evaluator.fit_context(([1, 5], [8, 9, 10, 11, 12]), 4)
    assert cut and prompt == [5] and cont == [10, 11, 12]  # >= 1 prompt token, continuation's tail
    assert evaluator.fit_context(([1], [2]), 4) == (([1], [2]), False)


def test_long_items_fit_the_model(artifacts):
    lm = evaluator.load_model(artifacts["arm"])
    item = {"id": "long", "query": " ".join(["the house"] * 40), "choices": [" river " * 30, " a"], "gold": 0}
    requests, cut = evaluator.item_requests(lm, item)
    assert cut >= 1 and all(len(p) + len(c) <= 33 and p for p, c in requests)  # ARM: context + 1
    result = evaluator.evaluate_items(lm, [item], evaluator.EvalSettings(method="chain"))
    assert result["truncated_requests"] == cut


def test_monte_carlo_results_do_not_depend_on_batching(artifacts):
    lm = evaluator.load_model(artifacts["mdm"])
    s = evaluator.EvalSettings(method="mc", mc=MonteCarloConfig(n_samples=8, block_size=4))
    together = evaluator.evaluate_items(lm, MC_ITEMS, s)["items"]
    alone = [evaluator.evaluate_items(lm, [item], s)["items"][0] for item in reversed(MC_ITEMS)]
    assert [r["loglik"] for r in together] == [r["loglik"] for r in reversed(alone)]


def test_wrong_method_or_mixed_items_fail_loudly(artifacts):
    lm = evaluator.load_model(artifacts["mdm"])
    with pytest.raises(ValueError, match="greedy decoding"):
        evaluator.evaluate_items(lm, GREEDY_ITEMS, evaluator.EvalSettings(method="mc"))
    with pytest.raises(ValueError, match="likelihood method"):
        evaluator.evaluate_items(lm, MC_ITEMS, evaluator.EvalSettings(method="greedy"))
    with pytest.raises(ValueError, match="multiple choice or all greedy"):
        evaluator.evaluate_items(lm, MC_ITEMS[:1] + GREEDY_ITEMS[:1], evaluator.EvalSettings())
    with pytest.raises(ValueError, match="exceeds the model's context"):
        evaluator.evaluate_items(lm, MC_ITEMS, evaluator.EvalSettings(method="chain", pad_to=64))
    with pytest.raises(ValueError, match="method must be one of"):
        evaluator.EvalSettings(method="exact")
