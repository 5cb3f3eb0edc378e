"""Offline ranking metrics over plain numpy arrays.

Conventions shared by every function here:

- Relevance ``y_true`` is a non-negative number per row; a row is a *positive*
  when ``y_true > 0``. NDCG uses linear gain, as ``sklearn.metrics.ndcg_score``.
- ``groups`` holds one list id per row (a request or a user). Rows need not be
  sorted or contiguous; group-wise metrics sort once and reduce with numpy,
  with no Python loop over rows or groups.
- Tied scores are never broken by row order. NDCG averages gains over ties
  (as sklearn does), AUC and pairwise accuracy count a tied pair as half right,
  and MRR ranks a tied negative above the positive.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Sequence

import numpy as np
from numpy.typing import ArrayLike


def _rows(**arrays: ArrayLike) -> list[np.ndarray]:
    """Arrays as 1-D numpy arrays of one length, else ValueError naming the shapes."""
    out = [np.asarray(a) for a in arrays.values()]
    shapes = {name: a.shape for name, a in zip(arrays, out, strict=True)}
    if any(a.ndim != 1 for a in out) or len({a.shape for a in out}) > 1:
        raise ValueError(f"expected 1-D arrays of one length (N,), got shapes {shapes}")
    return out


def _starts(keys_changed: np.ndarray) -> np.ndarray:
    """Indices where a run starts, given ``keys_changed[i]`` = row i differs from row i-1."""
    return np.flatnonzero(np.r_[True, keys_changed])


# --- NDCG --------------------------------------------------------------------


def _ndcg_by_group(
    y_true: np.ndarray, y_score: np.ndarray, groups: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Tie-averaged NDCG@k of every group.

    Returns
    -------
    ndcg : ndarray, shape (n_groups,)
        0.0 for a group with no positive, like sklearn.
    has_positive : ndarray of bool, shape (n_groups,)
    """
    if k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    if np.any(y_true < 0):
        raise ValueError("NDCG needs non-negative relevance; shift or clip y_true first")
    n = len(y_true)
    y_true = y_true.astype(np.float64)
    y_score = y_score.astype(np.float64)

    # Sort by group, then by score descending: each group becomes one ranked run.
    order = np.lexsort((-y_score, groups))
    g, s, rel = groups[order], y_score[order], y_true[order]
    new_group = g[1:] != g[:-1]
    group_start = _starts(new_group)
    group_id = np.cumsum(np.r_[False, new_group])  # (N,) 0..n_groups-1
    rank = np.arange(n) - group_start[group_id]  # 0-based rank inside the group
    discount = np.zeros(n)
    top = rank < k
    discount[top] = 1.0 / np.log2(rank[top] + 2.0)

    # Tied scores inside a group share their mean gain over the block's discounts.
    block_start = _starts(new_group | (s[1:] != s[:-1]))
    block_size = np.diff(np.r_[block_start, n])
    block_dcg = (
        np.add.reduceat(rel, block_start) / block_size * np.add.reduceat(discount, block_start)
    )
    n_groups = len(group_start)
    dcg = np.bincount(group_id[block_start], weights=block_dcg, minlength=n_groups)

    # Ideal order: same group runs (same sizes, same ranks), relevance descending.
    ideal_rel = y_true[np.lexsort((-y_true, groups))]
    idcg = np.bincount(group_id, weights=ideal_rel * discount, minlength=n_groups)

    has_positive = idcg > 0
    ndcg = np.zeros(n_groups)
    ndcg[has_positive] = dcg[has_positive] / idcg[has_positive]
    return ndcg, has_positive


def ndcg_at_k(y_true: ArrayLike, y_score: ArrayLike, k: int) -> float:
    """NDCG@k of one ranked list, equal to ``sklearn.metrics.ndcg_score([y_true], [y_score], k=k)``.

    Parameters
    ----------
    y_true : array-like, shape (N,)
        Non-negative relevance, binary or graded (linear gain).
    y_score : array-like, shape (N,)
        Predicted scores; higher ranks first. Ties average their gains.
    k : int
        Cut-off rank, >= 1.

    Returns
    -------
    float
        In [0, 1]; 0.0 for a list with no positive. Unlike sklearn, a list of
        length 1 is accepted (1.0 if it is a positive).
    """
    y_true, y_score = _rows(y_true=y_true, y_score=y_score)
    if len(y_true) == 0:
        return 0.0
    ndcg, _ = _ndcg_by_group(y_true, y_score, np.zeros(len(y_true), dtype=np.int64), k)
    return float(ndcg[0])


