"""Ranking losses: pairwise logistic (RankNet) over same-group pairs, and listwise ListNet and LambdaLoss.

After ``allrank/models/losses/rankNet.py`` (allegro/allRank). A group is one ranked
list, e.g. one request or one user. For every pair ``(i, j)`` in the same group with
``labels[i] > labels[j]`` the loss term is ``log(1 + exp(-(s_i - s_j)))``, computed
as ``softplus`` so that huge score gaps stay finite.
"""

from __future__ import annotations

import math

import numpy as np
import torch
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


def pairwise_logistic_loss_from_pairs(scores: Tensor, better: Tensor, worse: Tensor,
                                      weights: Tensor | None = None) -> Tensor:
    """The same loss over precomputed pairs: ``mean(w * softplus(-(s[better] - s[worse])))``.

    Parameters
    ----------
    scores : Tensor, shape (N,)
    better, worse : Tensor, shape (P,), int64
        Row indices of each pair; ``better[p]`` should rank above ``worse[p]``.
    weights : Tensor, shape (P,), optional
        Each pair's weight ``w``, e.g. the inverse propensity of the better row's position
        (position-bias correction, :mod:`ranker.rank.propensity`); default 1. The mean is
        over pairs (divided by P, not by the weights' sum), so the weighted loss is an
        unbiased estimate of the loss a user who looked at every position would give.

    Linear in N + P, so training can use it on any batch size; with the pairs from
    :func:`same_group_pairs` and no weights it equals :func:`pairwise_logistic_loss`.
    """
    if better.numel() == 0:
        return scores.sum() * 0.0
    terms = F.softplus(-(scores[better] - scores[worse]))
    if weights is not None:
        _check_rows(better=better, weights=weights)
        terms = terms * weights
    return terms.mean()


def same_group_pairs(labels, groups):
    """All (better, worse) row-index pairs within the same group, as numpy int64 arrays.

    ``labels`` and ``groups`` are numpy arrays of shape (N,). Pairs are built group by
    group, so memory is the number of pairs, not N**2; but that number grows with the
    square of the group size. Training uses :func:`sample_pairs`, which caps it.
    """
    return sample_pairs(labels, groups, cap=None)


def sample_pairs(labels, groups, cap: int | None, rng=None):
    """(better, worse) row-index pairs within each group, at most ``cap`` per better row.

    Parameters
    ----------
    labels, groups : numpy arrays, shape (N,)
        Relevance (binary or graded) and group (list) id of each row; rows of a group
        need not be adjacent.
    cap : int or None
        Pairs per better row (per positive, with 0/1 labels). A row with at most ``cap``
        lower-labelled rows in its group is paired with every one of them, so a group
        small enough keeps exactly its :func:`same_group_pairs`. A row with more is paired
        with ``cap`` of them, distinct and drawn uniformly: a window of ``cap`` consecutive
        rows, at a random start, in a random order of the group's lower rows (one order
        per group and call, shared by its better rows). None: every pair.
    rng : numpy Generator or seed, optional
        Draws the samples; the same seed gives the same pairs. Default: seed 0.

    Returns
    -------
    better, worse : numpy int64 arrays, shape (P,)
        ``labels[better] > labels[worse]`` and ``groups[better] == groups[worse]``;
        ``better`` ascending; P <= cap * N. Memory and time are linear in N + P.
    """
    labels = np.asarray(labels)
    _, g = np.unique(np.asarray(groups), return_inverse=True)
    g = g.reshape(-1).astype(np.int64)
    parts = [_pairs_below(labels == level, labels < level, g, cap, rng) for level in np.unique(labels)[1:]]
    if not parts:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    if len(parts) == 1:
        return parts[0]
    better, worse = np.concatenate([b for b, _ in parts]), np.concatenate([w for _, w in parts])
    order = np.argsort(better, kind="stable")
    return better[order], worse[order]


def count_sampled_pairs(labels, groups, cap: int | None) -> np.ndarray:
    """Pairs :func:`sample_pairs` gives each group, without building them.

    Returns an int64 array with one count per distinct group id, in sorted id order:
    the sum over the group's rows of ``min(cap, lower-labelled rows in the group)``.
    """
    labels = np.asarray(labels)
    _, g = np.unique(np.asarray(groups), return_inverse=True)
    g = g.reshape(-1)
    n_groups = int(g.max()) + 1 if len(g) else 0
    counts = np.zeros(n_groups, np.int64)
    for level in np.unique(labels)[1:]:
        upper = np.bincount(g[labels == level], minlength=n_groups)
        lower = np.bincount(g[labels < level], minlength=n_groups)
        counts += upper * (lower if cap is None else np.minimum(lower, cap))
    return counts


