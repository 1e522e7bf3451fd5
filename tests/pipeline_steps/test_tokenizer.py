"""The `tokenizer` stage: a given .model file, and configs that cannot work."""
import json

import pytest

from pipeline_steps import tokenizer
from pipeline_steps.core.tracking import NullTracker


def test_tokenizer_from_a_file_and_bad_configs(tiny_data, tmp_path):
    cfg = tokenizer.TokenizerConfig(kind="file", path=str(tiny_data["tokenizer"] / "tokenizer.model"))
    tokenizer.run(cfg, tiny_data["corpus"], tmp_path / "tok", NullTracker())
    meta = json.loads((tmp_path / "tok" / "meta.json").read_text())
    assert meta["vocab_size"] == 320 and (meta["bos_id"], meta["eos_id"]) == (1, 2)
    with pytest.raises(ValueError, match="kind"):
        tokenizer.TokenizerConfig(kind="download")
    with pytest.raises(ValueError, match="wheel"):
        tokenizer.TokenizerConfig(kind="wheel")
