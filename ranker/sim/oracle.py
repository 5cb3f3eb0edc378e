"""The oracle: what the hidden ground truth says about a list, without handing out the truth.

``ranker report`` compares every policy with an oracle that ranks by true attraction,
and scores each list by its expected clicks under the click model. Both need the
hidden truth, which only ``ranker.sim`` may import (see :mod:`ranker.sim.truth`), so
they live here, behind a small API:

- :func:`load_oracle`: the world's oracle, or None for a database without a synthetic world;
- :meth:`Oracle.best_order`: the oracle's list;
- :meth:`Oracle.show`: a list shown to a user, its realised clicks and expected clicks per position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy.orm import Session

from ranker.rank.features import ListContext
from ranker.sim.truth import GroundTruth, attraction_logits, click_model, load_truth


@dataclass(frozen=True)
class Shown:
    """One list as a user met it, position by position (arrays of shape (k,))."""

    clicked: np.ndarray  # bool: realised with the caller's random numbers
    click_probability: np.ndarray  # P(examined) × P(click | examined): the expected clicks

    @property
    def expected_clicks(self) -> float:
        return float(self.click_probability.sum())


class Oracle:
    """The click model and the best list of one synthetic world."""

    def __init__(self, truth: GroundTruth):
        self._truth = truth

    def best_order(self, ctx: ListContext, k: int) -> np.ndarray:
        """Positions of ``ctx`` in the oracle's order, shape (min(k, n),).

        Greedy by true attraction: at each position, the item the user likes most given the
        categories already placed above (satiation included).
        """
        truth, n = self._truth, len(ctx)
        # Attraction without satiation: every item alone in its own category.
        base = attraction_logits(truth, ctx.user_id, ctx.item_ids, ctx.age_days,
                                 np.array([f"u{i}" for i in range(n)]))
        placed: list[int] = []
        counts: dict[str, int] = {}
        for _ in range(min(k, n)):
            pen = np.array([counts.get(c, 0) for c in ctx.category], dtype=float) * truth.params.satiation
            score = base - pen
            score[placed] = -np.inf
            j = int(np.argmax(score))
            placed.append(j)
            counts[ctx.category[j]] = counts.get(ctx.category[j], 0) + 1
        return np.array(placed)

    def show(self, ctx: ListContext, order: np.ndarray, u_exam: np.ndarray, u_click: np.ndarray) -> Shown:
        """Show ``ctx``'s candidates in ``order`` to its user through the click model.

        ``u_exam`` holds one uniform draw per position (k,), ``u_click`` one per candidate
        (n,), so policies that share them share their random numbers. The expected clicks
        do not depend on the draws.
        """
        order = np.asarray(order)
        seen = click_model(self._truth, ctx.user_id, ctx.item_ids[order], ctx.age_days[order],
                           ctx.category[order], u_exam, np.asarray(u_click)[order])
        return Shown(seen.clicked, seen.click_probability)


def load_oracle(session: Session) -> Oracle | None:
    """The oracle of the database's synthetic world, or None when it has none (imported data)."""
    truth = load_truth(session)
    return Oracle(truth) if truth is not None else None
