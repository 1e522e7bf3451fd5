"""The generate stage on tiny real artifacts (judge off: the judge has its own tests, and the shared
debug DAG runs the stage with it), its frontier reading, and its one-line input errors."""
import dataclasses
import json
import math

import pytest
import torch
import yaml

from model.artifact import save_artifact
from model.config import config_for
from model.transformer import Transformer
from pipeline_steps import generate, tokenizer
from pipeline_steps.core.errors import InputError
from pipeline_steps.core.tracking import NullTracker
from pipeline_steps.generate import GenerateConfig, Pair
from pipeline_steps.scoring import frontier
from tests.cli_errors import cli, one_line_error

MODELS = {"mdm_base": "mdm", "arm_c1/16k": "arm", "arm_base": "arm"}


@pytest.fixture(scope="module")
def pretrain_dir(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("generate_models")
    for k, (name, family) in enumerate(MODELS.items()):
        torch.manual_seed(k)
        folder = root / name if "/" in name else root / name / "16k"
        save_artifact(Transformer(config_for("16k", family, 320, context=32)), folder,
                      tiny_data["tokenizer"] / "tokenizer.model")
    other = root / "other_tokenizer"  # an ARM whose tokenizer differs from the rest
    tokenizer.run(tokenizer.TokenizerConfig(vocab_size=300), tiny_data["corpus"], other, NullTracker())
    save_artifact(Transformer(config_for("16k", "arm", 320, context=32)), root / "arm_other" / "16k",
                  other / "tokenizer.model")
    return root


def small(**changes) -> GenerateConfig:
    base = dict(pairs={"gap": Pair("mdm_base", "arm_c1/16k"), "equal": Pair("mdm_base", "arm_base")},
                n_prompts=4, prompt_tokens=4, length=8, ancestral_steps=(2, 4, 8, 16), confidence_steps=(2, 8),
                block_length=4, cfg_scales=(1.0,), cfg_steps=8, batch=4, timing_prompts=2, judge=False)
    return GenerateConfig(**{**base, **changes})


def math_results(path):
    """A gsm8k stage's results: Table 4's math column matches its cells by sampler, steps/token and w."""
    cell = dict(n=20, correct=0, too_long=0, answered=20, seconds_per_problem=0.1, main=False)
    cells = [{**cell, "family": "mdm", "set": "math", "sampler": "confidence", "steps_per_token": 0.25,
              "cfg_scale": 0.0, "accuracy": 0.5, "stderr": 0.1},
             {**cell, "family": "mdm", "set": "gsm8k", "sampler": "confidence", "steps_per_token": 0.25,
              "cfg_scale": 0.0, "accuracy": 0.9, "stderr": 0.01},
             {**cell, "family": "arm", "set": "math", "sampler": "kv_cache", "steps_per_token": None,
              "cfg_scale": 0.0, "accuracy": 0.75, "stderr": 0.05}]
    models = {f: {"group": f"math_{f}", "base": f"{f}_ft", "context": 128, "epochs": 3} for f in ("mdm", "arm")}
    path.write_text(json.dumps({"cells": cells, "models": models}))
    return path


def test_the_stage_writes_every_table_and_checks_its_exact_variants(tiny_data, pretrain_dir, tmp_path):
    metrics = generate.run(small(), tiny_data["corpus"], pretrain_dir, tmp_path, NullTracker(),
                           math_results=math_results(tmp_path / "math.json"))
    results = json.loads((tmp_path / "results.json").read_text())
    settings = results["settings"]
    mdm = [s for s in settings if s["family"] == "mdm"]
    assert len(mdm) == 4 + 2 + 1 + 1 + 1 and len(settings) == len(mdm) + 4  # two ARMs, cache on and off
    assert all(len(row) == 8 for s in settings for row in s["tokens"]) and len(settings[0]["tokens"]) == 4
    for arm in ("arm_c1/16k", "arm_base"):
        cached, plain = (s for s in settings if s["model"] == arm)
        assert cached["tokens"] == plain["tokens"] and cached["key"] == plain["key"]  # one sample set
        assert cached["cache_rows_differ"] == 0
    assert all(s["batch1_rows_differ"] == 0 for s in settings)  # batch 1 = the batch, on this CPU
    by_steps = {s["steps"]: s["forward_rows_per_sample"] for s in mdm if s["sampler"] == "ancestral" and
                not s["block_length"] and not s["cfg_scale"]}
    assert by_steps[16] < 16 and by_steps[2] == 2  # reuse skips ancestral's empty steps
    cfg_row = next(s for s in mdm if s["cfg_scale"] == 1.0)
    # CFG: two rows per computed step; the reveal draws are the same noise, so the same steps compute
    assert cfg_row["forward_rows_per_sample"] == 2 * by_steps[8]
    prompts = results["prompts"]
    assert len({p["doc"] for p in prompts}) == 4 and all(len(p["prompt"]) == 4 for p in prompts)
    sets = [json.loads(line)["set"] for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert sets[0] == frontier.REFERENCE and len(sets) == 1 + len(mdm) + 2
    for name in ("table3", "table4", "table13"):
        text = (tmp_path / f"{name}.md").read_text()
        assert "missing" in text and "nan" not in text.lower()
    assert "no CFG, 16 steps" in (tmp_path / "table13.md").read_text()
    rows = [line for line in (tmp_path / "table4.md").read_text().splitlines() if line.startswith("| ") and "(" in line]
    math_column = {line.split(" | ")[1]: line.rsplit(" | ", 1)[1].rstrip(" |") for line in rows if "real text" not in line}
    assert [v for k, v in math_column.items() if k.startswith("confidence steps=2 block=- w=0")] == ["50.0 ± 10.0"]
    assert set(v for k, v in math_column.items() if "cache" in k) == {"75.0 ± 5.0"}  # with and without the cache
    assert "90.0" not in (tmp_path / "table4.md").read_text()  # GSM8K cells are not Table 4's
    assert {v for k, v in math_column.items() if "block=4" in k} == {"not run (blocks)"}
    assert "math_mdm (from mdm_ft)" in (tmp_path / "table4.md").read_text() and "not run" in math_column.values()
    assert (tmp_path / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    assert all(math.isfinite(v) for v in metrics.values()) and "pair/gap/arm_seconds_1" in metrics


def judged_row(model, key, seconds, family="mdm", **extra):
    return {"model": model, "family": family, "key": key, "seconds_per_sample_1": seconds,
            "seconds_per_sample_batch": seconds / 4, **extra}


def reading(judged):
    settings = [judged_row("arm", "arm", 1.0, "arm", kv_cache=True), judged_row("arm", "arm", 2.0, "arm", kv_cache=False),
                judged_row("mdm", "fast", 0.5), judged_row("mdm", "slow", 3.0)]
    return frontier.pair_readings(small(pairs={"p": Pair("mdm", "arm")}), settings, judged)["p"]


def test_the_reading_takes_the_fastest_setting_at_the_arms_quality_and_the_verdict_flips():
    arm = {"gen_ppl": 100.0, "gen_ppl_se": 10.0, "entropy": 3.0}
    good = {"gen_ppl": 105.0, "gen_ppl_se": 9.0, "entropy": 3.05}
    r = reading({"arm": arm, "fast": good, "slow": good})
    assert r["match"]["key"] == "fast" and r["match"]["time_ratio_1"] == 0.5
    assert "0.50x the ARM's time" in frontier.reading_line(r)
    # the fast setting repeats itself (entropy 0.2 below): only the slow one still counts
    r = reading({"arm": arm, "fast": {**good, "entropy": 2.8}, "slow": good})
    assert r["match"]["key"] == "slow" and r["match"]["time_ratio_1"] == 3.0
    # worse than the ARM by more than its standard error: the frontiers do not cross
    r = reading({"arm": arm, "fast": {**good, "gen_ppl": 111.0}, "slow": {**good, "gen_ppl": 130.0}})
    assert r["match"] is None and r["closest"]["key"] == "fast"
    assert "do not cross" in frontier.reading_line(r)
    # closest: as good in perplexity with the smaller entropy gap, not the repetitive lowest perplexity
    r = reading({"arm": arm, "fast": {**good, "gen_ppl": 40.0, "entropy": 2.0}, "slow": {**good, "entropy": 3.2}})
    assert r["match"] is None and r["closest"]["key"] == "slow" and "(+0.20 nats)" in frontier.reading_line(r)


def write_params(tmp_path, **changes) -> str:
    section = {"pairs": {"gap": {"mdm": "mdm_base", "arm": "arm_base"}}, "n_prompts": 2, "prompt_tokens": 4,
               "length": 8, "ancestral_steps": [8], "confidence_steps": [], "first_hitting": False,
               "block_length": None, "cfg_scales": [], "cfg_steps": 8, "batch": 2, "timing_prompts": 1,
               "judge": False, **changes}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"generate": section}))
    return str(tmp_path / "params.yaml")


