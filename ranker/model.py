"""RankerMLP: a small feed-forward scorer for (user, item) feature rows.

    x (N, input_dim) -> Linear(h1) -> ReLU -> Dropout -> Linear(h2) -> ReLU -> Linear(1) -> (N,)

Scores are unbounded logits, trained with ``ranker.losses.pairwise_logistic_loss``.
``ARCHS`` names the sizes an operator can pick; ``MLPConfig.to_dict()`` is what a
checkpoint stores, and ``RankerMLP(**config_dict)`` rebuilds the model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import Tensor, nn

#: arch name -> (hidden_dim1, hidden_dim2)
ARCHS: dict[str, tuple[int, int]] = {
    "small": (16, 8),
    "default": (32, 16),
    "large": (64, 32),
}


@dataclass
class MLPConfig:
    input_dim: int  # features per row; set by the feature set, so no default
    hidden_dim1: int = 32  # first hidden layer, ARCHS["default"][0]
    hidden_dim2: int = 16  # second hidden layer, ARCHS["default"][1]
    dropout: float = 0.2  # after the first ReLU only; inactive in eval()

    def to_dict(self) -> dict[str, int | float]:
        """Plain dict for checkpoint metadata; keys match ``RankerMLP.__init__``."""
        return asdict(self)


class RankerMLP(nn.Module):
    """Two-hidden-layer MLP that maps feature rows to one score each."""

    def __init__(
        self, input_dim: int, hidden_dim1: int = 32, hidden_dim2: int = 16, dropout: float = 0.2
    ) -> None:
        super().__init__()
        if input_dim < 1:
            raise ValueError(f"input_dim must be >= 1 (one per feature), got {input_dim}")
        self.config = MLPConfig(input_dim, hidden_dim1, hidden_dim2, dropout)
        self.net = nn.Sequential(
            nn.Linear(input_dim, hidden_dim1),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim1, hidden_dim2),
            nn.ReLU(),
            nn.Linear(hidden_dim2, 1),
        )

    @classmethod
    def from_arch(cls, input_dim: int, arch: str) -> RankerMLP:
        """Build a model with the hidden sizes of a named arch from ``ARCHS``."""
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; choose one of: {', '.join(ARCHS)}")
        hidden_dim1, hidden_dim2 = ARCHS[arch]
        return cls(input_dim, hidden_dim1, hidden_dim2)

    def forward(self, x: Tensor) -> Tensor:
        """Score feature rows: (N, input_dim) -> (N,)."""
        return self.net(x).squeeze(-1)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (weights and biases) in ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
