"""How the simulated client logs views: every rendered position (the default), or the examined ones."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import func, select

from ranker import config
from ranker.data.schema import Impression, Outcome
from ranker.sim.truth import WorldParams, WorldTruth, load_truth

EXAMINED = np.array([True, False, True, False, False, True])


def test_rendered_logs_the_viewport_and_the_examined_positions_below_it():
    assert WorldParams().view_logging == "rendered"
    assert WorldParams().logged_views(EXAMINED).all()
    below = WorldParams(viewport=2).logged_views(EXAMINED)
    assert below.tolist() == [True, True, True, False, False, True]
    assert WorldParams(view_logging="examined").logged_views(EXAMINED).tolist() == EXAMINED.tolist()


def test_a_bad_logging_setting_is_refused():
    with pytest.raises(ValueError, match="rendered, examined"):
        WorldParams(view_logging="everything")
    with pytest.raises(ValueError, match="viewport"):
        WorldParams(viewport=-1)


def test_the_default_world_logs_a_view_for_every_shown_legacy_item(small_world_engine):
    with small_world_engine.connect() as conn:
        shown = conn.execute(select(func.count()).select_from(Impression)
                             .where(Impression.model_version == config.LEGACY)).scalar()
        viewed = conn.execute(select(func.count(func.distinct(Outcome.impression_id)))
                              .where(Outcome.kind == "view")).scalar()
        clicks_by_position = dict(conn.execute(
            select(Impression.position, func.count()).join(Outcome, Outcome.impression_id == Impression.id)
            .where(Outcome.kind == "click").group_by(Impression.position)).all())
    assert viewed == shown > 0
    assert clicks_by_position[0] > 2 * clicks_by_position[9]  # clicks still need examination


def test_a_world_built_before_the_setting_loads_as_examined(world_copy):
    from sqlalchemy.orm import Session

    with Session(world_copy) as s:
        assert load_truth(s).params.view_logging == "rendered"
        row = s.get(WorldTruth, "params")
        row.meta = {k: v for k, v in row.meta.items() if k not in ("view_logging", "viewport")}
        s.commit()
        assert load_truth(s).params.view_logging == "examined"
