from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ranker.rank.model import ARCHS, RankerMLP, count_parameters
from ranker.rank.rerank import NeuralScorer
from ranker.rank.spec import LINEAR_LAYERS, ModelSpec, linear_layers


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


def test_spec_defaults_agree_with_default_arch_and_constructor():
    spec = ModelSpec(input_dim=4)
    assert (spec.hidden_dim1, spec.hidden_dim2) == ARCHS["default"]
    assert RankerMLP(4).spec == spec
    assert ModelSpec.for_arch("default", input_dim=4) == spec


def test_spec_round_trips_through_checkpoint_meta_and_rebuilds_an_identical_model():
    spec = ModelSpec.for_arch("large", ["a", "b", "c", "d", "e", "f"])
    meta = spec.to_meta()
    assert meta == {"feature_names": ["a", "b", "c", "d", "e", "f"], "input_dim": 6,
                    "arch": {"name": "large", "hidden_dim1": 64, "hidden_dim2": 32, "dropout": 0.2}}
    assert ModelSpec.from_meta(meta) == spec
    model = spec.build()
    rebuilt = ModelSpec.from_meta(meta).build()
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(3, 6)
    assert torch.equal(rebuilt.eval()(x), model.eval()(x))


def test_spec_knows_every_linear_layer_of_the_net():
    model = ModelSpec.for_arch("small", input_dim=5).build()
    linear = sorted({k.rsplit(".", 1)[0] for k, v in model.state_dict().items() if k.endswith(".weight")})
    assert tuple(linear) == LINEAR_LAYERS
    layers = linear_layers({k: v.numpy() for k, v in model.state_dict().items()})
    assert [w.shape for w, _ in layers] == [(5, 16), (16, 8), (8, 1)]


def test_spec_saves_and_loads_a_checkpoint(tmp_path):
    spec = ModelSpec.for_arch("small")  # the feature registry's features
    model = spec.build().eval()
    spec.save(tmp_path / "m.pth", model, {"version": "v7"})
    ckpt = ModelSpec.load(tmp_path / "m.pth")
    assert ckpt.spec == spec and ckpt.version == "v7"
    x = torch.rand(4, spec.input_dim)
    assert torch.equal(ckpt.model()(x), model(x))


@pytest.mark.parametrize("bad", [{"input_dim": 0}, {"input_dim": 4, "hidden_dim1": 0},
                                 {"input_dim": 4, "dropout": 1.0}, {"input_dim": 3, "feature_names": ("a",)}])
def test_spec_refuses_impossible_shapes(bad):
    with pytest.raises(ValueError):
        ModelSpec(**bad)


def test_zero_input_dim_is_rejected():
    with pytest.raises(ValueError, match="input_dim must be >= 1"):
        RankerMLP(0)


def _scaled_model(seed: int = 0) -> tuple[RankerMLP, np.ndarray]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    # Features in [0, 1] with one narrow band and one constant column, like popularity among top candidates.
    x = np.column_stack([rng.random(200), 0.8 + 0.15 * rng.random(200), np.full(200, 0.5), rng.random(200)])
    model = RankerMLP(4)
    model.fit_input_scaling(x)
    return model.eval(), x


def test_input_scaling_standardises_the_training_columns_and_leaves_constants_at_scale_one():
    model, x = _scaled_model()
    z = model.standardise(torch.from_numpy(x).float()).numpy()
    assert z[:, [0, 1, 3]].mean(axis=0) == pytest.approx(0.0, abs=1e-5)
    assert z[:, [0, 1, 3]].std(axis=0) == pytest.approx(1.0, abs=1e-4)
    assert model.x_scale[2].item() == 1.0 and z[:, 2] == pytest.approx(0.0, abs=1e-6)
    assert count_parameters(model) == 705  # buffers, not trained parameters


def test_numpy_scorer_and_contributions_agree_with_the_torch_model_under_scaling():
    model, x = _scaled_model(1)
    scorer = NeuralScorer({k: v.numpy() for k, v in model.state_dict().items()}, "t")
    with torch.no_grad():
        expected = model(torch.from_numpy(x[:20]).float()).numpy()
        at_zero = model(torch.zeros(1, 4)).item()
    assert scorer(x[:20]) == pytest.approx(expected, abs=1e-5)
    # Integrated gradients from the all-zero raw input still sum to score(x) - score(0).
    contrib = scorer.contributions(x[:20])
    assert contrib.sum(axis=1) == pytest.approx(expected - at_zero, abs=0.05)


def test_a_state_without_scaling_buffers_loads_as_identity_scaling():
    model, x = _scaled_model(2)
    old = {k: v for k, v in model.state_dict().items() if not k.startswith("x_")}
    rebuilt = RankerMLP(4)
    rebuilt.load_state_dict(old)
    assert torch.equal(rebuilt.x_mean, torch.zeros(4)) and torch.equal(rebuilt.x_scale, torch.ones(4))
    scorer = NeuralScorer({k: v.numpy() for k, v in old.items()}, "old")
    with torch.no_grad():
        assert scorer(x[:5]) == pytest.approx(rebuilt.eval()(torch.from_numpy(x[:5]).float()).numpy(), abs=1e-5)
