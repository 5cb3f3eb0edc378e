"""The model spec: the one object that knows the ranker's network.

As nanoGPT's ``GPTConfig``, a :class:`ModelSpec` says what the net is (its features,
hidden sizes and dropout). It builds the net, saves a trained one with itself in the
file, loads a file back into a spec and weights, and maps the weights to the numpy
layers the serving scorer evaluates. Nothing else knows the layer names.

A checkpoint is ``{"state_dict": ..., "meta": {"format": ..., **spec.to_meta(), ...}}``;
``ModelSpec.from_meta(meta)`` reads the spec back, and ``from_meta(to_meta())`` is the
identity. Loading validates by value as well as by shape (:func:`check_servable`), so
registering, activating and hot reloading all refuse a model that cannot be served.
This module imports torch only when it builds, saves or loads a net, so the serving
path can use :func:`linear_layers` without it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ranker.data.files import atomic_write_bytes
from ranker.errors import RankerError

if TYPE_CHECKING:
    from ranker.rank.model import RankerMLP

CHECKPOINT_FORMAT = "ranker-checkpoint/1"
#: A served model's scores on feature vectors in [0, 1] stay within ±this. Trained models
#: give logits of a few units; a score of a million means weights that have blown up.
MAX_ABS_SCORE = 1e6
#: The probe grid has at most this many rows (feature vectors).
PROBE_ROWS = 4096
#: What the operator can do about a checkpoint that is refused.
FIX = "retrain with `ranker train`, or activate another version with `ranker models activate vN`"

#: arch name -> (hidden_dim1, hidden_dim2)
ARCHS: dict[str, tuple[int, int]] = {
    "small": (16, 8),
    "default": (32, 16),
    "large": (64, 32),
}
#: The state-dict prefixes of the three linear layers, input to output, in ``RankerMLP.net``
#: (Linear, ReLU, Dropout, Linear, ReLU, Linear).
LINEAR_LAYERS = ("net.0", "net.3", "net.5")


class CheckpointError(RankerError, ValueError):
    """A checkpoint that cannot be served, with the reason."""


@dataclass(frozen=True)
class ModelSpec:
    """What the ranker's net is: features in, hidden sizes, dropout."""

    input_dim: int  # features per row
    hidden_dim1: int = ARCHS["default"][0]
    hidden_dim2: int = ARCHS["default"][1]
    dropout: float = 0.2  # after the first ReLU only; inactive in eval()
    arch: str = "default"  # the ARCHS name the sizes came from, or "custom"
    feature_names: tuple[str, ...] = ()  # the features, in column order (empty: unnamed)

    def __post_init__(self) -> None:
        if self.input_dim < 1:
            raise ValueError(f"input_dim must be >= 1 (one per feature), got {self.input_dim}")
        if self.hidden_dim1 < 1 or self.hidden_dim2 < 1:
            raise ValueError(f"hidden sizes must be >= 1, got {self.hidden_dim1} and {self.hidden_dim2}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.feature_names and len(self.feature_names) != self.input_dim:
            raise ValueError(f"{len(self.feature_names)} feature names for input_dim {self.input_dim}")

    @classmethod
    def for_arch(cls, arch: str = "default", feature_names: list[str] | tuple[str, ...] | None = None,
                 input_dim: int | None = None) -> ModelSpec:
        """The spec of a named arch over ``feature_names`` (default: the feature registry's)."""
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; choose one of: {', '.join(ARCHS)}")
        if feature_names is None and input_dim is None:
            from ranker.rank.features import feature_names as registry_names

            feature_names = registry_names()
        names = tuple(feature_names or ())
        h1, h2 = ARCHS[arch]
        return cls(input_dim or len(names), h1, h2, arch=arch, feature_names=names)

    def to_meta(self) -> dict[str, Any]:
        """The checkpoint keys that describe the net (the layout every checkpoint has used)."""
        return {"feature_names": list(self.feature_names), "input_dim": self.input_dim,
                "arch": {"name": self.arch, "hidden_dim1": self.hidden_dim1,
                         "hidden_dim2": self.hidden_dim2, "dropout": self.dropout}}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> ModelSpec:
        """The spec a checkpoint's metadata describes (inverse of :meth:`to_meta`)."""
        arch = meta["arch"]
        return cls(int(meta["input_dim"]), int(arch["hidden_dim1"]), int(arch["hidden_dim2"]),
                   float(arch.get("dropout", 0.2)), str(arch.get("name", "custom")),
                   tuple(meta.get("feature_names") or ()))

    def with_features(self, feature_names: list[str] | tuple[str, ...]) -> ModelSpec:
        return replace(self, input_dim=len(feature_names), feature_names=tuple(feature_names))

    def build(self) -> RankerMLP:
        """A freshly initialised net of this shape."""
        from ranker.rank.model import RankerMLP

        return RankerMLP.from_spec(self)

    # --- Files -------------------------------------------------------------------

    def save(self, path: Path, model: RankerMLP, meta: dict[str, Any] | None = None) -> None:
        """Write ``model``'s weights with this spec and ``meta`` to ``path``, atomically."""
        atomic_write_bytes(Path(path), checkpoint_bytes(model.state_dict(), {**(meta or {}), **self.to_meta()}))

    @staticmethod
    def load(path: Path) -> Checkpoint:
        """Load and validate a checkpoint (``weights_only=True``).

        Raises
        ------
        CheckpointError
            Missing, truncated, corrupt or foreign file; features/shape that do not match
            the feature registry; or weights that cannot be served (see
            :func:`check_servable`). The one-line message says which, and what to do.
        """
        from ranker.rank.features import feature_names, feature_set

        obj = _read(Path(path))
        meta = obj["meta"]
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path} has format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
        expected = feature_names()
        if list(meta.get("feature_names", [])) != expected:
            trained, current = meta.get("feature_set"), feature_set()
            if trained is not None and trained != current:
                raise CheckpointError(
                    f"{path} was trained on the {trained} feature set but the {current} set is chosen; "
                    f"retrain on this set with `ranker retrain`, or choose its set again with "
                    f"`ranker features set {trained}`")
            raise CheckpointError(
                f"{path} was trained on features {meta.get('feature_names')} but the server computes "
                f"{expected}; {FIX}"
            )
        ckpt = Checkpoint(obj["state_dict"], meta)
        try:
            ckpt.model()
        except Exception as exc:
            raise CheckpointError(f"{path}: weights do not fit the declared shape: "
                                  f"{str(exc).splitlines()[0][:200]}") from None
        check_servable(ckpt, str(path))
        return ckpt