@pytest.mark.parametrize("changes,needles", [
    ({"pairs": {"gap": {"mdm": "mdm_gone", "arm": "arm_base"}}}, ["mdm_gone", "expected one model artifact"]),
    ({"pairs": {"gap": {"mdm": "arm_base", "arm": "arm_base"}}}, ["generate.pairs.gap.mdm", "expected 'mdm'"]),
    ({"length": 40}, ["prompt_tokens + length = 44", "context 32"]),
    ({"n_prompts": 500, "timing_prompts": 1}, ["val.jsonl", "n_prompts=500"]),
    ({"confidence_steps": [9]}, ["generate", "cannot exceed the 8 masked tokens"]),
    ({"pairs": {"gap": {"mdm": "mdm_base", "arm": "arm_other"}}}, ["generate.pairs.gap.arm", "another tokenizer"]),
])
def test_bad_inputs_are_one_line(tiny_data, pretrain_dir, tmp_path, changes, needles, capsys, monkeypatch):
    monkeypatch.setenv("SMDM_TRACKING", "off")
    argv = ["--params", write_params(tmp_path, **changes), "--corpus", str(tiny_data["corpus"]), "--models",
            str(pretrain_dir), "--out", str(tmp_path / "out"), "--metrics", str(tmp_path / "m.json")]
    assert generate.main(argv) == 2  # in-process: the stage CLI's guard, as `python -m` runs it
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and all(n in lines[0] for n in needles), lines
    assert not (tmp_path / "out").exists()


