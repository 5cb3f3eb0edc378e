"""Position bias: randomised adjacent swaps, the swap estimator against the simulator's known
examination curve, and the inverse propensity weights training uses."""

from __future__ import annotations

import numpy as np
import pytest

from ranker.rank.propensity import (
    CONTEXT_KEY,
    PairObservations,
    PropensityError,
    Swaps,
    check_curve,
    draw_swaps,
    estimate,
    ipw_weights,
    maybe_swaps,
)
from ranker.sim.truth import WorldParams, examination_probability

TRUE_CURVE = examination_probability(WorldParams(), 10)  # 1 / k^0.75, k = 1..10


def test_swaps_exchange_disjoint_adjacent_pairs_on_a_coin():
    rng = np.random.default_rng(0)
    offsets = set()
    for _ in range(200):
        s = draw_swaps(rng, 10)
        offsets.add(s.pairs[0])
        assert s.pairs in ((0, 2, 4, 6, 8), (1, 3, 5, 7))  # disjoint, covering the list from 0 or 1
        assert set(s.swapped) <= set(s.pairs)
        shown = s.apply(np.arange(10))
        assert sorted(shown) == list(range(10))
        moved = np.flatnonzero(shown != np.arange(10))
        assert sorted(moved) == sorted([p for q in s.swapped for p in (q, q + 1)])
    assert offsets == {0, 1}


def test_a_share_of_lists_is_randomised_and_the_record_round_trips():
    rng = np.random.default_rng(1)
    drawn = [maybe_swaps(rng, 10, 0.25) for _ in range(4000)]
    assert abs(np.mean([d is not None for d in drawn]) - 0.25) < 0.03
    assert maybe_swaps(rng, 10, 0.0) is None and maybe_swaps(rng, 1, 1.0) is None
    s = next(d for d in drawn if d is not None and d.swapped)
    assert Swaps.from_context(s.to_context()) == s
    assert Swaps.from_context({"pairs": [0], "swapped": [2]}) is None  # a swap of a pair never randomised
    assert Swaps.from_context("junk") is None


def _pbm_log(n_lists: int, seed: int, satiation: float = 0.0) -> PairObservations:
    """Lists of 10 randomised as :func:`draw_swaps` does (pairs from position 0 or 1, each swapped
    on a coin), clicked under the position-based model with the simulator's examination curve;
    each item has its own attraction. Items of one pair share a category one time in four; with
    ``satiation``, the lower of two such items loses that much attraction (logit), as the
    simulated users tire of a category."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(-1.0, 1.0, (n_lists, 10))
    same = rng.random((n_lists, 10)) < 0.25  # [:, p]: the pair from p shares a category
    top = rng.integers(0, 2, n_lists)[:, None] + 2 * np.arange(5)  # (lists, 5) pair tops
    real = top < 9
    swapped = (rng.random(top.shape) < 0.5) & real
    rows = np.arange(n_lists)[:, None]
    t, b = np.where(real, top, 0), np.where(real, top + 1, 0)
    shown = logit.copy()
    shown[rows, t], shown[rows, b] = np.where(swapped, logit[rows, b], logit[rows, t]), \
        np.where(swapped, logit[rows, t], logit[rows, b])
    shown[rows, b] -= np.where(real & same[rows, t], satiation, 0.0)
    clicked = (rng.random(logit.shape) < TRUE_CURVE) & (rng.random(logit.shape) < 1 / (1 + np.exp(-shown)))
    return PairObservations(np.broadcast_to(rows, top.shape)[real], top[real], swapped[real],
                            clicked[rows, t][real], clicked[rows, b][real], same[rows, t][real])


def _within(est, truth, ses: float = 3.0) -> np.ndarray:
    """Per position: the truth lies within ``ses`` standard errors of the estimate, on the log scale,
    the standard error read off the 95 % bootstrap interval."""
    log_low, log_high, log_est = np.log(est.low), np.log(est.high), np.log(est.curve)
    se = (log_high - log_low) / (2 * 1.96)
    return np.abs(log_est - np.log(truth)) <= ses * se + 1e-12


@pytest.fixture(scope="module")
def pbm_estimate():
    """The estimate from 100,000 randomised lists clicked under the simulator's curve."""
    return estimate(_pbm_log(100_000, seed=3), n_boot=300)