def ranked_metrics_at_k(relevant: ArrayLike, order: ArrayLike, k: int) -> dict[str, float]:
    """NDCG@k, AP@k and recall@k of one ranked list with binary relevance.

    Parameters
    ----------
    relevant : array-like of bool, shape (N,)
        Which of the N candidates are relevant.
    order : array-like of int, shape (M,)
        Candidate indices in ranked order (M <= N; only the first k count).
    k : int
        Cut-off rank, >= 1.

    Returns
    -------
    dict
        ``ndcg``: DCG of the top k over the ideal DCG; ``ap``: the sum of precision@i over the
        relevant ranks i <= k, divided by min(k, relevant); ``recall``: relevant items in the
        top k over all relevant. All 0.0 when nothing is relevant.
    """
    rel = np.asarray(relevant, dtype=bool)
    top = np.asarray(order, dtype=np.int64)[:k]
    n_rel = int(rel.sum())
    if n_rel == 0:
        return {"ndcg": 0.0, "ap": 0.0, "recall": 0.0}
    hits = rel[top]
    discounts = 1.0 / np.log2(np.arange(2, len(top) + 2))
    ideal = discounts[: min(n_rel, len(top))].sum()
    precision = np.cumsum(hits) / np.arange(1, len(top) + 1)
    return {"ndcg": float((hits * discounts).sum() / ideal),
            "ap": float((precision * hits).sum() / min(k, n_rel)),
            "recall": float(hits.sum() / n_rel)}


def ndcg_per_group(y_true: ArrayLike, y_score: ArrayLike, groups: ArrayLike, k: int) -> np.ndarray:
    """NDCG@k of every group that has a positive, in ascending group order.

    Two scorings of the same rows give aligned arrays, ready for a paired comparison;
    their means are :func:`mean_ndcg_at_k`.
    """
    y_true, y_score, groups = _rows(y_true=y_true, y_score=y_score, groups=groups)
    if len(y_true) == 0:
        return np.zeros(0)
    ndcg, has_positive = _ndcg_by_group(y_true, y_score, groups, k)
    return ndcg[has_positive]


def mean_ndcg_at_k(y_true: ArrayLike, y_score: ArrayLike, groups: ArrayLike, k: int) -> float:
    """Mean over groups of :func:`ndcg_at_k`.

    Parameters
    ----------
    y_true, y_score, groups : array-like, shape (N,)
        Relevance, scores and list id of each row.
    k : int
        Cut-off rank inside each group, >= 1.

    Returns
    -------
    float
        Mean NDCG@k over groups with at least one positive. Groups with no
        positive are skipped (their NDCG is undefined, not a miss). nan when no
        group has a positive.
    """
    y_true, y_score, groups = _rows(y_true=y_true, y_score=y_score, groups=groups)
    if len(y_true) == 0:
        return float("nan")
    ndcg, has_positive = _ndcg_by_group(y_true, y_score, groups, k)
    return float(ndcg[has_positive].mean()) if has_positive.any() else float("nan")


# --- MRR ---------------------------------------------------------------------


def mrr(y_true: ArrayLike, y_score: ArrayLike, groups: ArrayLike) -> float:
    """Mean reciprocal rank of the first positive in each group.

    Parameters
    ----------
    y_true : array-like, shape (N,)
        Relevance; only whether it is > 0 matters.
    y_score : array-like, shape (N,)
        Scores; a negative tied with the group's best positive ranks above it.
    groups : array-like, shape (N,)
        List id of each row.

    Returns
    -------
    float
        Mean over groups with at least one positive of ``1 / rank``, where rank
        is 1 + the number of negatives scored at or above the group's best
        positive (ties go against the model, so constant scores do not look
        perfect). nan when no group has a positive.
    """
    y_true, y_score, groups = _rows(y_true=y_true, y_score=y_score, groups=groups)
    unique_groups, group_id = np.unique(groups, return_inverse=True)
    n_groups = len(unique_groups)
    positive = y_true > 0
    has_positive = np.bincount(group_id[positive], minlength=n_groups) > 0
    if not has_positive.any():
        return float("nan")

    best_positive = np.full(n_groups, -np.inf)
    np.maximum.at(best_positive, group_id[positive], y_score[positive].astype(np.float64))
    neg_group = group_id[~positive]
    neg_above = y_score[~positive] >= best_positive[neg_group]
    n_above = np.bincount(neg_group[neg_above], minlength=n_groups)
    return float(np.mean(1.0 / (1.0 + n_above[has_positive])))


# --- AUC and pairwise accuracy -----------------------------------------------


