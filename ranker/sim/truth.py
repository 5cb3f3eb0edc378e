"""The synthetic world's hidden ground truth.

Stored apart from the platform's data, in its own table. Only the simulator's own
modules (``ranker.sim.*``: the world builder, the click simulator and the oracle
:mod:`ranker.sim.oracle`), the schema migrations' ``env.py`` (which registers the
table) and the tests may import this module. Anyone else gets an ImportError, on the
first import and on every later read of a name from the module (see :func:`_refusal`);
``tests/test_truth_hidden.py`` also scans every file for an import of it.
"""

from __future__ import annotations

import sys
import sysconfig
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# --- Who may read the truth ----------------------------------------------------------------

#: Packages whose modules may import this one.
_ALLOWED = ("ranker.sim", "tests")
#: Alembic loads the migrations' env.py under a name of its own ("env_py"), so it is known by its file.
_MIGRATIONS_ENV = Path(__file__).resolve().parents[1] / "data" / "migrations" / "env.py"
#: Frames in these folders act for their caller: the standard library and installed packages.
_LIBRARY_DIRS = tuple(sorted({sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}))


def _asker(frame: types.FrameType | None) -> types.FrameType | None:
    """The first frame from ``frame`` outwards that is the project's code, skipping the import
    machinery (importlib, ``__import__``), the standard library and installed packages."""
    while frame is not None:
        name = frame.f_globals.get("__name__") or ""
        file = frame.f_code.co_filename
        if name == "ranker" or name.startswith("ranker."):
            return frame
        if not (name.startswith(("importlib", "_frozen_importlib")) or file.startswith(("<frozen", *_LIBRARY_DIRS))):
            return frame
        frame = frame.f_back
    return None


def _refusal(frame: types.FrameType | None) -> str | None:
    """Why the code of ``frame`` may not read the truth, or None when it may."""
    name = (frame.f_globals.get("__name__") or "") if frame else ""
    if any(name == p or name.startswith(p + ".") for p in _ALLOWED):
        return None
    if frame is not None and Path(frame.f_code.co_filename).resolve() == _MIGRATIONS_ENV:
        return None
    where = f"{name or '?'} ({frame.f_code.co_filename})" if frame else "code outside the project"
    return (f"{where} may not import ranker.sim.truth: the synthetic world's hidden ground truth is for the "
            "simulator (ranker.sim.*) and the tests only. Use ranker.sim.oracle for the oracle's order and "
            "expected clicks")


def _guard(frame: types.FrameType | None) -> None:
    why = _refusal(_asker(frame))
    if why:
        raise ImportError(why, name=__name__)


_guard(sys._getframe(1))  # the first import: who runs this module?

import numpy as np  # noqa: E402  (after the guard: a refused import loads and registers nothing)
from sqlalchemy import JSON, Integer, LargeBinary, String, delete, select  # noqa: E402
from sqlalchemy.orm import Mapped, Session, mapped_column  # noqa: E402

from ranker.data.schema import Base  # noqa: E402


class WorldTruth(Base):
    __tablename__ = "world_truth"

    key: Mapped[str] = mapped_column(String(40), primary_key=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON)
    rows: Mapped[int] = mapped_column(Integer)
    blob: Mapped[bytes] = mapped_column(LargeBinary)


#: How a world's client logs views (:attr:`WorldParams.view_logging`).
VIEW_LOGGING = ("rendered", "examined")


@dataclass
class WorldParams:
    """How a user's attraction to an item is made. Logit scale throughout."""

    affinity: float = 2.2  # weight of the true user-item affinity (dot product)
    freshness: float = 1.5  # weight of exp(-age_days / freshness_days)
    freshness_days: float = 30.0
    quality: float = 1.2  # weight of the item's latent quality
    satiation: float = 1.2  # penalty per earlier same-category item in the list
    bias: float = -2.6
    examination_decay: float = 0.75  # P(examine 0-based position p) = 1 / (p + 1) ** decay
    positive_given_click: float = 0.35  # chance a click turns into explicit feedback
    # How the platform's client logs a ``view`` (not what users do; see VIEW_LOGGING):
    view_logging: str = "rendered"  # "rendered": every position in the viewport; "examined": looked-at ones only
    viewport: int = 0  # rendered: positions shown on screen without scrolling (0: the whole list)

    def __post_init__(self) -> None:
        if self.view_logging not in VIEW_LOGGING:
            raise ValueError(f"unknown view logging {self.view_logging!r}; choose one of: {', '.join(VIEW_LOGGING)}")
        if self.viewport < 0:
            raise ValueError(f"the viewport is a number of positions (0: the whole list), got {self.viewport}")

    def logged_views(self, examined: np.ndarray) -> np.ndarray:
        """(n,) bool: the positions of a list whose ``view`` the client logs, given which were examined.

        ``examined``: the users saw them, as a viewport tracker that needs the item on screen
        for a while would log. ``rendered``: every position in the viewport, looked at or not,
        as most impression logging does; below the viewport, a position is logged once scrolled
        to, i.e. when examined.
        """
        examined = np.asarray(examined, dtype=bool)
        if self.view_logging == "examined":
            return examined.copy()
        n = len(examined)
        in_view = np.arange(n) < (self.viewport or n)
        return in_view | examined

    @classmethod
    def preset(cls, name: str) -> WorldParams:
        if name == "default":
            return cls()
        if name == "no-context":
            # Only affinity matters: recency, popularity and diversity carry no signal.
            return cls(freshness=0.0, quality=0.0, satiation=0.0, bias=-2.3)
        raise ValueError(f"unknown preset {name!r}; choose one of: default, no-context")


