"""Pairwise logistic (RankNet) loss over pairs drawn from the same group.

After ``allrank/models/losses/rankNet.py`` (allegro/allRank). A group is one ranked
list, e.g. one request or one user. For every pair ``(i, j)`` in the same group with
``labels[i] > labels[j]`` the loss term is ``log(1 + exp(-(s_i - s_j)))``, computed
as ``softplus`` so that huge score gaps stay finite.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def _check_rows(**tensors: Tensor) -> None:
    """Raise ValueError unless every tensor is 1-D with the same length."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if any(len(shape) != 1 for shape in shapes.values()) or len(set(shapes.values())) > 1:
        raise ValueError(f"expected 1-D tensors of one length (N,), got shapes {shapes}")


def _pair_mask(labels: Tensor, groups: Tensor) -> Tensor:
    """(N, N) bool mask; ``[i, j]`` is True when i, j share a group and labels[i] > labels[j]."""
    same_group = groups.unsqueeze(1) == groups.unsqueeze(0)
    ordered = labels.unsqueeze(1) > labels.unsqueeze(0)
    return same_group & ordered


def count_pairs(labels: Tensor, groups: Tensor) -> int:
    """Number of ordered training pairs in a batch.

    Parameters
    ----------
    labels : Tensor, shape (N,)
        Relevance, binary or graded.
    groups : Tensor, shape (N,), int64
        Group (list) id of each row.

    Returns
    -------
    int
        Count of pairs ``(i, j)`` with ``groups[i] == groups[j]`` and
        ``labels[i] > labels[j]``.
    """
    _check_rows(labels=labels, groups=groups)
    return int(_pair_mask(labels, groups).sum())


def pairwise_logistic_loss(scores: Tensor, labels: Tensor, groups: Tensor) -> Tensor:
    """Mean RankNet loss over same-group pairs with different labels.

    Parameters
    ----------
    scores : Tensor, shape (N,)
        Model outputs (unbounded logits).
    labels : Tensor, shape (N,)
        Relevance, binary or graded.
    groups : Tensor, shape (N,), int64
        Group (list) id of each row. Pairs never cross groups.

    Returns
    -------
    Tensor, shape ()
        ``mean(softplus(-(s_i - s_j)))`` over pairs with ``groups[i] == groups[j]``
        and ``labels[i] > labels[j]``. A batch with no such pair gives ``0.0``,
        still attached to the graph of ``scores`` so ``backward()`` works.

    Notes
    -----
    Builds (N, N) matrices, so memory grows as N**2; fine for batches of a few
    thousand rows.
    """
    _check_rows(scores=scores, labels=labels, groups=groups)
    mask = _pair_mask(labels, groups)
    if not bool(mask.any()):
        return scores.sum() * 0.0
    diff = scores.unsqueeze(1) - scores.unsqueeze(0)  # (N, N): s_i - s_j
    return F.softplus(-diff[mask]).mean()


def pairwise_logistic_loss_from_pairs(scores: Tensor, better: Tensor, worse: Tensor) -> Tensor:
    """The same loss over precomputed pairs: ``mean(softplus(-(s[better] - s[worse])))``.

    Parameters
    ----------
    scores : Tensor, shape (N,)
    better, worse : Tensor, shape (P,), int64
        Row indices of each pair; ``better[p]`` should rank above ``worse[p]``.

    Linear in N + P, so training can use it on any batch size; with the pairs from
    :func:`same_group_pairs` it equals :func:`pairwise_logistic_loss`.
    """
    if better.numel() == 0:
        return scores.sum() * 0.0
    return F.softplus(-(scores[better] - scores[worse])).mean()


def same_group_pairs(labels, groups):
    """All (better, worse) row-index pairs within the same group, as numpy int64 arrays.

    ``labels`` and ``groups`` are numpy arrays of shape (N,). Pairs are built group by
    group, so memory is the number of pairs, not N**2.
    """
    import numpy as np

    labels = np.asarray(labels)
    groups = np.asarray(groups, dtype=np.int64)
    if np.isin(labels, (0, 1)).all():
        return _binary_pairs(labels, groups)
    order = np.lexsort((-labels, groups))
    g = groups[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    ends = np.r_[starts[1:], len(g)]
    better, worse = [], []
    for a, b in zip(starts, ends):
        if b - a < 2:
            continue
        rows = order[a:b]
        lab = labels[rows]
        if lab[0] == lab[-1]:
            continue
        i, j = np.nonzero(lab[:, None] > lab[None, :])
        better.append(rows[i])
        worse.append(rows[j])
    if not better:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(better).astype(np.int64), np.concatenate(worse).astype(np.int64)


def _binary_pairs(labels, groups):
    """Vectorised positives x negatives cross join within each group (0/1 labels)."""
    import numpy as np

    pos = np.flatnonzero(labels == 1)
    neg = np.flatnonzero(labels == 0)
    neg = neg[np.argsort(groups[neg], kind="stable")]
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    ncount = np.bincount(groups[neg], minlength=n_groups)
    nstart = np.cumsum(ncount) - ncount
    reps = ncount[groups[pos]]
    better = np.repeat(pos, reps)
    offsets = np.arange(len(better)) - np.repeat(np.cumsum(reps) - reps, reps)
    worse = neg[np.repeat(nstart[groups[pos]], reps) + offsets]
    return better.astype(np.int64), worse.astype(np.int64)
