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
