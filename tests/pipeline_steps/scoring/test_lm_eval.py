"""lm-eval integration: our registered models report exactly what model/likelihood.py computes.

The in-process runs use `simple_evaluate` with a TaskManager that skips lm-eval's ~15k built-in
tasks; one slow test goes through the console script. `--batch_size 1` on both sides makes every
forward pass a single row, so equality is bit for bit: float results of a batched matmul may
depend on what else shares the batch.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch

pytest.importorskip("lm_eval")  # the `eval` extra

from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model, model_registry  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from lm_eval.utils import sanitize_model_name  # noqa: E402

from model.artifact import load_artifact, save_artifact  # noqa: E402
from model.config import config_for  # noqa: E402
from model.likelihood import (  # noqa: E402
    MonteCarloConfig,
    arm_greedy_match,
    arm_log_likelihood,
    mdm_chain_rule_log_likelihood,
    mdm_elbo_log_likelihood,
    mdm_greedy_decode,
    mdm_l_uniform_log_likelihood,
)
from model.transformer import Transformer  # noqa: E402
from pipeline_steps.data.task_sources.items import greedy_item, math_item, mc_item, write_jsonl  # noqa: E402
from pipeline_steps.scoring.evaluator import choice_accuracy, split_request
from pipeline_steps.scoring.lm_eval_models import SmdmARM, SmdmMDM, encode_request  # noqa: E402
from pipeline_steps.scoring.lm_eval_tasks import write_task_yamls  # noqa: E402

CONTEXT = 64
LONG_QUERY = " ".join(["the house of the river and the light of her house"] * 8) + "."  # > CONTEXT tokens
MC_ITEMS = [
    mc_item("mc-0", "the house of the", [" river", " light", " house"], 0),
    mc_item("mc-1", "she was with", [" her", " the river", " one"], 1),
    mc_item("mc-2", "Question: which one is it?\nAnswer:", [" the light", " all of them", " not"], 2),
    mc_item("mc-3", "it is", [" that", " this"], 1),
    mc_item("mc-4", LONG_QUERY, [" river", " house of the light"], 0),
]
GREEDY_QUERIES = ["the house of the", "she was with", "the river and the", "he was", "there one all",
                  "they were", "at the light", "which is"]


@pytest.fixture(scope="module")
def artifacts(tiny_data, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lm_eval_artifacts")
    folders = {}
    for family in ("mdm", "arm"):
        torch.manual_seed(0)
        model = Transformer(config_for("16k", family, 320, context=CONTEXT))
        folders[family] = save_artifact(model, root / family, tiny_data["tokenizer"] / "tokenizer.model")
    return folders


@pytest.fixture(scope="module")
def sp(artifacts) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(artifacts["mdm"] / "tokenizer.model"))


def decode_greedy(family: str, model, requests):
    return (mdm_greedy_decode if family == "mdm" else arm_greedy_match)(model, requests, max_batch=1)


def greedy_targets(artifacts, sp) -> list[dict]:
    """Word items plus, per family, items whose target is that model's own greedy token.

    An untrained model predicts byte-fallback tokens; a printable one is a one-character target
    that re-encodes to that very token, so each family gets some items right (acc > 0).
    """
    items = [greedy_item(f"w-{i}", q, " house") for i, q in enumerate(GREEDY_QUERIES[:2])]
    for family, folder in artifacts.items():
        model, _ = load_artifact(folder)
        for i, query in enumerate(GREEDY_QUERIES):
            request, _ = encode_request(sp, query, " house", CONTEXT)  # a one-token continuation
            (token,) = decode_greedy(family, model, [request])[0].decoded
            piece = sp.id_to_piece(token)
            if not (piece.startswith("<0x") and 0x21 <= int(piece[3:5], 16) < 0x7F):
                continue
            target = chr(int(piece[3:5], 16))
            if encode_request(sp, query, target, CONTEXT)[0][1] == [token]:
                items.append(greedy_item(f"{family}-{i}", query, target))
    assert {item["id"].split("-")[0] for item in items} >= {"mdm", "arm"}, items
    return items


@pytest.fixture(scope="module")
def tasks(artifacts, sp, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("lm_eval_tasks")
    greedy = greedy_targets(artifacts, sp)
    math = [math_item("m", "1+1?", "2")]
    for name, items in (("tiny_mc", MC_ITEMS), ("tiny_word", greedy), ("tiny_math", math)):
        (root / "tasks" / name).mkdir(parents=True)
        write_jsonl(root / "tasks" / name / "test.jsonl", items)
    names = write_task_yamls(root / "tasks", root / "yamls", cache_dir=root / "datasets_cache")
    return {"root": root, "yamls": root / "yamls", "names": names, "mc": MC_ITEMS, "greedy": greedy}


def test_task_yamls_cover_likelihood_tasks_only_and_replace_stale_ones(tasks, tmp_path):
    assert tasks["names"] == ["smdm_tiny_mc", "smdm_tiny_word"]  # math is a generation task
    (tmp_path / "smdm_gone.yaml").write_text("task: smdm_gone\n")
    assert write_task_yamls(tasks["root"] / "tasks", tmp_path, splits=("test", "heldout")) == tasks["names"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smdm_tiny_mc.yaml", "smdm_tiny_word.yaml"]
    text = (tmp_path / "smdm_tiny_mc.yaml").read_text()
    assert str((tasks["root"] / "tasks" / "tiny_mc" / "test.jsonl").resolve()) in text


def test_encode_request_splits_at_the_context_and_cuts_rows_from_the_left(sp):
    bos = sp.bos_id()
    prompt, cont = split_request(sp, "the house of", " the river")
    assert prompt[1:] + cont == sp.encode("the house of the river") and prompt[0] == bos
    prompt, cont = split_request(sp, "the hou", "se")  # a merge across the boundary
    assert sp.encode("the house")[:len(prompt) - 1] != prompt[1:] and cont == sp.encode("se")
    assert encode_request(sp, "", " river", 8) == (([bos], sp.encode(" river")), False)
    (prompt, cont), cut = encode_request(sp, LONG_QUERY, " river", 20)
    assert cut and len(prompt) + len(cont) == 20 and [bos, *sp.encode(LONG_QUERY)][-len(prompt):] == prompt
    (prompt, cont), cut = encode_request(sp, "she was", LONG_QUERY, 20)  # the continuation alone overflows
    assert cut and prompt == sp.encode("she was")[-1:] and cont == sp.encode("she was" + LONG_QUERY)[-19:]


def test_encode_request_is_the_evaluators_rule(sp):
    """Our lm-eval models and pipeline_steps/scoring/evaluator.py must score the same token sequences."""
    evaluator = pytest.importorskip("pipeline_steps.scoring.evaluator")
    pairs = [(it["query"], c) for it in MC_ITEMS for c in it["choices"]]
    pairs += [("the hou", "se"), ("she was", LONG_QUERY), ("", " river"), ("it is", " \n the")]
    for limit in (8, 20, CONTEXT, CONTEXT + 1, 1000):
        for query, continuation in pairs:
            ours = encode_request(sp, query, continuation, limit)
            assert ours == evaluator.fit_context(evaluator.split_request(sp, query, continuation), limit)


def evaluate(model: str, model_args: dict, tasks: dict, batch_size: int = 1) -> dict:
    return simple_evaluate(model=model, model_args=model_args, tasks=tasks["names"], batch_size=batch_size,
                           device="cpu", task_manager=TaskManager(include_path=str(tasks["yamls"]),
                                                                  include_defaults=False),
                           log_samples=True, bootstrap_iters=0)


def direct(model_name: str, args: dict, folder: Path, sp, items: list[dict]) -> tuple[list, list]:
    """(log-likelihoods, greedy correctness) of every (item, choice) straight from model/likelihood.py."""
    model, _ = load_artifact(folder)
    pad_to = args.get("pad_to")
    max_tokens = pad_to or CONTEXT + (model_name == "smdm_arm")
    requests = [encode_request(sp, it["query"], c, max_tokens)[0]
                for it in items for c in (it["choices"] if "choices" in it else [it["target"]])]
    if model_name == "smdm_arm":
        lls = arm_log_likelihood(model, requests, max_batch=1)
        greedy = arm_greedy_match(model, requests, max_batch=1)
        return [e.logprob for e in lls], [g.correct for g in greedy]
    common = dict(cfg_scale=args.get("cfg_scale", 0.0), pad_to=pad_to, max_batch=1)
    mc = MonteCarloConfig(n_samples=args.get("mc_samples", 16), block_size=args.get("mc_block", 8),
                          seed=args.get("seed", 0))
    if args["method"] == "chain":
        lls = mdm_chain_rule_log_likelihood(model, requests, **common)
    else:
        estimator = mdm_elbo_log_likelihood if args["method"] == "mc" else mdm_l_uniform_log_likelihood
        lls = estimator(model, requests, mc, **common)
    return [e.logprob for e in lls], [g.correct for g in mdm_greedy_decode(model, requests, **common)]


CASES = [
    ("smdm_mdm", {"method": "chain"}),
    ("smdm_mdm", {"method": "mc", "mc_samples": 16, "mc_block": 8, "seed": 3}),
    ("smdm_mdm", {"method": "l_uniform", "mc_samples": 16, "mc_block": 8, "cfg_scale": 0.5,
                  "pad_to": CONTEXT}),
    ("smdm_arm", {}),
]


@pytest.mark.parametrize("model_name,args", CASES,
                         ids=["mdm-chain", "mdm-mc", "mdm-l_uniform-cfg-pad", "arm"])
def test_lm_eval_reports_the_estimators_values_and_accuracy(model_name, args, artifacts, sp, tasks):
    folder = artifacts[model_name.removeprefix("smdm_")]
    out = evaluate(model_name, {"pretrained": str(folder), **args}, tasks)
    for task, kind in (("smdm_tiny_mc", "mc"), ("smdm_tiny_word", "greedy")):
        items = tasks[kind]
        samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
        reported = [resp for s in samples for resp in s["filtered_resps"]]
        lls, greedy = direct(model_name, args, folder, sp, items)
        assert [r[0] for r in reported] == lls  # exact: same requests, same single-row passes
        assert [r[1] for r in reported] == greedy
        metrics = out["results"][task]
        if kind == "greedy":
            assert metrics["acc,none"] == pytest.approx(np.mean(greedy))
            plain = not (args.get("cfg_scale") or args.get("pad_to"))  # how the targets were found
            assert np.mean(greedy) > 0 or not plain
            continue
        offsets = np.cumsum([0] + [len(it["choices"]) for it in items])
        per_item = [lls[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
        ours = choice_accuracy(per_item, [it["choices"] for it in items], [it["gold"] for it in items])
        golds = [it["gold"] for it in items]
        for key, pred in (("acc", ours["pred"]), ("acc_norm", ours["pred_norm"])):  # per item, exactly
            assert [s[key] for s in samples] == [float(p == g) for p, g in zip(pred, golds)]
        assert (metrics["acc,none"], metrics["acc_norm,none"]) == (ours["acc"], ours["acc_norm"])


def test_task_yaml_scores_query_space_choice_and_normalises_as_our_evaluator(tasks):
    """Stock lm-eval: choices without the leading space, target_delimiter " ", acc_norm over
    len(choice); fixed log-likelihoods where counting the space would flip acc_norm."""
    manager = TaskManager(include_path=str(tasks["yamls"]), include_defaults=False)
    task = manager.load("smdm_tiny_mc")["tasks"]["smdm_tiny_mc"]
    doc = {"id": "x", "query": "it is", "choices": [" a", " bb", " \"it's\" [1, 2]"], "gold": 1}
    assert task.doc_to_choice(doc) == ["a", "bb", "\"it's\" [1, 2]"]
    requests = task.construct_requests(doc, task.doc_to_text(doc))
    assert [r.args for r in requests] == [("it is", c) for c in doc["choices"]]  # what we score
    lls = [-1.0, -1.9, -100.0]
    ours = choice_accuracy([lls], [doc["choices"]], [1])
    lm_eval = task.process_results(doc, [(ll, False) for ll in lls])
    assert ours["pred_norm"] == [1] and (lm_eval["acc"], lm_eval["acc_norm"]) == (ours["acc"], ours["acc_norm"])


def rolling(lm, texts: list[str]) -> list[float]:
    return lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (t,), 0) for t in texts])


def test_rolling_loglikelihood_predicts_every_token_once_in_full_windows(artifacts, sp):
    text = sp.decode(sp.encode(LONG_QUERY)[:100])
    tokens, bos = sp.encode(text), sp.bos_id()
    n = len(tokens)
    assert CONTEXT + 1 < n <= 2 * (CONTEXT - 1)  # two windows for either family
    arm = SmdmARM(pretrained=str(artifacts["arm"]), batch_size="1", device="cpu")
    windows = [([bos], tokens[:CONTEXT]), (tokens[n - CONTEXT - 1:CONTEXT], tokens[CONTEXT:])]
    expected = sum(e.logprob for e in arm_log_likelihood(arm.model, windows, max_batch=1))
    short = arm_log_likelihood(arm.model, [([bos], tokens[:10])], max_batch=1)[0].logprob
    assert rolling(arm, [text, sp.decode(tokens[:10]), ""]) == [expected, short, 0.0]

    mdm = SmdmMDM(pretrained=str(artifacts["mdm"]), method="chain", mc_samples=16, mc_block=16, seed=1,
                  batch_size="1")
    mc = MonteCarloConfig(n_samples=16, block_size=16, seed=1)  # rolling is the ELBO, even for chain
    windows = [([bos], tokens[:CONTEXT - 1]), (tokens[n - CONTEXT:CONTEXT - 1], tokens[CONTEXT - 1:])]
    expected = sum(e.logprob for e in mdm_elbo_log_likelihood(mdm.model, windows, mc, max_batch=1))
    assert rolling(mdm, [text]) == [expected]


def test_models_register_beside_the_builtins_and_refuse_what_they_cannot_do(artifacts):
    assert get_model("smdm_mdm") is SmdmMDM and get_model("smdm_arm") is SmdmARM
    assert "hf" in model_registry.keys()  # registering did not hide lm-eval's own models
    mdm = SmdmMDM(pretrained=str(artifacts["mdm"]), device="cuda:0")  # falls back to the CPU here
    assert str(next(mdm.model.parameters()).device) == "cpu" or torch.cuda.is_available()
    with pytest.raises(ValueError, match="method"):
        SmdmMDM(pretrained=str(artifacts["mdm"]), method="elbo")
    for bad in (CONTEXT + 1, 1):
        with pytest.raises(ValueError, match="pad_to"):
            SmdmMDM(pretrained=str(artifacts["mdm"]), pad_to=bad)
    with pytest.raises(ValueError, match="cfg_scale"):
        SmdmMDM(pretrained=str(artifacts["mdm"]), cfg_scale=-1)
    with pytest.raises(ValueError, match="'mdm' model"):
        SmdmARM(pretrained=str(artifacts["mdm"]))
    with pytest.raises(TypeError):
        SmdmARM(pretrained=str(artifacts["arm"]), metod="chain")  # a misspelt model arg fails loudly


def test_console_script_writes_task_yamls_offline(tasks, tmp_path, monkeypatch, capsys):
    from pipeline_steps.scoring import lm_eval_cli

    for name in ("HF_HOME", "HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(name, "")  # records the original, so what main() sets is undone after
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    lm_eval_cli.main(["--write_tasks", str(tasks["root"] / "tasks"), "yamls"])
    assert capsys.readouterr().out.split() == tasks["names"]
    assert sorted(p.stem for p in (tmp_path / "yamls").iterdir()) == tasks["names"]
    assert os.environ["HF_HOME"] == str(tmp_path / "cache" / "huggingface")
    assert os.environ["HF_DATASETS_OFFLINE"] == os.environ["HF_HUB_OFFLINE"] == "1"


@pytest.mark.slow
def test_console_script_runs_offline_and_names_outputs_after_the_artifact(artifacts, sp, tasks, tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "pipeline_steps.scoring.lm_eval_cli", "--model", "smdm_mdm",
               "--model_args", f"pretrained={artifacts['mdm']},method=chain", "--tasks", "smdm_tiny_mc",
               "--include_path", str(tasks["yamls"]), "--device", "cpu", "--batch_size", "8",
               "--output_path", str(tmp_path / "out"), "--limit", "3", "--log_samples"]
    done = subprocess.run(command, env=env, cwd=Path(__file__).parents[3], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (folder,) = (tmp_path / "out").iterdir()
    assert folder.name == sanitize_model_name(str(artifacts["mdm"]))  # after pretrained=, not a random name
    (samples_file,) = folder.glob("samples_smdm_tiny_mc_*.jsonl")
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    samples.sort(key=lambda s: s["doc_id"])
    reported = [float(r[0]) for s in samples for r in s["filtered_resps"]]
    lls, _ = direct("smdm_mdm", {"method": "chain"}, artifacts["mdm"], sp, MC_ITEMS[:3])
    assert reported == pytest.approx(lls, rel=1e-5)  # batch 8: same requests, other batch neighbours
