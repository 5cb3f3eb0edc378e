"""The history's eligible-item pools: the per-day view holds the items created by a moment, in
pool order, exactly as filtering the whole pool at that moment does."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np

from ranker.sim.synth import _Pool


def test_the_eligible_view_holds_the_same_items_in_the_same_order_as_filtering_the_pool():
    rng = np.random.default_rng(3)
    start = datetime(2025, 10, 3)
    created = (np.datetime64(start, "s") + rng.integers(-5 * 86400, 5 * 86400, size=500).astype("timedelta64[s]"))
    created[:40] = created[40]  # ties at one moment
    rows = np.flatnonzero(rng.random(500) < 0.6)
    pool = _Pool(rows, created)
    checked = 0
    for day in range(-6, 6):
        day_start = start + timedelta(days=day)
        moments = [np.datetime64(day_start, "s") + np.timedelta64(int(s), "s")
                   for s in [0, 86399, *rng.integers(0, 86400, size=20)]]
        for t64 in [*moments, created[40]] if day == 0 else moments:
            if not np.datetime64(day_start, "s") <= t64 < np.datetime64(day_start + timedelta(days=1), "s"):
                continue
            want = rows[created[rows] <= t64]
            view = pool.at(day_start, t64)
            assert len(view) == len(want)
            if len(want):
                q = np.arange(len(want))
                np.testing.assert_array_equal(view[q], want)
                draws = rng.integers(0, len(want), size=50)
                np.testing.assert_array_equal(view[draws], want[draws])
                checked += 1
    assert checked > 100
