from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import ndcg_score, roc_auc_score

from ranker.rank.metrics import (
    auc,
    category_entropy,
    coverage,
    intra_list_diversity,
    mean_ndcg_at_k,
    mrr,
    ndcg_at_k,
    pairwise_accuracy,
)

# (y_true, y_score, k): ties, k shorter than the list, graded relevance, no positive.
NDCG_CASES = {
    "binary_no_ties": ([1, 0, 0, 1, 0], [0.9, 0.8, 0.7, 0.2, 0.1], 5),
    "k_shorter_than_list": ([0, 1, 0, 1, 0, 0], [0.6, 0.5, 0.4, 0.3, 0.2, 0.1], 2),
    "graded": ([3, 2, 0, 1, 2], [0.1, 0.4, 0.35, 0.8, 0.7], 4),
    "ties_inside_k": ([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.1], 4),
    "tie_block_straddles_k": ([0, 2, 1, 0, 1], [0.9, 0.5, 0.5, 0.5, 0.1], 2),
    "all_scores_tied": ([0, 0, 1, 2], [1.0, 1.0, 1.0, 1.0], 3),
    "k_longer_than_list": ([0, 1, 1], [0.3, 0.2, 0.1], 10),
    "no_positive": ([0, 0, 0], [0.3, 0.2, 0.1], 2),
}


@pytest.mark.parametrize("case", list(NDCG_CASES))
def test_ndcg_at_k_matches_sklearn_including_ties(case):
    y_true, y_score, k = NDCG_CASES[case]

    expected = ndcg_score([y_true], [y_score], k=k)

    assert ndcg_at_k(np.array(y_true), np.array(y_score), k) == pytest.approx(expected, abs=1e-12)


def test_ndcg_of_list_without_positive_is_zero_like_sklearn():
    assert ndcg_score([[0, 0, 0]], [[0.3, 0.2, 0.1]], k=2) == 0.0
    assert ndcg_at_k([0, 0, 0], [0.3, 0.2, 0.1], k=2) == 0.0


def test_ndcg_ties_average_the_gains_by_hand():
    # One positive tied with one negative at the top: gain 0.5 at rank 1 and rank 2.
    expected = 0.5 * (1.0 + 1.0 / math.log2(3))
    assert ndcg_at_k([1, 0], [0.7, 0.7], k=2) == pytest.approx(expected)


def test_ndcg_at_k_rejects_negative_relevance_and_k_below_one():
    with pytest.raises(ValueError, match="non-negative"):
        ndcg_at_k([1, -1], [0.2, 0.1], k=2)
    with pytest.raises(ValueError, match="k must be"):
        ndcg_at_k([1, 0], [0.2, 0.1], k=0)


def test_mean_ndcg_matches_sklearn_per_group_on_shuffled_rows():
    rng = np.random.default_rng(7)
    n = 3000
    groups = rng.integers(0, 300, size=n)  # unsorted, sizes vary, some of size 1
    y_true = rng.integers(0, 3, size=n) * (rng.random(n) < 0.4)  # many all-zero groups
    y_score = np.round(rng.random(n), 1)  # coarse scores -> many ties
    k = 5

    per_group = []
    for g in np.unique(groups):
        t, s = y_true[groups == g], y_score[groups == g]
        if t.sum() == 0:
            continue  # skipped by design
        per_group.append(1.0 if len(t) == 1 else ndcg_score([t], [s], k=k))
    assert 0 < len(per_group) < len(np.unique(groups))  # both kinds of group occur

    assert mean_ndcg_at_k(y_true, y_score, groups, k) == pytest.approx(np.mean(per_group), 1e-12)


def test_mean_ndcg_skips_groups_without_positive():
    y_true = [1, 0, 0, 0]
    y_score = [0.9, 0.1, 0.5, 0.4]
    groups = [0, 0, 1, 1]  # group 1 has no positive: skipped, not counted as 0
    assert mean_ndcg_at_k(y_true, y_score, groups, k=2) == 1.0


def test_mean_ndcg_is_nan_when_no_group_has_a_positive():
    assert math.isnan(mean_ndcg_at_k([0, 0, 0], [0.1, 0.2, 0.3], [0, 0, 1], k=2))


def test_mrr_by_hand_with_pessimistic_ties():
    y_true = [0, 1, 0,  0, 0, 1, 1,  0, 0,  1, 0]
    y_score = [0.9, 0.5, 0.1,  0.8, 0.7, 0.6, 0.2,  0.5, 0.4,  0.3, 0.3]
    groups = [0, 0, 0,  1, 1, 1, 1,  2, 2,  3, 3]
    # group 0: rank 2; group 1: rank 3; group 2: no positive, skipped;
    # group 3: the negative ties the positive and ranks above it -> rank 2
    expected = (1 / 2 + 1 / 3 + 1 / 2) / 3
    assert mrr(y_true, y_score, groups) == pytest.approx(expected)