def _pairs_below(upper: np.ndarray, lower: np.ndarray, g: np.ndarray, cap: int | None, rng):
    """Pairs of each ``upper`` row with (up to ``cap`` of) the ``lower`` rows of its group.

    ``upper``, ``lower``: (N,) bool masks; ``g``: (N,) group codes 0..G-1.
    """
    better_rows = np.flatnonzero(upper)
    lower_rows = np.flatnonzero(lower)
    lower_rows = lower_rows[np.argsort(g[lower_rows], kind="stable")]  # grouped, row order within
    count = np.bincount(g[lower_rows], minlength=int(g.max()) + 1)
    first = np.cumsum(count) - count  # each group's first entry in lower_rows
    n = count[g[better_rows]]  # lower rows of each better row's group
    k = n if cap is None else np.minimum(n, cap)
    better = np.repeat(better_rows, k)
    t = np.arange(len(better)) - np.repeat(np.cumsum(k) - k, k)  # 0 .. k-1 for each better row
    if cap is not None and bool((n > cap).any()):
        rng = np.random.default_rng(0 if rng is None else rng)
        lower_rows = lower_rows[np.lexsort((rng.random(len(lower_rows)), g[lower_rows]))]  # shuffled within groups
        shift = np.zeros(len(better_rows), np.int64)
        over = n > cap
        shift[over] = rng.integers(0, n[over])
        t = (t + np.repeat(shift, k)) % np.repeat(n, k)
    worse = lower_rows[np.repeat(first[g[better_rows]], k) + t]
    return better.astype(np.int64, copy=False), worse.astype(np.int64, copy=False)


# --- Listwise losses -----------------------------------------------------------------
# After ``allrank/models/losses/listNet.py`` and ``lambdaLoss.py`` (allegro/allRank). They
# take whole lists as padded (B, L) tensors, built by :func:`pad_lists`; ``mask`` marks
# real rows. A list whose labels are all equal (or that has one row) carries no ranking
# signal and adds nothing, as with the pairwise loss; the batch loss is the mean over
# the lists that remain, and 0.0 (attached to the graph) when none does.

#: LambdaLoss weighting schemes (allRank's names): NDCG-Loss2++ and LambdaRank's |ΔNDCG|.
LAMBDA_SCHEMES = ("ndcgLoss2PP", "lambdaRank")


def pad_lists(groups) -> np.ndarray:
    """(B, L) int64 row indices of each group's rows, in row order, padded with -1.

    ``groups`` is a numpy array of shape (N,) of group ids; lists come in sorted id
    order; L is the longest list's length.
    """
    _, g = np.unique(np.asarray(groups), return_inverse=True)
    g = g.reshape(-1)
    if len(g) == 0:
        return np.empty((0, 0), np.int64)
    order = np.argsort(g, kind="stable")
    counts = np.bincount(g)
    pos = np.arange(len(g)) - np.repeat(np.cumsum(counts) - counts, counts)
    idx = np.full((len(counts), int(counts.max())), -1, np.int64)
    idx[g[order], pos] = order
    return idx


