import pytest

from model.config import MODEL_SIZES, ModelConfig, config_for
from model.transformer import Transformer

# PAPER.md section 1: the names are N in millions (rounded as the authors did).
PAPER_NAMES = ["6M", "19M", "34M", "48M", "66M", "75M", "85M", "113M", "142M", "170M", "180M",
               "206M", "231M", "268M", "302M", "336M", "472M", "551M", "571M", "629M", "666M",
               "717M", "761M", "831M", "944M", "1028M", "1233M", "1476M", "1678M", "2121M"]


def test_all_paper_sizes_present_and_counted_as_named():
    for name in PAPER_NAMES:
        n_millions = MODEL_SIZES[name].n_params / 1e6
        assert abs(n_millions - int(name[:-1])) < 1.0, (name, n_millions)


def test_exact_counts_quoted_in_the_paper():
    assert MODEL_SIZES["6M"].n_params == 6_294_784
    assert round(MODEL_SIZES["170M"].n_params / 1e6, 2) == 169.90
    assert round(MODEL_SIZES["1028M"].n_params / 1e6, 2) == 1027.68


def test_module_parameter_count_matches_formula():
    for name in ["debug", "74k", "1.31M", "6M"]:
        model = Transformer(config_for(name, "mdm", vocab_size=50, context=16))
        assert model.count_non_embedding_params() == model.cfg.n_params


def test_cpu_sizes_are_named_by_their_count():
    for name, cfg in MODEL_SIZES.items():
        if name.endswith("k"):
            assert round(cfg.n_params / 1e3) == int(name[:-1])


def test_mdm_has_mask_row_and_arm_does_not():
    mdm = config_for("debug", "mdm", vocab_size=100, context=8)
    arm = config_for("debug", "arm", vocab_size=100, context=8)
    assert (mdm.mask_id, mdm.embedding_rows, mdm.causal) == (100, 101, False)
    assert (arm.mask_id, arm.embedding_rows, arm.causal) == (None, 100, True)


@pytest.mark.parametrize("changes, field", [
    ({"d_model": 30, "n_head": 4}, "d_model"),
    ({"n_layer": 0}, "n_layer"),
    ({"family": "gpt"}, "family"),
])
def test_impossible_shapes_name_the_field(changes, field):
    base = dict(n_layer=2, n_head=2, d_model=32, d_ffn=64)
    with pytest.raises(ValueError, match=field):
        ModelConfig(**{**base, **changes})


def test_unknown_size_lists_known_ones():
    with pytest.raises(ValueError, match="unknown model size '7B'"):
        config_for("7B", "arm", 100, 8)
