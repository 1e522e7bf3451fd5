"""The temporal stage on tiny artifacts with local later text; its scores against hand computations."""
import json
import math

import pytest
import torch

from model.artifact import save_artifact
from model.config import config_for
from model.transformer import Transformer
from pipeline_steps import temporal
from pipeline_steps.core.errors import InputError
from pipeline_steps.core.tracking import NullTracker
from pipeline_steps.scoring import temporal_scoring as ts
from pipeline_steps.temporal import LaterText, TemporalConfig

# (group, size, family, val loss): the closest pair is mdm_c1/16k (4.9) with arm_c1/33k (4.8)
RUNS = [("arm_c1", "16k", "arm", 4.2), ("arm_c1", "33k", "arm", 4.8), ("mdm_c1", "16k", "mdm", 4.9),
        ("mdm_c1", "33k", "mdm", 5.6)]


@pytest.fixture(scope="module")
def inputs(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("temporal")
    for k, (group, size, family, loss) in enumerate(RUNS):
        torch.manual_seed(k)
        save_artifact(Transformer(config_for(size, family, 320, context=32)), root / "pretrain" / group / size,
                      tiny_data["tokenizer"] / "tokenizer.model", {"size": size, "run": {"val/loss": loss}})
        with open(root / "runs" / f"{group}.jsonl" if (root / "runs").exists() else _mk(root / "runs", group), "a") as f:
            f.write(json.dumps({"family": family, "size": size, "val/loss": loss}) + "\n")
    later = root / "later.jsonl"  # words the synthetic corpus never uses
    later.write_text("".join(json.dumps({"text": f"zebra quantum {i} vortex yonder kettle jukebox " * 3}) + "\n"
                             for i in range(6)))
    return {"root": root, "corpus": tiny_data["corpus"], "later": later}


def _mk(folder, group):
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{group}.jsonl"


def small(inputs, **changes) -> TemporalConfig:
    base = dict(same_sources=("synthetic",), documents=6, tokens=24, mc=temporal.MonteCarloConfig(n_samples=8, block_size=4),
                later={"new": LaterText(kind="local", pair_with=None, data_files=(str(inputs["later"]),), year=2030)})
    return TemporalConfig(**{**base, **changes})


def run(inputs, cfg, out):
    root = inputs["root"]
    return temporal.run(cfg, inputs["corpus"], root / "pretrain", root / "runs", out, NullTracker())


def test_per_token_scores_and_the_reading_rule():
    s = ts.per_token([10.0, 30.0, 20.0], [5, 10, 5])
    assert s["nll"] == pytest.approx(60 / 20) and s["ppl"] == pytest.approx(math.exp(3))
    # ratio estimator: residuals 10-15, 30-30, 20-15 -> sqrt(50 / (3 * 2)) / (20 / 3)
    assert s["stderr"] == pytest.approx(math.sqrt(50 / 6) / (20 / 3))

    def text(nll):
        return {"nll": nll, "stderr": 0.01}

    scores = {"same": {"arm": {"exact": text(3.0)}, "mdm": {"elbo": text(3.2), "chain": text(3.1)}},
              "later": {"arm": {"exact": text(3.6)}, "mdm": {"elbo": text(3.4), "chain": text(3.7)}}}
    r = ts.reading(scores, ["later"])["later"]
    assert r["arm"] == pytest.approx(0.6) and r["elbo"]["difference"] == pytest.approx(-0.4)
    assert r["elbo"]["verdict"] == "MDM degrades less" and r["chain"]["verdict"].startswith("no difference")
    assert ts.reading(scores, ["later"], {"later": "web is in the corpus"})["later"]["elbo"]["verdict"] == (
        "not read: web is in the corpus")


def test_a_paired_reading_uses_the_shared_chapters_and_their_differences():
    def text(keys, nlls, lengths):
        per = {"keys": keys, "lengths": lengths}
        s = ts.per_token(nlls, lengths)
        return {"arm": {**per, "exact": s}, "mdm": {**per, "elbo": s, "chain": s}}

    # chapters differ a lot in difficulty, which the pairing cancels: later = same + 0.5 nats a token
    same = text(["a", "b", "c", "x"], [10.0, 50.0, 30.0, 99.0], [10, 10, 10, 10])
    later = text(["c", "a", "b"], [35.0, 15.0, 55.0], [10, 10, 10])
    scores = {"same": same, "later": later}
    paired = ts.reading(scores, ["later"], paired={"later"})["later"]
    assert paired["pairs"] == 3 and paired["arm"] == pytest.approx(0.5) and paired["arm_stderr"] == pytest.approx(0)
    unpaired = ts.reading(scores, ["later"])["later"]
    assert unpaired["arm"] == pytest.approx(3.5 - 189 / 40) and unpaired["arm_stderr"] > 1  # x is in same only


def test_the_stage_picks_the_closest_pair_and_writes_table6(inputs, tmp_path):
    metrics = run(inputs, small(inputs), tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["models"] == {"mdm": "mdm_c1/16k", "arm": "arm_c1/33k"}
    assert results["val_loss"] == {"mdm": 4.9, "arm": 4.8}
    for text in ("same", "new"):
        for family in ("mdm", "arm"):
            assert results["scores"][text][family]["documents"] == 6
    for family, estimate in (("arm", "exact"), ("mdm", "elbo"), ("mdm", "chain")):
        change = metrics[f"new/{family}/{estimate}/nll"] - metrics[f"same/{family}/{estimate}/nll"]
        assert metrics[f"delta/new/{family if family == 'arm' else 'mdm_' + estimate}"] == pytest.approx(change)
    assert all(math.isfinite(v) for v in metrics.values())
    table = (tmp_path / "table6.md").read_text()
    assert "| same | 6 |" in table and "| new | 6 |" in table and "not in PAPER.md" in table
    named = run(inputs, small(inputs, mdm="mdm_c1/33k", arm="arm_c1/16k"), tmp_path / "named")
    assert named["same/mdm/elbo/nll"] != metrics["same/mdm/elbo/nll"]


def test_the_same_documents_as_later_text_change_nothing(inputs, tmp_path):
    """A limit where the answer is known: every estimate (the ELBO's noise is seeded by each
    request's tokens) gives the same per-token NLL twice, so each change is exactly 0."""
    same = tmp_path / "same.jsonl"
    same.write_text("".join(json.dumps({"text": json.loads(line)["text"]}) + "\n"
                            for line in (inputs["corpus"] / "val.jsonl").read_text().splitlines()))
    later = {"copy": LaterText(kind="local", pair_with=None, data_files=(str(same),))}
    metrics = run(inputs, small(inputs, later=later), tmp_path / "out")
    assert metrics["delta/copy/arm"] == metrics["delta/copy/mdm_elbo"] == metrics["delta/copy/mdm_chain"] == 0


def test_bad_inputs_are_one_line(inputs, tmp_path):
    with pytest.raises(InputError, match=r"val.jsonl: no val document of temporal.same_sources \['kjv'\]"):
        run(inputs, small(inputs, same_sources=("kjv",)), tmp_path)
    with pytest.raises(InputError, match=r"temporal.mdm: arm_c1/16k holds a 'arm' model, expected 'mdm'"):
        run(inputs, small(inputs, mdm="arm_c1/16k", arm="arm_c1/33k"), tmp_path)
    with pytest.raises(InputError, match=r"temporal.tokens = 40: \+ BOS exceeds .* context 32"):
        run(inputs, small(inputs, tokens=40), tmp_path)
    with pytest.raises(ValueError, match="name both mdm and arm, or neither"):
        TemporalConfig(mdm="mdm_c1/16k")
