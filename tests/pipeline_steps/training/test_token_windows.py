"""Reading shards back: windows, rank slices, resumable order, checked metadata."""
import shutil

import numpy as np
import pytest

from pipeline_steps.training.token_windows import (
    ShardError,
    StepBatches,
    n_windows,
    open_split,
    read_meta,
    unused_tail_tokens,
    validation_windows,
    window,
)


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


def test_validation_windows_are_fixed(tiny_data):
    stream = open_split(tiny_data["shards"], "val")
    assert np.array_equal(validation_windows(stream, 16, 4), validation_windows(stream, 16, 4))
    with pytest.raises(ValueError, match="requested"):
        validation_windows(stream, 16, 10_000)



def test_meta_is_read_in_one_place_with_errors_that_name_the_file(tiny_data, tmp_path):
    assert read_meta(tiny_data["shards"])["vocab_size"] == 320
    with pytest.raises(ShardError, match=r"meta\.json: missing"):
        read_meta(tmp_path)
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(ShardError, match=r"meta\.json: not valid JSON"):
        read_meta(tmp_path)