def test_the_swap_estimate_recovers_the_simulators_examination_curve(pbm_estimate):
    est = pbm_estimate
    assert len(est.curve) == 10 and est.curve[0] == 1.0
    assert _within(est, TRUE_CURVE).all(), (est.curve, TRUE_CURVE)
    assert (np.array(est.high) - np.array(est.low)).max() < 0.12  # tight enough to mean something
    assert est.eta == pytest.approx(WorldParams().examination_decay, abs=0.1)
    np.testing.assert_allclose(est.weighting_curve(10), np.arange(1, 11) ** -est.eta)


def test_a_wrong_curve_falls_outside_the_estimates_intervals(pbm_estimate):
    assert not _within(pbm_estimate, 1 / np.arange(1, 11) ** 0.6).all()
    assert not _within(pbm_estimate, 1 / np.arange(1, 11) ** 0.9).all()


def test_pairs_of_one_category_are_left_out_so_satiation_does_not_read_as_position_bias():
    obs = _pbm_log(100_000, seed=4, satiation=3.0)
    est = estimate(obs, n_boot=0)
    assert est.same_category_left_out == int(obs.same_category.sum()) > 0
    # Taken in, the same pairs say the second position is examined far less than it is.
    everything = PairObservations(**{**obs.__dict__, "same_category": np.zeros_like(obs.same_category)})
    biased = estimate(everything, n_boot=0)
    assert abs(est.curve[1] - TRUE_CURVE[1]) < 0.03  # 3 standard deviations at this many lists
    assert biased.curve[1] < TRUE_CURVE[1] - 0.08


def test_no_usable_pair_is_a_clear_error():
    empty = PairObservations(*(np.zeros(0, dtype=t) for t in (np.int64, np.int64, bool, bool, bool, bool)))
    with pytest.raises(PropensityError, match="no randomised pair"):
        estimate(empty)
    no_clicks = PairObservations(np.arange(4), np.zeros(4, np.int64), np.array([0, 1, 0, 1], bool),
                                 np.zeros(4, bool), np.zeros(4, bool), np.zeros(4, bool))
    with pytest.raises(PropensityError, match="too few clicks"):
        estimate(no_clicks)


def test_ipw_weights_are_inverse_propensities_clipped_and_one_when_unknown():
    curve = [1.0, 0.5, 0.1, 0.04]
    w = ipw_weights(np.array([0, 1, 2, 3, 7, -1]), curve, clip=20.0)
    np.testing.assert_allclose(w, [1.0, 2.0, 10.0, 20.0, 20.0, 1.0])  # 1/0.04 = 25 clipped; past the end: last
    np.testing.assert_allclose(ipw_weights(np.array([3]), curve, clip=30.0), [25.0])


def test_a_curve_must_start_at_one_and_lie_in_0_1():
    assert check_curve([1, 0.5]) == [1.0, 0.5]
    for bad in ([0.5, 0.4], [1.0, 0.0], [1.0, 1.5], [], "abc", None):
        with pytest.raises(PropensityError):
            check_curve(bad)


@pytest.mark.slow  # builds a small world of its own (about 10 s)
def test_the_estimate_from_a_simulated_worlds_log_matches_its_known_curve(tmp_path):
    """Every legacy list randomised: the served lists' swaps and clicks, read back from the log."""
    from ranker.data.db import make_engine
    from ranker.rank.propensity import estimate_from_log
    from ranker.sim.synth import build_world

    engine = make_engine(f"sqlite:///{tmp_path / 'w.db'}")
    build_world(engine, seed=42, scale="small", swap_share=1.0)
    est = estimate_from_log(engine)
    assert est.lists > 3000 and est.same_category_left_out > 0
    assert _within(est, TRUE_CURVE).all(), (est.curve, TRUE_CURVE)
    assert est.eta_ci[0] <= WorldParams().examination_decay <= est.eta_ci[1]