@dataclass
class GroundTruth:
    """Latent vectors per user and item (row i = the i-th id in ``user_ids``)."""

    params: WorldParams
    user_ids: np.ndarray  # (U,) int64
    user_vecs: np.ndarray  # (U, d) float32
    item_ids: np.ndarray  # (I,) int64
    item_vecs: np.ndarray  # (I, d) float32
    item_quality: np.ndarray  # (I,) float32, roughly N(0, 1)
    extra: dict[str, Any] = field(default_factory=dict)

    def user_index(self, user_ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.user_ids, user_ids)

    def item_index(self, item_ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.item_ids, item_ids)


def attraction_logits(
    truth: GroundTruth,
    user_id: int,
    item_ids: np.ndarray,
    item_age_days: np.ndarray,
    item_categories: np.ndarray,
) -> np.ndarray:
    """True attraction logit of each item *in the order shown*, shape (n,).

    Satiation counts earlier items of the same category in the same list, so the
    order matters: this is what makes diversity worth something.
    """
    p = truth.params
    u = truth.user_vecs[truth.user_index(np.array([user_id]))[0]]
    idx = truth.item_index(np.asarray(item_ids))
    affinity = truth.item_vecs[idx] @ u
    fresh = np.exp(-np.maximum(item_age_days, 0.0) / p.freshness_days)
    seen_before = _earlier_same(item_categories)
    return (
        p.bias
        + p.affinity * affinity
        + p.freshness * fresh
        + p.quality * truth.item_quality[idx]
        - p.satiation * seen_before
    )


def examination_probability(params: WorldParams, n: int) -> np.ndarray:
    """P(position i is looked at), i = 1..n: the position bias of the click model."""
    return 1.0 / np.arange(1, n + 1) ** params.examination_decay


@dataclass(frozen=True)
class ListOutcome:
    """What a user did with one list, position by position (arrays of shape (n,))."""

    examined: np.ndarray  # bool: the user looked at the position
    clicked: np.ndarray  # bool: examined and attracted
    positive: np.ndarray  # bool: a click that became explicit feedback (all False without draws for it)
    click_probability: np.ndarray  # P(examined) × P(click | examined), the expected clicks per position


def click_model(truth: GroundTruth, user_id: int, item_ids: np.ndarray, item_age_days: np.ndarray,
                item_categories: np.ndarray, u_exam: np.ndarray, u_click: np.ndarray,
                u_positive: np.ndarray | None = None) -> ListOutcome:
    """The position-based click model, the one place it is written.

    Position i (in the order shown) is examined with :func:`examination_probability`; an
    examined item is clicked with probability sigmoid(:func:`attraction_logits`); a click
    becomes explicit feedback with probability ``positive_given_click``. The uniform draws
    in [0, 1) come from the caller (one per position each), so the caller owns the random
    stream: the world builder and the simulator draw them in turn, and the report shares
    one set across the policies it compares.
    """
    n = len(item_ids)
    exam_p = examination_probability(truth.params, n)
    p_click = 1.0 / (1.0 + np.exp(-attraction_logits(truth, user_id, item_ids, item_age_days, item_categories)))
    examined = np.asarray(u_exam)[:n] < exam_p
    clicked = examined & (np.asarray(u_click)[:n] < p_click)
    positive = (clicked & (np.asarray(u_positive)[:n] < truth.params.positive_given_click)
                if u_positive is not None else np.zeros(n, dtype=bool))
    return ListOutcome(examined, clicked, positive, exam_p * p_click)


def _earlier_same(categories: np.ndarray) -> np.ndarray:
    """For each position, how many earlier positions share its category."""
    cats = np.asarray(categories)
    same = cats[:, None] == cats[None, :]
    return np.tril(same, k=-1).sum(axis=1).astype(np.float64)


def save_truth(session: Session, truth: GroundTruth) -> None:
    session.execute(delete(WorldTruth))
    arrays = {
        "user_ids": truth.user_ids,
        "user_vecs": truth.user_vecs,
        "item_ids": truth.item_ids,
        "item_vecs": truth.item_vecs,
        "item_quality": truth.item_quality,
    }
    for key, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        session.add(
            WorldTruth(
                key=key,
                meta={"dtype": str(arr.dtype), "shape": list(arr.shape)},
                rows=int(arr.shape[0]),
                blob=arr.tobytes(),
            )
        )
    session.add(WorldTruth(key="params", meta={**asdict(truth.params), **truth.extra}, rows=0, blob=b""))


def load_truth(session: Session) -> GroundTruth | None:
    """The stored ground truth, or None when the database holds no synthetic world."""
    rows = {r.key: r for r in session.scalars(select(WorldTruth))}
    if "params" not in rows:
        return None
    arrays = {
        k: np.frombuffer(r.blob, dtype=r.meta["dtype"]).reshape(r.meta["shape"])
        for k, r in rows.items()
        if k != "params"
    }
    meta = dict(rows["params"].meta)
    param_names = WorldParams.__dataclass_fields__.keys()
    meta.setdefault("view_logging", "examined")  # worlds built before the setting logged examined views only
    params = WorldParams(**{k: meta.pop(k) for k in list(meta) if k in param_names})
    return GroundTruth(params=params, extra=meta, **arrays)


class _GuardedModule(types.ModuleType):
    """This module once imported: every read of a public name checks the reader, so code that
    finds it already in ``sys.modules`` is refused too."""

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_"):
            _guard(sys._getframe(1))
        return super().__getattribute__(name)


sys.modules[__name__].__class__ = _GuardedModule
