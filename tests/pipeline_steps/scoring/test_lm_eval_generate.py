"""lm-eval `generate_until`: our models return what model/sampling.py generates, decoded and cut.

A local generation task (output_type generate_until, exact_match) whose stop strings are letters
taken from the models' own greedy texts, so `until` really cuts. The reference is a direct
generate_mdm / generate_arm call with one row per pass and a fresh generator seeded like the model
arg; lm-eval's batch 1 and 8 must both equal it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("lm_eval")  # the `eval` extra

from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from model.artifact import load_artifact  # noqa: E402
from model.sampling import generate_arm, generate_mdm  # noqa: E402
from pipeline_steps.data.task_sources.items import write_jsonl  # noqa: E402
from pipeline_steps.scoring.lm_eval_models import SmdmARM, SmdmMDM  # noqa: E402
from tests.pipeline_steps.scoring import test_lm_eval as likelihood_tests  # noqa: E402

artifacts, sp = likelihood_tests.artifacts, likelihood_tests.sp  # the same fixtures: untrained tiny models
CONTEXT, LONG_QUERY = likelihood_tests.CONTEXT, likelihood_tests.LONG_QUERY

QUERIES = ["the light of her", "they were at the", "which is not", "all of them", "the house of the", "he was"]
MAX_GEN = 12
TASK = "smdm_tiny_gen"


def reference(family: str, folder: Path, sp, prompts: list[list[int]], length: int, *, seed: int = 0,
              temperature: float = 0.0, **settings) -> list[str]:
    """Uncut texts straight from model/sampling.py, one row per pass, EOS dropped."""
    model, _ = load_artifact(folder)
    common = dict(generator=torch.Generator().manual_seed(seed), temperature=temperature, eos_id=sp.eos_id(),
                  max_batch=1)
    if family == "mdm":
        settings = {"sampler": "confidence", "steps": length, **settings}
        rows = generate_mdm(model, prompts, length, **common, **settings)
    else:
        rows = generate_arm(model, prompts, length, **common, **settings)
    return [sp.decode([t for t in row if t != sp.eos_id()]) for row in rows]


def encode(sp, query: str) -> list[int]:
    return [sp.bos_id(), *sp.encode(query)]


def cut(text: str, until: list[str]) -> str:
    return text[:min([text.find(s) for s in until if s in text], default=len(text))]


def inner_letter(texts: list[str]) -> str:
    """A letter whose first occurrence in some text is past its start: a stop string that cuts."""
    return next(ch for text in texts for i, ch in enumerate(text) if ch.isascii() and ch.isalpha()
                and text.index(ch) == i > 0)


@pytest.fixture(scope="module")
def gen_task(artifacts, sp, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("lm_eval_gen")
    prompts = [encode(sp, q) for q in QUERIES]
    assert max(Counter(map(len, prompts)).values()) >= 4  # prompts of equal length share a batch of 8
    greedy = {f: reference(f, artifacts[f], sp, prompts, MAX_GEN) for f in ("mdm", "arm")}
    until = [inner_letter(greedy["mdm"]), inner_letter(greedy["arm"])]
    targets = [cut(greedy["mdm"][0], until), cut(greedy["arm"][1], until)] + [" house"] * 4  # em > 0 for both
    items = [{"id": f"g-{i}", "query": query, "target": target} for i, (query, target) in enumerate(zip(QUERIES, targets))]
    write_jsonl(root / "test.jsonl", items)
    config = {"task": TASK, "dataset_path": "json", "output_type": "generate_until", "test_split": "test",
              "dataset_kwargs": {"data_files": {"test": str(root / "test.jsonl")}, "cache_dir": str(root / "cache")},
              "doc_to_text": "query", "doc_to_target": "target",
              "generation_kwargs": {"until": until, "max_gen_toks": MAX_GEN, "do_sample": False},
              "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
              "metadata": {"version": 1}}
    (root / "yamls").mkdir()
    (root / "yamls" / f"{TASK}.yaml").write_text(yaml.safe_dump(config))
    return {"yamls": root / "yamls", "until": until, "targets": targets, "greedy": greedy, "prompts": prompts}


CASES = [  # model, model args, gen_kwargs overriding the task's, batch sizes
    ("smdm_mdm", {}, None, (1, 8)),
    ("smdm_mdm", {"sampler": "ancestral", "steps": 6, "block_length": 4, "cfg_scale": 0.5, "seed": 3},
     {"do_sample": True, "temperature": 1.0}, (8,)),
    ("smdm_arm", {}, None, (1, 8)),
    ("smdm_arm", {"top_k": 20, "seed": 5, "temperature": 1.0}, {"do_sample": True}, (8,)),  # the model arg's temperature
]


@pytest.mark.parametrize("model_name,args,gen_kwargs,batch_sizes", CASES,
                         ids=["mdm-greedy", "mdm-ancestral-blocks-cfg", "arm-greedy", "arm-top_k"])
def test_generate_until_returns_the_samplers_texts_cut_at_until(model_name, args, gen_kwargs, batch_sizes,
                                                                 artifacts, sp, gen_task):
    family = model_name.removeprefix("smdm_")
    settings = {k: v for k, v in args.items() if k not in ("seed", "temperature")}
    temperature = (gen_kwargs or {}).get("temperature", args.get("temperature", 0.0))
    raw = reference(family, artifacts[family], sp, gen_task["prompts"], MAX_GEN, seed=args.get("seed", 0),
                    temperature=temperature, **settings)
    expected = [cut(text, gen_task["until"]) for text in raw]
    if not gen_kwargs:
        assert raw == gen_task["greedy"][family] and expected != raw  # the stop strings did cut
    for batch_size in batch_sizes:  # rows draw their own noise: batch 1 and 8 give the same texts
        out = simple_evaluate(model=model_name, model_args={"pretrained": str(artifacts[family]), **args},
                              tasks=[TASK], batch_size=batch_size, device="cpu", gen_kwargs=gen_kwargs,
                              task_manager=TaskManager(include_path=str(gen_task["yamls"]), include_defaults=False),
                              log_samples=True, bootstrap_iters=0)
        samples = sorted(out["samples"][TASK], key=lambda s: s["doc_id"])
        assert [s["resps"][0][0] for s in samples] == expected
        hits = [text == target for text, target in zip(expected, gen_task["targets"])]
        assert out["results"][TASK]["exact_match,none"] == pytest.approx(sum(hits) / len(hits))
        assert gen_kwargs or any(hits)


def requests(*pairs) -> list[Instance]:
    return [Instance("generate_until", {}, (context, kwargs), i) for i, (context, kwargs) in enumerate(pairs)]


def test_sampled_repeats_differ_and_no_request_depends_on_the_others(artifacts, sp):
    arm = SmdmARM(pretrained=str(artifacts["arm"]), batch_size=8, seed=2)
    hot, cold = {"max_gen_toks": 8, "temperature": 1.0}, {"max_gen_toks": 8, "do_sample": False, "temperature": 1.0}
    texts = arm.generate_until(requests(("she was", hot), ("he was", cold), ("she was", hot), ("he was", cold)))
    assert texts[0] != texts[2] and texts[1] == texts[3]  # lm-eval's repeats: copies of a sampled request differ
    assert texts[0] == reference("arm", artifacts["arm"], sp, [encode(sp, "she was")], 8, seed=2, temperature=1.0)[0]
    assert arm.generate_until(requests(("he was", cold))) == texts[1:2]
    assert arm.generate_until(requests(("she was", hot))) == texts[:1]


def test_prompts_are_cut_from_the_left_once_the_generation_is_capped_to_the_context(artifacts, sp):
    prompt = encode(sp, LONG_QUERY)
    assert len(prompt) > CONTEXT
    arm = SmdmARM(pretrained=str(artifacts["arm"]), batch_size=1)
    (text,) = arm.generate_until(requests((LONG_QUERY, {"max_gen_toks": 1000})))
    assert text == reference("arm", artifacts["arm"], sp, [prompt[-1:]], CONTEXT)[0]  # 1 + 64 = context + 1
    mdm = SmdmMDM(pretrained=str(artifacts["mdm"]), batch_size=1, block_length=8)
    (text,) = mdm.generate_until(requests((LONG_QUERY, {"max_gen_toks": 1000})))
    assert text == reference("mdm", artifacts["mdm"], sp, [prompt[-8:]], 56, block_length=8)[0]  # whole blocks


def test_generation_settings_that_cannot_work_fail_in_one_line(artifacts):
    mdm = SmdmMDM(pretrained=str(artifacts["mdm"]), steps=32)
    for kwargs, match in (({"max_gen_toks": 8}, "model args sampler=confidence, steps=32.*generating 8 tokens"),
                          ({"max_gen_toks": 8, "top_p": 0.9}, "gen_kwargs 'top_p'"),
                          ({"max_gen_toks": 0}, "max_gen_toks must be positive"),
                          ({"temperature": float("nan")}, "temperature must be finite")):
        with pytest.raises(ValueError, match=match):
            mdm.generate_until(requests(("the", kwargs)))
    with pytest.raises(ValueError, match="block_length=5"):
        SmdmMDM(pretrained=str(artifacts["mdm"]), block_length=5).generate_until(requests(("the", {"max_gen_toks": 8})))
    for bad, match in (({"sampler": "greedy"}, "sampler"), ({"temperature": -1}, "temperature")):
        with pytest.raises(ValueError, match=match):
            SmdmMDM(pretrained=str(artifacts["mdm"]), **bad)
    for bad, match in (({"top_p": 0}, "top_p"), ({"top_k": 0}, "top_k")):
        with pytest.raises(ValueError, match=match):
            SmdmARM(pretrained=str(artifacts["arm"]), **bad)


@pytest.mark.slow
def test_console_script_runs_a_generation_task(artifacts, sp, gen_task, tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "pipeline_steps.scoring.lm_eval_cli", "--model", "smdm_arm",
               "--model_args", f"pretrained={artifacts['arm']}", "--tasks", TASK,
               "--include_path", str(gen_task["yamls"]), "--device", "cpu", "--batch_size", "8",
               "--output_path", str(tmp_path / "out"), "--log_samples"]
    done = subprocess.run(command, env=env, cwd=Path(__file__).parents[3], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (samples_file,) = (tmp_path / "out").glob(f"*/samples_{TASK}_*.jsonl")
    samples = sorted((json.loads(line) for line in samples_file.read_text().splitlines()), key=lambda s: s["doc_id"])
    assert [s["resps"][0][0] for s in samples] == [cut(t, gen_task["until"]) for t in gen_task["greedy"]["arm"]]


def test_do_sample_without_a_temperature_samples_at_one():
    from pipeline_steps.scoring.lm_eval_generation import generation_settings

    assert generation_settings({"do_sample": True}, 0.0)[2] == 1.0
    assert generation_settings({"do_sample": True}, 0.7)[2] == 0.7  # the model arg when it samples
    assert generation_settings({"do_sample": True, "temperature": 0.0}, 0.0)[2] == 0.0  # the task's own
    assert generation_settings({"do_sample": False, "temperature": 0.9}, 0.5)[2] == 0.0
