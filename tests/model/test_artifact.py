"""Model artifacts: loading at a longer context than the model was trained on."""
import pytest
import torch

from model.artifact import ArtifactError, load_artifact, save_artifact
from model.config import ModelConfig
from model.transformer import Transformer


@pytest.mark.parametrize("family", ["arm", "mdm"])
def test_longer_context_keeps_every_weight_and_the_trained_positions(tmp_path, family):
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=2, d_model=16, d_ffn=32, vocab_size=50, context=8, family=family)
    save_artifact(Transformer(cfg), tmp_path / "m", tokenizer_file=None)
    short, _ = load_artifact(tmp_path / "m")
    long, config = load_artifact(tmp_path / "m", context=32)
    assert (long.cfg.context, config["context"]) == (32, 8)  # the record keeps what it was trained at
    for (name, a), (_, b) in zip(short.state_dict().items(), long.state_dict().items()):
        assert torch.equal(a, b), name
    tokens = torch.randint(0, 50, (3, 8))
    assert torch.equal(short(tokens), long(tokens))  # rotary tables agree on the trained positions
    assert long(torch.randint(0, 50, (3, 32))).shape == (3, 32, 50)
    with pytest.raises(ValueError, match="exceeds the model's context 8"):
        short(torch.randint(0, 50, (1, 9)))


def test_a_context_below_one_token_is_refused(tmp_path):
    cfg = ModelConfig(n_layer=1, n_head=2, d_model=16, d_ffn=32, vocab_size=50, context=8)
    save_artifact(Transformer(cfg), tmp_path / "m", tokenizer_file=None)
    with pytest.raises(ArtifactError, match="context must be a positive number of tokens, got 0"):
        load_artifact(tmp_path / "m", context=0)
