"""The `shards` stage: every token stored in order, self-describing meta.json, no half output."""
import json
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
