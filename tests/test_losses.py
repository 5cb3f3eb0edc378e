from __future__ import annotations

import numpy as np
import pytest
import torch

from ranker.rank.losses import (
    count_pairs,
    lambda_loss,
    listnet_loss,
    pad_lists,
    pairwise_logistic_loss,
    split_long_lists,
)


def reference_loss(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """Explicit double loop, float64: mean of log(1 + exp(-(s_i - s_j)))."""
    terms = []
    for i in range(len(scores)):
        for j in range(len(scores)):
            if groups[i] == groups[j] and labels[i] > labels[j]:
                terms.append(np.logaddexp(0.0, -(scores[i] - scores[j])))
    return float(np.mean(terms)) if terms else 0.0


def as_tensors(scores, labels, groups):
    return (
        torch.tensor(scores, dtype=torch.float64, requires_grad=True),
        torch.tensor(labels, dtype=torch.float64),
        torch.tensor(groups, dtype=torch.int64),
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_matches_numpy_double_loop_over_several_groups(seed):
    rng = np.random.default_rng(seed)
    n = 60
    scores = rng.normal(scale=3.0, size=n)
    labels = rng.integers(0, 3, size=n).astype(float)  # graded 0/1/2
    groups = rng.integers(0, 7, size=n)

    loss = pairwise_logistic_loss(*as_tensors(scores, labels, groups))

    assert loss.item() == pytest.approx(reference_loss(scores, labels, groups), rel=1e-12)


def test_weighted_pair_loss_matches_numpy_and_weights_of_one_change_nothing():
    from ranker.rank.losses import pairwise_logistic_loss_from_pairs, same_group_pairs

    rng = np.random.default_rng(5)
    scores, labels, groups = rng.normal(scale=3.0, size=50), rng.integers(0, 2, 50), rng.integers(0, 6, 50)
    better, worse = same_group_pairs(labels, groups)
    w = rng.uniform(1.0, 20.0, len(better))  # inverse propensities of the better rows' positions
    reference = float(np.mean(w * np.logaddexp(0.0, -(scores[better] - scores[worse]))))
    s, b, o = torch.tensor(scores), torch.from_numpy(better), torch.from_numpy(worse)
    assert pairwise_logistic_loss_from_pairs(s, b, o, torch.tensor(w)).item() == pytest.approx(reference, rel=1e-12)
    ones = pairwise_logistic_loss_from_pairs(s, b, o, torch.ones(len(better), dtype=torch.float64))
    assert ones.item() == pytest.approx(pairwise_logistic_loss_from_pairs(s, b, o).item(), rel=1e-12)
    with pytest.raises(ValueError, match="1-D tensors of one length"):
        pairwise_logistic_loss_from_pairs(s, b, o, torch.ones(3))


def test_count_pairs_counts_only_same_group_ordered_pairs():
    labels = torch.tensor([1.0, 0.0, 0.0, 2.0, 1.0, 0.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    # group 0: 1 positive x 2 negatives = 2; group 1: (2>1), (2>0), (1>0) = 3
    assert count_pairs(labels, groups) == 5


def test_all_equal_labels_give_zero_loss_that_still_backpropagates():
    scores, labels, groups = as_tensors([0.3, -1.2, 2.0], [1.0, 1.0, 1.0], [0, 0, 0])

    loss = pairwise_logistic_loss(scores, labels, groups)
    loss.backward()

    assert loss.item() == 0.0
    assert loss.shape == ()
    assert torch.equal(scores.grad, torch.zeros(3, dtype=torch.float64))


def test_groups_with_one_class_each_give_zero_loss():
    # A cross-group pair (row 0 vs row 1) exists but must not count.
    scores, labels, groups = as_tensors([0.0, 5.0], [1.0, 0.0], [0, 1])

    assert count_pairs(labels, groups) == 0
    assert pairwise_logistic_loss(scores, labels, groups).item() == 0.0


def test_pairs_across_groups_contribute_nothing():
    # Group 0 is ranked perfectly; group 1's negative outscores group 0's positive.
    scores = [4.0, 0.0, 10.0, 9.0]
    labels = [1.0, 0.0, 1.0, 0.0]
    groups = [0, 0, 1, 1]
    within = np.mean([np.logaddexp(0, -(4.0 - 0.0)), np.logaddexp(0, -(10.0 - 9.0))])
    with_cross_pairs = reference_loss(np.array(scores), np.array(labels), np.zeros(4))
    assert abs(within - with_cross_pairs) > 0.1  # the case tells the two apart

    loss = pairwise_logistic_loss(*as_tensors(scores, labels, groups))

    assert loss.item() == pytest.approx(within, rel=1e-12)


def test_huge_scores_give_finite_loss_and_grads():
    scores, labels, groups = as_tensors([1e4, -1e4, -1e4, 1e4], [1.0, 0.0, 1.0, 0.0], [0, 0, 1, 1])
    scores32 = scores.detach().float().requires_grad_(True)

    for s in (scores, scores32):
        loss = pairwise_logistic_loss(s, labels, groups)
        loss.backward()
        assert torch.isfinite(loss)
        assert torch.isfinite(s.grad).all()
        # group 0 is right by 2e4 (term ~0), group 1 wrong by 2e4 (term = 2e4)
        assert loss.item() == pytest.approx(1e4, rel=1e-6)
        assert s.grad.tolist() == pytest.approx([0.0, 0.0, -0.5, 0.5])


def test_gradient_step_raises_positive_scores_and_lowers_negative_ones():
    scores, labels, groups = as_tensors(
        [0.1, 0.4, -0.2, 0.3, 0.0], [1.0, 0.0, 0.0, 1.0, 0.0], [0, 0, 0, 1, 1]
    )

    pairwise_logistic_loss(scores, labels, groups).backward()

    positive = labels > 0
    assert (scores.grad[positive] < 0).all()  # descent moves them up
    assert (scores.grad[~positive] > 0).all()
    with torch.no_grad():
        before = pairwise_logistic_loss(scores, labels, groups)
        after = pairwise_logistic_loss(scores - 0.1 * scores.grad, labels, groups)
    assert after < before


def test_mismatched_shapes_raise_with_the_shapes():
    with pytest.raises(ValueError, match="shapes"):
        pairwise_logistic_loss(torch.zeros(3), torch.zeros(2), torch.zeros(3, dtype=torch.int64))


# --- Listwise losses: ListNet and LambdaLoss against plain numpy loops -------------------


def _lists(scores, labels, groups):
    """The lists of a flat batch: [(scores, labels)] per group id, in sorted id order, row order within."""
    return [(scores[groups == g], labels[groups == g]) for g in np.unique(groups)]


def _informative(y):
    return len(y) > 1 and y.max() > y.min()


def _softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


def reference_listnet(scores, labels, groups):
    """(loss, d loss / d scores) in float64: per list -sum(softmax(y) * log softmax(s)), mean over lists."""
    losses, grad = [], np.zeros(len(scores))
    kept = [g for g in np.unique(groups) if _informative(labels[groups == g])]
    for g in kept:
        rows = np.flatnonzero(groups == g)
        s, y = scores[rows], labels[rows]
        p, t = _softmax(s), _softmax(y)
        log_p = s - s.max() - np.log(np.exp(s - s.max()).sum())
        losses.append(-sum(t[i] * log_p[i] for i in range(len(s))))
        grad[rows] = (p - t) / len(kept)  # d/ds of the cross-entropy, averaged over lists
    return (float(np.mean(losses)) if losses else 0.0), grad


def reference_lambda(scores, labels, groups, scheme="ndcgLoss2PP", mu=10.0, sigma=1.0):
    """(loss, d loss / d scores) in float64, one pair at a time, as allRank's lambdaLoss (k=None):
    rank by score (ties in row order), sum -w * log2(sigmoid(sigma * (s_i - s_j))) over pairs
    with y_i > y_j, mean over lists."""
    losses, grad = [], np.zeros(len(scores))
    kept = [g for g in np.unique(groups) if _informative(labels[groups == g])]
    for g in kept:
        rows = np.flatnonzero(groups == g)
        s, y = scores[rows], labels[rows]
        rank = np.empty(len(s), int)
        rank[np.argsort(-s, kind="stable")] = np.arange(1, len(s) + 1)  # 1-based
        disc = lambda r: np.log2(1.0 + r)  # noqa: E731
        max_dcg = sum((2.0 ** v - 1.0) / disc(r) for r, v in enumerate(sorted(y, reverse=True), start=1))
        gain = (2.0 ** y - 1.0) / max_dcg
        total = 0.0
        for i in range(len(s)):
            for j in range(len(s)):
                if y[i] <= y[j]:
                    continue
                dg = abs(gain[i] - gain[j])
                w = abs(1 / disc(rank[i]) - 1 / disc(rank[j])) * dg
                if scheme == "ndcgLoss2PP":
                    delta = abs(rank[i] - rank[j])
                    w += mu * abs(1 / disc(delta) - 1 / disc(delta + 1)) * dg
                d = sigma * (s[i] - s[j])
                total += w * np.logaddexp(0.0, -d) / np.log(2.0)
                slope = -w * sigma * np.exp(-np.logaddexp(0.0, d)) / np.log(2.0) / len(kept)  # d term / d s_i
                grad[rows[i]] += slope
                grad[rows[j]] -= slope
        losses.append(total)
    return (float(np.mean(losses)) if losses else 0.0), grad


def padded(scores, labels, groups, dtype=torch.float64):
    """Flat arrays -> (B, L) scores (a leaf with grad), labels, mask and the (B, L) row index."""
    idx = pad_lists(groups)
    mask = idx >= 0
    s = torch.tensor(np.where(mask, scores[idx], -7.0), dtype=dtype, requires_grad=True)  # junk in the padding
    y = torch.tensor(np.where(mask, labels[idx], -1.0), dtype=dtype)
    return s, y, torch.from_numpy(mask), idx


def flat_grad(s, idx, n):
    grad = np.zeros(n)
    mask = idx >= 0
    grad[idx[mask]] = s.grad.numpy()[mask]
    return grad


def random_lists(seed, n=80, graded=True, ties=True):
    """Rows in shuffled groups of lengths 1 to ~20, graded labels, some tied scores."""
    rng = np.random.default_rng(seed)
    groups = rng.permutation(rng.integers(0, 8, size=n))
    scores = rng.normal(scale=2.0, size=n)
    if ties:
        scores[rng.random(n) < 0.3] = 0.5
    labels = rng.integers(0, 4 if graded else 2, size=n).astype(float)
    return scores, labels, groups


LISTWISE = {
    "listnet": (listnet_loss, reference_listnet),
    "lambdaRank": (lambda s, y, m: lambda_loss(s, y, m, scheme="lambdaRank"),
                   lambda *a: reference_lambda(*a, scheme="lambdaRank")),
    "ndcgLoss2PP": (lambda_loss, reference_lambda),
}


@pytest.mark.parametrize("graded", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", LISTWISE)
def test_listwise_loss_and_gradient_match_numpy_loops(name, seed, graded):
    loss_fn, reference = LISTWISE[name]
    scores, labels, groups = random_lists(seed, graded=graded)
    s, y, mask, idx = padded(scores, labels, groups)
    assert (~mask).any() and len(np.unique(scores)) < len(scores)  # the case has padding and ties

    loss = loss_fn(s, y, mask)
    loss.backward()

    want_loss, want_grad = reference(scores, labels, groups)
    assert loss.item() == pytest.approx(want_loss, rel=1e-10)
    np.testing.assert_allclose(flat_grad(s, idx, len(scores)), want_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", LISTWISE)
def test_listwise_loss_ignores_padding_and_list_order(name):
    loss_fn, _ = LISTWISE[name]
    scores, labels, groups = random_lists(3)
    s, y, mask, _ = padded(scores, labels, groups)
    wide = torch.cat([s.detach(), torch.full((s.shape[0], 5), 99.0, dtype=s.dtype)], dim=1)
    wide_y = torch.cat([y, torch.full((y.shape[0], 5), 3.0, dtype=y.dtype)], dim=1)
    wide_mask = torch.cat([mask, torch.zeros((mask.shape[0], 5), dtype=torch.bool)], dim=1)
    flip = torch.arange(s.shape[0] - 1, -1, -1)

    assert loss_fn(wide, wide_y, wide_mask).item() == pytest.approx(loss_fn(s, y, mask).item(), rel=1e-12)
    assert loss_fn(s[flip], y[flip], mask[flip]).item() == pytest.approx(loss_fn(s, y, mask).item(), rel=1e-12)


@pytest.mark.parametrize("name", LISTWISE)
def test_listwise_all_equal_labels_give_zero_loss_that_still_backpropagates(name):
    loss_fn, _ = LISTWISE[name]
    s = torch.tensor([[0.3, -1.2, 2.0], [1.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True], [True, True, False]])

    loss = loss_fn(s, y, mask)
    loss.backward()

    assert loss.item() == 0.0
    assert torch.equal(s.grad, torch.zeros_like(s))


@pytest.mark.parametrize("name", LISTWISE)
def test_listwise_huge_scores_give_finite_loss_and_grads(name):
    loss_fn, reference = LISTWISE[name]
    scores = np.array([1e4, -1e4, 0.0, -1e4, 1e4])
    labels = np.array([1.0, 0.0, 0.0, 1.0, 0.0])
    groups = np.array([0, 0, 0, 1, 1])
    for dtype in (torch.float64, torch.float32):
        s, y, mask, idx = padded(scores, labels, groups, dtype)
        loss = loss_fn(s, y, mask)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
        want_loss, want_grad = reference(scores, labels, groups)
        assert loss.item() == pytest.approx(want_loss, rel=1e-6)
        np.testing.assert_allclose(flat_grad(s, idx, 5), want_grad, atol=1e-6)


@pytest.mark.parametrize("name", LISTWISE)
def test_listwise_small_step_against_the_gradient_lowers_the_loss(name):
    loss_fn, _ = LISTWISE[name]
    scores, labels, groups = random_lists(4, graded=False, ties=False)
    s, y, mask, _ = padded(scores, labels, groups)

    loss_fn(s, y, mask).backward()

    with torch.no_grad():  # small enough that no two scores swap, so LambdaLoss's weights stay put
        assert loss_fn(s - 1e-3 * s.grad, y, mask) < loss_fn(s, y, mask)


def test_pad_lists_keeps_row_order_within_each_list():
    idx = pad_lists(np.array([5, 2, 5, 9, 2, 5]))

    assert idx.tolist() == [[1, 4, -1], [0, 2, 5], [3, -1, -1]]


def test_split_long_lists_cuts_only_long_lists_into_even_pieces():
    groups = np.repeat([0, 1, 2], [10, 3, 7])

    split = split_long_lists(groups, max_len=4, rng=0)

    sizes = {g: sorted(np.bincount(split[groups == g]).tolist()) for g in range(3)}
    sizes = {g: [c for c in v if c] for g, v in sizes.items()}
    assert sizes == {0: [3, 3, 4], 1: [3], 2: [3, 4]}
    assert all(len(np.unique(groups[split == p])) == 1 for p in np.unique(split))  # pieces never mix lists


def test_split_long_lists_draws_a_new_cut_per_seed():
    groups = np.zeros(40, np.int64)

    cuts = {tuple(split_long_lists(groups, max_len=8, rng=seed)) for seed in range(5)}

    assert len(cuts) == 5
    assert tuple(split_long_lists(groups, max_len=8, rng=3)) == tuple(split_long_lists(groups, max_len=8, rng=3))
