import json
import shutil

import numpy as np
import pytest
import sentencepiece as spm

from pipeline_steps import shards, tokenizer
from pipeline_steps.core.tracking import NullTracker
from pipeline_steps.training.token_windows import (
    ShardError,
    StepBatches,
    n_windows,
    open_split,
    unused_tail_tokens,
    validation_windows,
    window,
)


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


def test_windows_cover_the_stream_and_the_tail_is_counted(tiny_data):
    stream = open_split(tiny_data["shards"], "train")
    seq = 16
    n = n_windows(stream, seq)
    assert n * seq + unused_tail_tokens(stream, seq) + 1 == stream.n_tokens
    joined = np.concatenate([window(stream, i, seq)[:-1] for i in range(n)])
    np.testing.assert_array_equal(joined, stream.read(0, n * seq))


def test_ranks_read_disjoint_windows_that_make_up_the_global_batch(tiny_data):
    stream = open_split(tiny_data["shards"], "train")
    single = StepBatches(stream, 16, global_batch=8, total_steps=30, seed=1)
    ranks = [StepBatches(stream, 16, global_batch=8, total_steps=30, seed=1, rank=r, world=2) for r in (0, 1)]
    for step in (0, 5, single.steps_per_epoch + 2):  # also across an epoch boundary
        a, b = (set(r.window_indices(step)) for r in ranks)
        assert not a & b and a | b == set(single.window_indices(step))
        np.testing.assert_array_equal(np.concatenate([r.batch(step) for r in ranks]), single.batch(step))


def test_loader_resumes_at_a_step_without_replay(tiny_data):
    stream = open_split(tiny_data["shards"], "train")
    full = list(StepBatches(stream, 16, 4, total_steps=12, seed=3))
    resumed = list(StepBatches(stream, 16, 4, total_steps=12, seed=3, start_step=lambda: 7))
    assert len(resumed) == 5
    for got, want in zip(resumed, full[7:]):
        assert np.array_equal(got, want)


def test_meta_that_disagrees_with_the_tokenizer_is_an_error(tiny_data, tmp_path):
    with pytest.raises(ShardError, match="tokenizer_sha256"):
        open_split(tiny_data["shards"], "train", tokenizer_sha256="0" * 64)
    broken = tmp_path / "shards"
    shutil.copytree(tiny_data["shards"], broken)
    (broken / "train_0000.bin").write_bytes(b"\x00\x00")
    with pytest.raises(ShardError, match="train_0000.bin"):
        open_split(broken, "train")


def test_empty_split_is_an_error(tiny_data, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_data["corpus"], corpus)
    (corpus / "val.jsonl").write_text("")
    with pytest.raises(ValueError, match="val.jsonl"):
        shards.run(shards.ShardsConfig(), corpus, tiny_data["tokenizer"], tmp_path / "out", NullTracker())
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_validation_windows_are_fixed(tiny_data):
    stream = open_split(tiny_data["shards"], "val")
    assert np.array_equal(validation_windows(stream, 16, 4), validation_windows(stream, 16, 4))
    with pytest.raises(ValueError, match="requested"):
        validation_windows(stream, 16, 10_000)


def test_tokenizer_from_a_file_and_bad_configs(tiny_data, tmp_path):
    cfg = tokenizer.TokenizerConfig(kind="file", path=str(tiny_data["tokenizer"] / "tokenizer.model"))
    tokenizer.run(cfg, tiny_data["corpus"], tmp_path / "tok", NullTracker())
    meta = json.loads((tmp_path / "tok" / "meta.json").read_text())
    assert meta["vocab_size"] == 320 and (meta["bos_id"], meta["eos_id"]) == (1, 2)
    with pytest.raises(ValueError, match="kind"):
        tokenizer.TokenizerConfig(kind="download")
    with pytest.raises(ValueError, match="wheel"):
        tokenizer.TokenizerConfig(kind="wheel")