def test_a_bad_input_is_one_line_through_the_command_line(tiny_data, pretrain_dir, tmp_path):
    out = cli(["-m", "pipeline_steps.generate", "--params", write_params(tmp_path, length=40), "--corpus",
               str(tiny_data["corpus"]), "--models", str(pretrain_dir), "--out", str(tmp_path / "out"),
               "--metrics", str(tmp_path / "m.json")], tmp_path)
    one_line_error(out, "prompt_tokens + length = 44", "context 32")


def test_table3_reads_the_fine_tuned_pair_without_and_with_prompt_dropout(tiny_data, pretrain_dir, tmp_path):
    finetuned = tmp_path / "finetune"
    for k, name in enumerate(("sft_mdm", "sft_mdm_cfg")):
        torch.manual_seed(10 + k)
        save_artifact(Transformer(config_for("16k", "mdm", 320, context=32)), finetuned / name,
                      tiny_data["tokenizer"] / "tokenizer.model")
    cfg = small(ancestral_steps=(8,), confidence_steps=(), first_hitting=False, block_length=None)
    generate.run(cfg, tiny_data["corpus"], pretrain_dir, tmp_path / "out", NullTracker(), finetuned)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = {(r["role"], r["cfg_scale"]) for r in results["finetuned"]}
    assert rows == {("sft_mdm", 0.0), ("sft_mdm", 1.0), ("sft_mdm_cfg", 1.0)}  # none, unsupervised, standard
    assert all(len(r["tokens"]) == 4 for r in results["finetuned"])
    table3 = (tmp_path / "out" / "table3.md").read_text()
    assert "| finetune/sft_mdm_cfg | standard (prompt dropout in fine-tuning) | 1 |" in table3
    assert "| finetune/sft_mdm | unsupervised | 1 |" in table3 and "| finetune/sft_mdm | none | 0 |" in table3
    assert all(s["model"] in ("mdm_base", "arm_c1/16k", "arm_base") for s in results["settings"])  # Table 4 unchanged
    with pytest.raises(InputError, match=r"generate.sft_mdm_cfg: .*sft_gone: no fine-tuned model artifact"):
        generate.run(dataclasses.replace(cfg, sft_mdm_cfg="sft_gone"), tiny_data["corpus"], pretrain_dir,
                     tmp_path / "bad", NullTracker(), finetuned)