def _concordant_pairs(
    y_true: np.ndarray, y_score: np.ndarray, groups: np.ndarray
) -> tuple[float, float]:
    """Correctly ordered (positive, negative) same-group pairs, ties as 0.5, and all such pairs.

    Mann-Whitney per group: with 1-based mid-ranks of scores inside the group,
    the correct pairs are ``sum(ranks of positives) - P * (P + 1) / 2``.
    """
    n = len(y_true)
    if n == 0:
        return 0.0, 0.0
    order = np.lexsort((y_score, groups))
    g, s, positive = groups[order], y_score[order], y_true[order] > 0
    new_group = g[1:] != g[:-1]
    group_start = _starts(new_group)
    group_id = np.cumsum(np.r_[False, new_group])
    block_start = _starts(new_group | (s[1:] != s[:-1]))
    block_id = np.repeat(np.arange(len(block_start)), np.diff(np.r_[block_start, n]))
    block_end = np.r_[block_start[1:], n]
    mid_rank = (block_start[block_id] + block_end[block_id] + 1) / 2.0 - group_start[group_id]

    n_groups = len(group_start)
    n_pos = np.bincount(group_id, weights=positive, minlength=n_groups)
    n_neg = np.bincount(group_id, minlength=n_groups) - n_pos
    pos_rank_sum = np.bincount(group_id[positive], weights=mid_rank[positive], minlength=n_groups)
    correct = pos_rank_sum - n_pos * (n_pos + 1) / 2.0
    return float(correct.sum()), float((n_pos * n_neg).sum())


def auc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """ROC AUC, equal to ``sklearn.metrics.roc_auc_score`` (ties count half).

    Parameters
    ----------
    y_true : array-like, shape (N,)
        1 (or any value > 0) for a positive, 0 for a negative.
    y_score : array-like, shape (N,)

    Returns
    -------
    float
        nan when only one class is present.
    """
    y_true, y_score = _rows(y_true=y_true, y_score=y_score)
    return pairwise_accuracy(y_true, y_score, np.zeros(len(y_true), dtype=np.int64))


def pairwise_accuracy(y_true: ArrayLike, y_score: ArrayLike, groups: ArrayLike) -> float:
    """Share of same-group (positive, negative) pairs the scores order correctly.

    :func:`auc` is this over a single group.

    Parameters
    ----------
    y_true : array-like, shape (N,)
        Relevance, binarised at > 0: (2, 1) pairs are not counted.
    y_score : array-like, shape (N,)
        Scores; a tied pair counts 0.5.
    groups : array-like, shape (N,)
        List id of each row; pairs never cross groups.

    Returns
    -------
    float
        Correct pairs / all pairs, pooled over groups. nan when there is no pair.
    """
    y_true, y_score, groups = _rows(y_true=y_true, y_score=y_score, groups=groups)
    correct, n_pairs = _concordant_pairs(y_true, y_score, groups)
    return correct / n_pairs if n_pairs else float("nan")


# --- Beyond accuracy: diversity, coverage, entropy --------------------------


def intra_list_diversity(
    categories: Sequence[Hashable], fields: Sequence[Hashable], types: Sequence[Hashable]
) -> float:
    """Mean dissimilarity over all item pairs of one list.

    Parameters
    ----------
    categories, fields, types : sequence, length N
        Attributes of each recommended item (see ``config.DIVERSITY_ATTRIBUTES``),
        compared with ``==``.

    Returns
    -------
    float
        Mean over pairs of ``1 - (1/3) * ([cat equal] + [field equal] + [type equal])``,
        in [0, 1]; 0.0 for a list shorter than 2.
    """
    n = len(categories)
    if len(fields) != n or len(types) != n:
        raise ValueError(
            f"categories, fields and types need one entry per item, "
            f"got lengths {n}, {len(fields)}, {len(types)}"
        )
    if n < 2:
        return 0.0
    # Pairs that agree on an attribute: sum over its values of c * (c - 1) / 2.
    equal_pairs = sum(
        c * (c - 1) // 2 for attr in (categories, fields, types) for c in Counter(attr).values()
    )
    n_pairs = n * (n - 1) // 2
    return 1.0 - equal_pairs / (3 * n_pairs)


def coverage(recommended_item_ids_lists: Iterable[Iterable[Hashable]], catalog_size: int) -> float:
    """Catalog coverage: distinct recommended items / ``catalog_size``.

    Parameters
    ----------
    recommended_item_ids_lists : iterable of iterables of item ids
        One list per user or request.
    catalog_size : int
        Number of items that could have been recommended, > 0.
    """
    if catalog_size <= 0:
        raise ValueError(f"catalog_size must be positive, got {catalog_size}")
    distinct = set().union(*(set(ids) for ids in recommended_item_ids_lists))
    return len(distinct) / catalog_size


def category_entropy(categories: Sequence[Hashable]) -> float:
    """Shannon entropy, in nats, of the category distribution of one list.

    0.0 for an empty list or a single category; ``log(C)`` for C equally
    frequent categories.
    """
    counts = np.fromiter(Counter(categories).values(), dtype=np.float64)
    if counts.size == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0
