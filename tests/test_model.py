from __future__ import annotations

import pytest
import torch
from torch import nn

from ranker.model import ARCHS, MLPConfig, RankerMLP, count_parameters


def test_default_arch_with_four_features_has_705_parameters():
    # (4*32 + 32) + (32*16 + 16) + (16*1 + 1) = 160 + 528 + 17
    assert count_parameters(RankerMLP.from_arch(4, "default")) == 705
    assert count_parameters(RankerMLP(4)) == 705


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("small", (4 * 16 + 16) + (16 * 8 + 8) + (8 + 1)),  # 225
        ("large", (4 * 64 + 64) + (64 * 32 + 32) + (32 + 1)),  # 2433
    ],
)
def test_small_and_large_arch_parameter_counts_match_hand_computed(arch, expected):
    assert count_parameters(RankerMLP.from_arch(4, arch)) == expected


def test_layers_follow_the_documented_stack():
    model = RankerMLP(5, hidden_dim1=7, hidden_dim2=3, dropout=0.3)
    kinds = [type(layer) for layer in model.net]
    assert kinds == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Linear]
    linears = [layer for layer in model.net if isinstance(layer, nn.Linear)]
    shapes = [(layer.in_features, layer.out_features) for layer in linears]
    assert shapes == [(5, 7), (7, 3), (3, 1)]
    assert model.net[2].p == 0.3


@pytest.mark.parametrize("n_rows", [1, 17])
def test_forward_returns_one_score_per_row(n_rows):
    model = RankerMLP.from_arch(4, "small")
    scores = model(torch.randn(n_rows, 4))
    assert scores.shape == (n_rows,)


def test_eval_mode_disables_dropout():
    torch.manual_seed(0)
    model = RankerMLP(4, dropout=0.9).eval()
    x = torch.randn(32, 4)
    assert torch.equal(model(x), model(x))


def test_unknown_arch_error_lists_valid_archs():
    with pytest.raises(ValueError, match="unknown arch 'huge'") as err:
        RankerMLP.from_arch(4, "huge")
    for name in ARCHS:
        assert name in str(err.value)


def test_config_defaults_agree_with_default_arch_and_constructor():
    config = MLPConfig(input_dim=4)
    assert (config.hidden_dim1, config.hidden_dim2) == ARCHS["default"]
    assert RankerMLP(4).config == config


def test_config_dict_rebuilds_an_identical_model():
    model = RankerMLP.from_arch(6, "large")
    meta = model.config.to_dict()
    assert meta == {"input_dim": 6, "hidden_dim1": 64, "hidden_dim2": 32, "dropout": 0.2}

    rebuilt = RankerMLP(**meta)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(3, 6)
    assert torch.equal(rebuilt.eval()(x), model.eval()(x))


def test_zero_input_dim_is_rejected():
    with pytest.raises(ValueError, match="input_dim must be >= 1"):
        RankerMLP(0)