def split_long_lists(groups, max_len: int, rng=None) -> np.ndarray:
    """(N,) int64 group codes in which each list longer than ``max_len`` is cut at random into
    pieces of at most ``max_len`` rows (as even as the cut allows); shorter lists keep one code.

    LambdaLoss is O(L**2) per list: this bounds its memory on lists of any length. A new
    ``rng`` draw gives a new cut, so an epoch sees different pairs of a long list each time.
    """
    _, g = np.unique(np.asarray(groups), return_inverse=True)
    g = g.reshape(-1).astype(np.int64)
    if len(g) == 0:
        return g
    counts = np.bincount(g)
    if counts.max() <= max_len:
        return g
    rng = np.random.default_rng(0 if rng is None else rng)
    order = np.lexsort((rng.random(len(g)), g))  # shuffled within groups
    pos = np.empty(len(g), np.int64)
    pos[order] = np.arange(len(g)) - np.repeat(np.cumsum(counts) - counts, counts)
    pieces = -(-counts // max_len)  # ceil: pieces per list
    piece = pos % pieces[g]  # round robin: piece sizes differ by at most one
    first = np.cumsum(pieces) - pieces
    return first[g] + piece


def _informative(labels: Tensor, mask: Tensor) -> Tensor:
    """(B,) bool: the list has real rows with at least two different labels."""
    big = torch.finfo(labels.dtype).max
    top = labels.masked_fill(~mask, -big).amax(dim=1)
    bottom = labels.masked_fill(~mask, big).amin(dim=1)
    return mask.any(dim=1) & (top > bottom)


def listnet_loss(scores: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """ListNet's top-one loss: cross-entropy between softmax(labels) and softmax(scores) per list.

    Parameters
    ----------
    scores : Tensor, shape (B, L)
        Model outputs; padded entries are ignored, whatever their value.
    labels : Tensor, shape (B, L)
        Relevance, binary or graded (softmax of the labels is the target distribution).
    mask : Tensor, shape (B, L), bool
        True for real rows, False for padding.

    Returns
    -------
    Tensor, shape ()
        ``mean over lists of -sum_i softmax(labels)_i * log softmax(scores)_i``, over lists
        with two different labels. O(B * L) memory. Unlike allRank, which adds eps=1e-10 to
        the softmax before the log, ``log_softmax`` keeps huge scores exact and finite.
    """
    keep = _informative(labels, mask)
    if not bool(keep.any()):
        return scores.sum() * 0.0
    scores, labels, mask = scores[keep], labels[keep], mask[keep]
    log_p = torch.log_softmax(scores.masked_fill(~mask, -math.inf), dim=1)
    target = torch.softmax(labels.masked_fill(~mask, -math.inf), dim=1)
    return -(target * log_p.masked_fill(~mask, 0.0)).sum(dim=1).mean()


def lambda_loss(scores: Tensor, labels: Tensor, mask: Tensor, scheme: str = "ndcgLoss2PP",
                mu: float = 10.0, sigma: float = 1.0) -> Tensor:
    """LambdaLoss (Wang et al. 2018), as allRank's ``lambdaLoss`` with ``k=None``.

    Rank each list by ``scores`` (descending; ties keep row order). For every pair of
    positions ``i, j`` with ``labels[i] > labels[j]`` the term is
    ``-w_ij * log2(sigmoid(sigma * (s_i - s_j)))``, with gains ``G = (2**label - 1) / maxDCG``,
    discounts ``D(r) = log2(1 + r)`` at 1-based rank ``r``, and weights

    - ``lambdaRank``: ``|1/D(r_i) - 1/D(r_j)| * |G_i - G_j|`` (LambdaRank's |ΔNDCG|);
    - ``ndcgLoss2PP``: ``mu * |1/D(|r_i - r_j|) - 1/D(|r_i - r_j| + 1)| * |G_i - G_j|`` plus
      the ``lambdaRank`` weight (NDCG-Loss2++).

    The weights depend on the labels and the ranks only, so no gradient flows through them.

    Parameters
    ----------
    scores, labels : Tensor, shape (B, L)
    mask : Tensor, shape (B, L), bool
        True for real rows, False for padding.

    Returns
    -------
    Tensor, shape ()
        The sum of a list's terms, averaged over lists with two different labels (allRank
        sums over the whole batch). ``-log sigmoid`` is computed as ``softplus``, so huge
        score gaps stay finite, without allRank's eps clamp. Builds (B, L, L) matrices:
        cut long lists first with :func:`split_long_lists`.
    """
    if scheme not in LAMBDA_SCHEMES:
        raise ValueError(f"unknown LambdaLoss scheme {scheme!r}; choose one of: {', '.join(LAMBDA_SCHEMES)}")
    keep = _informative(labels, mask)
    if not bool(keep.any()):
        return scores.sum() * 0.0
    scores, labels, mask = scores[keep], labels[keep], mask[keep]
    with torch.no_grad():
        order = scores.detach().masked_fill(~mask, -math.inf).sort(dim=1, descending=True, stable=True).indices
        y = labels.gather(1, order)
        real = mask.gather(1, order)  # the padding sorts last
        gains = torch.where(real, torch.pow(2.0, y) - 1.0, torch.zeros_like(y))
        ranks = torch.arange(1, y.shape[1] + 1, dtype=scores.dtype, device=scores.device)
        inv_d = 1.0 / torch.log2(1.0 + ranks)  # 1 / D(r), r = 1..L
        ideal = gains.sort(dim=1, descending=True).values
        max_dcg = (ideal * inv_d).sum(dim=1, keepdim=True).clamp_min(1e-10)
        g = gains / max_dcg
        weights = (inv_d[:, None] - inv_d[None, :]).abs() * (g[:, :, None] - g[:, None, :]).abs()
        if scheme == "ndcgLoss2PP":
            delta = (ranks[:, None] - ranks[None, :]).abs()  # >= 1 off the diagonal
            inv_delta = 1.0 / torch.log2(1.0 + delta) - 1.0 / torch.log2(2.0 + delta)
            inv_delta = inv_delta.fill_diagonal_(0.0)
            weights = weights + mu * inv_delta * (g[:, :, None] - g[:, None, :]).abs()
        pairs = real[:, :, None] & real[:, None, :] & (y[:, :, None] > y[:, None, :])
        weights = torch.where(pairs, weights, torch.zeros_like(weights))
    s = scores.gather(1, order).masked_fill(~real, 0.0)
    diff = s[:, :, None] - s[:, None, :]
    terms = weights * F.softplus(-sigma * diff) / math.log(2.0)
    return terms.sum(dim=(1, 2)).mean()


def listwise_loss(name: str, scores: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """:func:`listnet_loss` for ``"listnet"``, :func:`lambda_loss` (NDCG-Loss2++) for ``"lambdaloss"``."""
    if name == "listnet":
        return listnet_loss(scores, labels, mask)
    if name == "lambdaloss":
        return lambda_loss(scores, labels, mask)
    raise ValueError(f"unknown listwise loss {name!r}; choose listnet or lambdaloss")