def test_mrr_is_one_when_every_group_ranks_a_positive_first():
    assert mrr([1, 0, 0, 1], [0.9, 0.1, 0.2, 0.3], [0, 0, 1, 1]) == 1.0


def test_mrr_is_nan_without_positives():
    assert math.isnan(mrr([0, 0], [0.1, 0.2], [0, 1]))


def test_pairwise_accuracy_by_hand_with_ties_and_groups():
    y_true = [1, 0, 0,  1, 1, 0,  0, 0]
    y_score = [0.8, 0.9, 0.1,  0.5, 0.2, 0.5,  0.3, 0.4]
    groups = [0, 0, 0,  1, 1, 1,  2, 2]
    # group 0: (p>n1) wrong, (p>n2) right -> 1 of 2
    # group 1: (0.5 vs 0.5) tie -> 0.5, (0.2 vs 0.5) wrong -> 0.5 of 2
    # group 2: no pair. Cross-group pairs are ignored.
    assert pairwise_accuracy(y_true, y_score, groups) == pytest.approx(1.5 / 4)


def test_pairwise_accuracy_is_nan_without_pairs():
    assert math.isnan(pairwise_accuracy([1, 0], [0.1, 0.2], [0, 1]))


def test_pairwise_accuracy_of_one_group_equals_sklearn_auc():
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 2, size=200)
    y_score = np.round(rng.random(200), 1)
    expected = roc_auc_score(y_true, y_score)
    assert pairwise_accuracy(y_true, y_score, np.zeros(200)) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("y_true", "y_score"),
    [
        ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]),
        ([1, 0, 1, 0, 1], [0.5, 0.5, 0.5, 0.2, 0.9]),  # ties across classes
        ([1, 0, 0, 1], [0.3, 0.3, 0.3, 0.3]),  # all tied -> 0.5
        ([0, 1, 1, 0, 0, 1], [6, 5, 4, 3, 2, 1]),  # integer scores
    ],
)
def test_auc_matches_sklearn_including_ties(y_true, y_score):
    assert auc(y_true, y_score) == pytest.approx(roc_auc_score(y_true, y_score), abs=1e-12)


def test_auc_is_nan_with_a_single_class_like_sklearn():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert math.isnan(roc_auc_score([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(auc([0, 0], [0.1, 0.2]))


def test_intra_list_diversity_of_two_items_sharing_only_category():
    ild = intra_list_diversity(["ai", "ai"], ["health", "finance"], ["startup", "investor"])
    assert ild == pytest.approx(1 - 1 / 3)


def test_intra_list_diversity_by_hand_over_three_pairs():
    categories = ["ai", "ai", "bio"]
    fields = ["x", "x", "x"]
    types = ["startup", "investor", "startup"]
    # pairs: (0,1) share cat+field -> 1/3; (0,2) share field+type -> 1/3; (1,2) field -> 2/3
    expected = (1 / 3 + 1 / 3 + 2 / 3) / 3
    assert intra_list_diversity(categories, fields, types) == pytest.approx(expected)


def test_intra_list_diversity_is_zero_for_identical_items_and_short_lists():
    assert intra_list_diversity(["a"] * 4, ["f"] * 4, ["t"] * 4) == 0.0
    assert intra_list_diversity(["a"], ["f"], ["t"]) == 0.0
    assert intra_list_diversity([], [], []) == 0.0


def test_intra_list_diversity_rejects_unequal_lengths():
    with pytest.raises(ValueError, match="one entry per item"):
        intra_list_diversity(["a", "b"], ["f"], ["t", "t"])


def test_coverage_counts_distinct_items_over_catalog():
    assert coverage([[1, 2, 3], [3, 4], [1]], catalog_size=10) == 0.4
    assert coverage([], catalog_size=10) == 0.0
    with pytest.raises(ValueError, match="catalog_size"):
        coverage([[1]], catalog_size=0)


def test_category_entropy_in_nats():
    assert category_entropy(["a", "b", "c", "d"]) == pytest.approx(math.log(4))
    p = np.array([2, 1, 1]) / 4
    assert category_entropy(["a", "a", "b", "c"]) == pytest.approx(-(p * np.log(p)).sum())
    assert category_entropy(["a", "a"]) == 0.0
    assert category_entropy([]) == 0.0
