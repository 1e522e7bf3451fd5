"""The `shards` stage: every token stored in order, self-describing meta.json, no half output."""
import json
import math
import shutil

import numpy as np
import pytest
import sentencepiece as spm

from pipeline_steps import shards
from pipeline_steps.core.tracking import NullTracker
from pipeline_steps.training.token_windows import open_split


def test_every_token_is_stored_in_order(tiny_data):
    sp = spm.SentencePieceProcessor(model_file=str(tiny_data["tokenizer"] / "tokenizer.model"))
    texts = [json.loads(line)["text"] for line in open(tiny_data["corpus"] / "train.jsonl")]
    expected = np.concatenate([[sp.bos_id(), *sp.encode(t), sp.eos_id()] for t in texts])
    stream = open_split(tiny_data["shards"], "train")
    assert len(stream.parts) > 1  # several shards, read back as one stream
    np.testing.assert_array_equal(stream.read(0, stream.n_tokens), expected)
    meta = json.loads((tiny_data["shards"] / "meta.json").read_text())
    assert meta["splits"]["train"]["tokens"] == expected.size
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 320


def test_empty_split_is_an_error(tiny_data, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_data["corpus"], corpus)
    (corpus / "val.jsonl").write_text("")
    with pytest.raises(ValueError, match="val.jsonl"):
        shards.run(shards.ShardsConfig(), corpus, tiny_data["tokenizer"], tmp_path / "out", NullTracker())
    assert not (tmp_path / "out").exists()  # nothing half-written



def test_unigram_loss_is_the_val_cross_entropy_under_add_one_train_frequencies(tiny_data, tmp_path):
    metrics = shards.run(shards.ShardsConfig(shard_tokens=5000, workers=1), tiny_data["corpus"],
                         tiny_data["tokenizer"], tmp_path / "shards", NullTracker())
    train, val = (open_split(tiny_data["shards"], s) for s in ("train", "val"))
    train_tokens, val_tokens = train.read(0, train.n_tokens).tolist(), val.read(0, val.n_tokens).tolist()
    vocab = 320
    naive = -sum(math.log((train_tokens.count(t) + 1) / (len(train_tokens) + vocab)) for t in val_tokens)
    naive /= len(val_tokens)
    assert metrics["val/unigram_loss"] == pytest.approx(naive, rel=1e-12)
    assert 1 < metrics["val/unigram_loss"] < math.log(vocab)  # real text: below a uniform guess
