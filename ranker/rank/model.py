"""RankerMLP: a small feed-forward scorer for (user, item) feature rows.

    x (N, input_dim) -> standardise -> Linear(h1) -> ReLU -> Dropout -> Linear(h2) -> ReLU
      -> Linear(1) -> (N,)

Scores are unbounded logits, trained with ``ranker.rank.losses.pairwise_logistic_loss``.
The standardisation is fixed, not learned: ``fit_input_scaling`` sets the per-feature
mean and scale of the training data (buffers, saved in the checkpoint). Features in
[0, 1] can sit in a narrow band (popularity among top candidates spans ~0.8–0.95);
centred and scaled, the first layer's ReLUs can split that band without huge weights,
so the guide's 20 epochs at lr 0.001 are enough. A checkpoint without the buffers
loads as mean 0, scale 1.
The net's shape is a :class:`ranker.rank.spec.ModelSpec` (``model.spec``): it builds the
net, saves and loads checkpoints, and is the only place that knows the layer names.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ranker.rank.spec import ARCHS, ModelSpec

__all__ = ["ARCHS", "ModelSpec", "RankerMLP", "count_parameters"]


class RankerMLP(nn.Module):
    """Two-hidden-layer MLP that maps feature rows to one score each."""

    def __init__(
        self, input_dim: int, hidden_dim1: int = 32, hidden_dim2: int = 16, dropout: float = 0.2
    ) -> None:
        super().__init__()
        arch = next((name for name, sizes in ARCHS.items() if sizes == (hidden_dim1, hidden_dim2)), "custom")
        self.spec = ModelSpec(input_dim, hidden_dim1, hidden_dim2, dropout, arch=arch)
        self.net = nn.Sequential(
            nn.Linear(input_dim, hidden_dim1),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim1, hidden_dim2),
            nn.ReLU(),
            nn.Linear(hidden_dim2, 1),
        )
        self.register_buffer("x_mean", torch.zeros(input_dim))
        self.register_buffer("x_scale", torch.ones(input_dim))

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> RankerMLP:
        """The net ``spec`` describes (``spec.build()`` calls this)."""
        model = cls(spec.input_dim, spec.hidden_dim1, spec.hidden_dim2, spec.dropout)
        model.spec = spec
        return model

    @classmethod
    def from_arch(cls, input_dim: int, arch: str) -> RankerMLP:
        """Build a model with the hidden sizes of a named arch from ``ARCHS``."""
        return cls.from_spec(ModelSpec.for_arch(arch, input_dim=input_dim))

    def fit_input_scaling(self, x: np.ndarray) -> None:
        """Set the input standardisation to the mean and standard deviation of ``x`` (N, input_dim).

        A constant column (scale < 1e-3) keeps scale 1, so it is only centred.
        """
        x = np.asarray(x, dtype=np.float64)
        mean, std = x.mean(axis=0), x.std(axis=0)
        std = np.where(std < 1e-3, 1.0, std)
        self.x_mean.copy_(torch.from_numpy(mean))
        self.x_scale.copy_(torch.from_numpy(std))

    def standardise(self, x: Tensor) -> Tensor:
        return (x - self.x_mean) / self.x_scale

    def forward(self, x: Tensor) -> Tensor:
        """Score feature rows: (N, input_dim) -> (N,)."""
        return self.net(self.standardise(x)).squeeze(-1)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        """As :meth:`torch.nn.Module.load_state_dict`; a state without the scaling buffers
        (a checkpoint from before they existed) loads as mean 0, scale 1."""
        state = dict(state_dict)
        state.setdefault("x_mean", torch.zeros_like(self.x_mean))
        state.setdefault("x_scale", torch.ones_like(self.x_scale))
        return super().load_state_dict(state, strict=strict, assign=assign)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (weights and biases) in ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