def probe_grid(n_features: int) -> np.ndarray:
    """A fixed grid of feature vectors in [0, 1], corners included: (rows, n_features).

    Every feature takes the same evenly spaced levels (0 and 1 among them); the number of
    levels is the largest that keeps the grid within :data:`PROBE_ROWS` rows (at least 2).
    """
    if 2**n_features > PROBE_ROWS:  # many features: all-0, all-1 and a fixed sample of the rest
        rng = np.random.default_rng(0)
        return np.vstack([np.zeros(n_features), np.ones(n_features), rng.random((PROBE_ROWS - 2, n_features))])
    levels = 2
    while (levels + 1) ** n_features <= PROBE_ROWS:
        levels += 1
    axes = [np.linspace(0.0, 1.0, levels)] * n_features
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, n_features)


def check_servable(ckpt: Checkpoint, name: str) -> None:
    """Refuse weights that are not finite, or a net whose scores on :func:`probe_grid` are
    not finite or exceed :data:`MAX_ABS_SCORE` in magnitude (the serving scorer is probed,
    as it serves: in numpy, the input standardisation folded into the first layer).

    Raises
    ------
    CheckpointError
        One line naming the problem and what to do (:data:`FIX`).
    """
    bad = {key: int((~np.isfinite(np.asarray(value, dtype=np.float64))).sum())
           for key, value in ckpt.state_dict.items()}
    bad = {key: n for key, n in bad.items() if n}
    if bad:
        where = ", ".join(f"{n} in {key}" for key, n in bad.items())
        raise CheckpointError(f"{name} has weight(s) that are not finite (NaN or inf: {where}); {FIX}")
    with np.errstate(all="ignore"):
        scores = ckpt.scorer()(probe_grid(ckpt.spec.input_dim))
    if not np.isfinite(scores).all():
        raise CheckpointError(f"{name} gives non-finite scores on feature vectors in [0, 1] "
                              f"(e.g. an input scale of 0); {FIX}")
    worst = float(np.abs(scores).max())
    if worst >= MAX_ABS_SCORE:
        raise CheckpointError(f"{name} gives scores up to {worst:.3g} on feature vectors in [0, 1], outside "
                              f"±{MAX_ABS_SCORE:g} (its weights have blown up); {FIX}")


def checkpoint_bytes(state_dict: dict[str, Any], meta: dict[str, Any]) -> bytes:
    """A checkpoint file's bytes: CPU tensors and ``meta`` stamped with the format."""
    import torch

    buf = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in state_dict.items()}
    torch.save({"state_dict": state, "meta": {**meta, "format": CHECKPOINT_FORMAT}}, buf)
    return buf.getvalue()


def _read(path: Path) -> dict[str, Any]:
    import torch

    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad bytes
        raise CheckpointError(
            f"{path} is not a readable ranker checkpoint (truncated, corrupt or not torch): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        ) from None
    if not isinstance(obj, dict) or "state_dict" not in obj or "meta" not in obj:
        raise CheckpointError(f"{path} is a torch file but not a ranker checkpoint "
                              "(expected keys 'state_dict' and 'meta')")
    return obj


@dataclass
class Checkpoint:
    """A loaded checkpoint: weights and metadata (the spec among them)."""

    state_dict: dict[str, Any]
    meta: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.meta.get("version", "unregistered"))

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec.from_meta(self.meta)

    def model(self) -> RankerMLP:
        m = self.spec.build()
        m.load_state_dict(self.state_dict)
        return m.eval()

    def scorer(self):
        """The numpy serving scorer (:class:`ranker.rank.rerank.NeuralScorer`) of these weights."""
        from ranker.rank.rerank import NeuralScorer

        return NeuralScorer({k: v.numpy() for k, v in self.state_dict.items()}, self.version, self.meta)

    def to_bytes(self) -> bytes:
        return checkpoint_bytes(self.state_dict, self.meta)


def linear_layers(state_dict: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """The three linear layers as numpy ``(weight.T, bias)`` pairs, input to output."""
    def arr(key: str) -> np.ndarray:
        return np.asarray(state_dict[key], dtype=np.float64)

    return [(arr(f"{layer}.weight").T, arr(f"{layer}.bias")) for layer in LINEAR_LAYERS]
