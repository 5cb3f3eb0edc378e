"""Candidates per slot: a setting serving reads on every request, set from the CLI and the dashboard."""

from __future__ import annotations

import pytest

from ranker import config
from ranker.cli import main
from ranker.rank import tuning
from ranker.rank.rerank import validate_fetch_multiplier
from ranker.serving.service import recommend
from tests.test_serve import engaged_developer


def test_serving_proposes_the_saved_number_of_candidates_per_slot(served):
    uid = engaged_developer(served)
    guide = recommend(uid, "developer-startup", 5, engine=served, arm="treatment", log=False)
    assert max(i.base_rank for i in guide.items) < config.FETCH_MULTIPLIER * 5
    tuning.save_fetch_multiplier(served, 1)  # the base model's top k only: a reordering of them
    top = recommend(uid, "developer-startup", 5, engine=served, arm="treatment", log=False)
    assert sorted(i.base_rank for i in top.items) == [0, 1, 2, 3, 4]
    tuning.save_fetch_multiplier(served, 6)
    deep = recommend(uid, "developer-startup", 5, engine=served, arm="treatment", log=False)
    assert tuning.fetch_multiplier(served) == 6 and len(deep.items) == 5


@pytest.mark.parametrize("bad", [0, 11, 2.5, "two", None])
def test_bad_candidates_per_slot_are_refused_in_one_line(bad):
    with pytest.raises(ValueError, match="candidates per slot must be a whole number"):
        validate_fetch_multiplier(bad)


def test_the_cli_sets_it_and_refuses_a_bad_value_saving_nothing(served, capsys):
    assert main(["weights", "set", "--candidates-per-slot", "3"]) == 0
    assert "candidates per slot: 3" in capsys.readouterr().out
    assert main(["weights", "set", "recency=0.4", "--candidates-per-slot", "0"]) == 2
    assert "from 1 to 10" in capsys.readouterr().err
    assert tuning.fetch_multiplier(served) == 3 and tuning.current_weights(served)["recency"] == 0.2
