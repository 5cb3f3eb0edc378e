from __future__ import annotations

import numpy as np
import pytest
import torch

from ranker.rank.losses import count_pairs, pairwise_logistic_loss


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