def test_serving_swaps_its_share_of_treatment_lists_and_records_them(served):
    from sqlalchemy import select

    from ranker.data.schema import Impression, ServedList
    from ranker.rank.propensity import save_swap_share
    from ranker.serving.service import recommend, service

    user = 1
    save_swap_share(served, 1.0)
    plain = service(served).recommend(user, "user-item", 10, request_id="plain")
    rec = recommend(user, "user-item", 10, engine=served, arm="treatment", request_id="r-1", source="test")
    with served.connect() as conn:
        ctx = conn.execute(select(ServedList.context).where(ServedList.request_id == "r-1")).scalar()
        logged = conn.execute(select(Impression.item_id).where(Impression.request_id == "r-1")
                              .order_by(Impression.position)).scalars().all()
    swaps = Swaps.from_context(ctx[CONTEXT_KEY])
    assert swaps is not None and swaps.swapped
    assert rec.item_ids == logged == list(swaps.apply(np.array(plain.item_ids)))
    assert [it.position for it in rec.items] == list(range(len(rec.items)))

    again = recommend(user, "user-item", 10, engine=served, arm="treatment", request_id="r-1b", log=False)
    assert again.item_ids == plain.item_ids  # not logged: nothing to learn from, so never swapped
    control = recommend(user, "user-item", 10, engine=served, arm="control", request_id="r-2")
    save_swap_share(served, 0.0)
    off = recommend(user, "user-item", 10, engine=served, arm="treatment", request_id="r-3")
    with served.connect() as conn:
        contexts = dict(conn.execute(select(ServedList.request_id, ServedList.context)
                                     .where(ServedList.request_id.in_(["r-2", "r-3"]))).all())
    assert contexts == {"r-2": None, "r-3": None}
    assert off.item_ids == plain.item_ids and control.item_ids != rec.item_ids


# --- Training with inverse propensity weights ---------------------------------------------


def _position_biased_lists(n_lists: int, seed: int) -> tuple:
    """Lists of 10 shown in the order of feature 0 (an old ranker's score), clicked when examined
    (1/k) and attracted by feature 1 only; every shown item is labelled, as rendered views give."""
    from ranker.rank.train import Dataset

    rng = np.random.default_rng(seed)
    x = rng.random((n_lists, 10, 4)).astype(np.float32)
    x = np.take_along_axis(x, np.argsort(-x[:, :, 0], axis=1)[:, :, None], axis=1)
    attracted = rng.random((n_lists, 10)) < 1 / (1 + np.exp(-(5 * (x[:, :, 1] - 0.5) - 1.0)))
    clicked = (rng.random((n_lists, 10)) < 1 / np.arange(1, 11)) & attracted
    keep = clicked.any(1) & ~clicked.all(1)
    n = int(keep.sum())
    data = Dataset(x[keep].reshape(-1, 4), clicked[keep].reshape(-1).astype(np.float32), np.repeat(np.arange(n), 10),
                   np.zeros(n * 10), np.arange(n * 10), positions=np.tile(np.arange(10), n))
    return data, list(1 / np.arange(1, 11))


def _slope_ratio(model) -> float:
    """How much the score rises with feature 0 (the old ranker's score), relative to feature 1 (what
    users like), averaged over random values of the other features."""
    import torch

    grid = np.random.default_rng(9).random((2000, 4)).astype(np.float32)

    def rise(col: int) -> float:
        lo, hi = grid.copy(), grid.copy()
        lo[:, col], hi[:, col] = 0.0, 1.0
        with torch.no_grad():
            return float((model(torch.from_numpy(hi)) - model(torch.from_numpy(lo))).mean())

    return rise(0) / rise(1)


def test_ipw_unlearns_the_position_a_click_came_from():
    """Uncorrected, the ranker learns that the old ranker's top items get clicked; weighted by
    1/p(position), it learns what users like."""
    from ranker.rank.train import TrainConfig, checkpoint_meta, train

    data, curve = _position_biased_lists(1000, seed=1)
    plain = train(data, TrainConfig(epochs=6, lr=0.01))
    corrected = train(data, TrainConfig(epochs=6, lr=0.01, position_correction="ipw", propensities=curve))
    assert _slope_ratio(plain.model) > 0.5
    assert abs(_slope_ratio(corrected.model)) < 0.2
    params = checkpoint_meta(corrected, None, None)["train_params"]
    assert params["position_correction"] == "ipw" and params["propensities"] == pytest.approx(curve)


def test_ipw_weights_each_positive_by_its_position_and_keeps_the_mean():
    from ranker.rank.train import TrainConfig, ipw_row_weights

    data, curve = _position_biased_lists(200, seed=2)
    assert ipw_row_weights(data, TrainConfig()) is None
    w = ipw_row_weights(data, TrainConfig(position_correction="ipw", propensities=curve, propensity_clip=5.0))
    positive = data.y > 0
    assert w[~positive].tolist() == [1.0] * int((~positive).sum())
    assert w[positive].mean() == pytest.approx(1.0)
    raw = np.minimum(data.positions[positive] + 1.0, 5.0)  # 1 / p(k) = k here, clipped at 5
    np.testing.assert_allclose(w[positive], raw / raw.mean(), rtol=1e-6)


def test_ipw_needs_positions_propensities_and_the_pairwise_loss(tmp_path):
    from ranker.rank.train import DataError, Dataset, TrainConfig, load_dataset, train

    data, curve = _position_biased_lists(200, seed=2)
    no_positions = Dataset(data.x, data.y, data.groups, data.user_ids, data.item_ids)
    with pytest.raises(DataError, match="no position column"):
        train(no_positions, TrainConfig(epochs=1, position_correction="ipw", propensities=curve))
    with pytest.raises(DataError, match="ranker propensity estimate"):
        train(data, TrainConfig(epochs=1, position_correction="ipw"))
    with pytest.raises(ValueError, match="--loss pairwise"):
        TrainConfig(loss="listnet", position_correction="ipw")
    with pytest.raises(ValueError, match="auto, ipw, none"):
        TrainConfig(position_correction="dr")

    from ranker.rank.features import feature_columns

    path = tmp_path / "bad.csv"
    path.write_text(",".join(["user_id", "item_id", *feature_columns(), "label", "position"]) + "\n"
                    + ",".join(["1", "2", *["0.5"] * len(feature_columns()), "1", "1.5"]) + "\n"
                    + ",".join(["1", "3", *["0.5"] * len(feature_columns()), "0", "2"]) + "\n")
    with pytest.raises(DataError, match="position=1.5 is not a 0-based position"):
        load_dataset(path, min_positives=1)


def test_auto_corrects_only_with_propensities_positions_and_the_pairwise_loss():
    from ranker.rank.train import Dataset, TrainConfig, train

    data, curve = _position_biased_lists(200, seed=2)
    assert TrainConfig().position_correction == "auto"
    used = train(data, TrainConfig(epochs=1, propensities=curve)).config
    assert (used.position_correction, used.propensities) == ("ipw", pytest.approx(curve))
    assert train(data, TrainConfig(epochs=1)).config.position_correction == "none"
    no_positions = Dataset(data.x, data.y, data.groups, data.user_ids, data.item_ids)
    plain = train(no_positions, TrainConfig(epochs=1, propensities=curve)).config
    assert (plain.position_correction, plain.propensities) == ("none", None)
    assert train(data, TrainConfig(epochs=1, loss="listnet", propensities=curve)).config.position_correction == "none"


def test_training_estimates_from_the_logged_swaps_when_none_is_saved(world_copy):
    from ranker.rank.propensity import saved_estimate, with_propensities
    from ranker.rank.train import TrainConfig

    curve = with_propensities(world_copy, TrainConfig()).propensities  # the legacy feed's 5 % of lists
    assert curve is not None and curve[0] == 1.0 and curve[1] < 1.0 and len(curve) == 100
    assert saved_estimate(world_copy) is None  # used, not saved


def test_training_takes_the_saved_estimate_unless_given_a_curve(tmp_path):
    from ranker.data.db import ensure_schema, make_engine
    from ranker.rank.propensity import PropensityEstimate, save_estimate, with_propensities
    from ranker.rank.train import TrainConfig

    engine = ensure_schema(make_engine(f"sqlite:///{tmp_path / 'e.db'}"))  # nothing logged: no estimate
    with pytest.raises(PropensityError, match="none can be made.*--propensities FILE"):
        with_propensities(engine, TrainConfig(position_correction="ipw"))
    assert with_propensities(engine, TrainConfig()).propensities is None  # auto: trains without correction
    assert with_propensities(engine, TrainConfig(position_correction="none")).propensities is None
    save_estimate(engine, PropensityEstimate(curve=[1.0, 0.6, 0.5], low=[1.0] * 3, high=[1.0] * 3, eta=0.5))
    cfg = with_propensities(engine, TrainConfig(position_correction="ipw"))
    assert cfg.propensities[:3] == pytest.approx([1.0, 2 ** -0.5, 3 ** -0.5])  # the fitted power law
    given = with_propensities(engine, TrainConfig(position_correction="ipw", propensities=[1.0, 0.2]))
    assert given.propensities == [1.0, 0.2]
