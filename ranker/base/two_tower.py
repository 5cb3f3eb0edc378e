"""Two-Tower: user and item towers over ids and attributes, in torch.

    user tower: emb(user id) + emb(role) + emb(declared category) + emb(declared field)
    item tower: emb(item id) + emb(category) + emb(field) + emb(type) + emb(item type)
    score(u, i) = <user(u), item(i)> + bias(i)

Trained with a softmax over the catalogue items *of the positive's item type*
(a developer's click on a startup competes with every startup, never with
investors), weighted by interaction kind. The views of a user with no engagement
before the cutoff weigh :data:`ranker.base.base.VIEW_WEIGHT`, so a user who only
viewed still gets a trained id embedding. Up to ``softmax_items`` items per type
(the demo world's catalogue) the softmax is exact, which is cheaper than
sampling and needs no bias correction; a larger type (the large world's 12k
startups) uses a sampled softmax over ``sampled_negatives`` uniform negatives per
batch. Training is deterministic under ``random_state``.

After fitting, both towers are evaluated once; serving is one dot product
against cached numpy matrices. The saved file holds the network's state_dict
(as arrays) and the attribute codes, and loading rebuilds the towers from them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ranker.base.base import BaseRecommender, TrainingData, kind_weight_array, time_decay, with_views

USER_ATTRIBUTES = ("role", "category", "field")
ITEM_ATTRIBUTES = ("item_type", "category", "field", "type")

#: Intra-op threads while training. The steps are small (a 512 x ~2,000 matmul): one
#: thread is as fast as two on an idle 2-core machine, and several times faster when
#: another process holds a core (OpenMP workers then wait on each other).
TRAIN_THREADS = 1

#: Negatives per batch in the sampled softmax. Its cost grows with this number and was
#: most of a large-world fit at 4,096 (see the README's Performance section).
SAMPLED_NEGATIVES = 4096

#: Loss weight per engaged interaction kind (summed over a user's interactions with an item); a view
#: of a user who never engaged weighs :data:`ranker.base.base.VIEW_WEIGHT`.
DEFAULT_TWO_TOWER_WEIGHTS: dict[str, float] = {
    "click": 1.0, "like": 2.0, "favorite": 2.0, "apply": 2.0, "interest": 2.0,
}


class Tower(nn.Module):
    """Sum of an id embedding and one embedding per categorical attribute.

    Attribute code 0 means missing; every table has one row more than its vocabulary.
    """

    def __init__(self, n_ids: int, vocab_sizes: list[int], dim: int) -> None:
        super().__init__()
        self.ids = nn.Embedding(n_ids, dim)
        self.attributes = nn.ModuleList(nn.Embedding(v + 1, dim) for v in vocab_sizes)
        for table in [self.ids, *self.attributes]:
            nn.init.normal_(table.weight, std=0.05)

    def forward(self, ids: Tensor, codes: Tensor) -> Tensor:
        """ids (B,), codes (B, n_attributes) -> (B, dim)."""
        out = self.ids(ids)
        for j, table in enumerate(self.attributes):
            out = out + table(codes[:, j])
        return out


class TwoTowerNet(nn.Module):
    def __init__(self, n_users: int, n_items: int, user_vocab: list[int], item_vocab: list[int],
                 dim: int) -> None:
        super().__init__()
        self.user = Tower(n_users, user_vocab, dim)
        self.item = Tower(n_items, item_vocab, dim)
        self.item_bias = nn.Embedding(n_items, 1)
        nn.init.zeros_(self.item_bias.weight)

    def embed_items(self, ids: Tensor, item_codes: Tensor) -> Tensor:
        """(B, dim + 1), the last column being the item bias."""
        return torch.cat([self.item(ids, item_codes), self.item_bias(ids)], dim=1)

    def embed_users(self, ids: Tensor, user_codes: Tensor) -> Tensor:
        """(B, dim + 1), the last column being 1 (it multiplies the item bias)."""
        u = self.user(ids, user_codes)
        return torch.cat([u, torch.ones(u.shape[0], 1)], dim=1)


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _codes(frame: pd.DataFrame, columns: tuple[str, ...]) -> tuple[np.ndarray, list[int]]:
    """Integer codes (0 = missing) per column, shape (len(frame), len(columns)), and vocabulary sizes."""
    out = np.zeros((len(frame), len(columns)), dtype=np.int64)
    sizes = []
    for j, col in enumerate(columns):
        cat = pd.Categorical(frame[col].astype("string"))
        out[:, j] = cat.codes + 1  # missing (-1) -> 0
        sizes.append(len(cat.categories))
    return out, sizes


class TwoTowerRecommender(BaseRecommender):
    """Dual-encoder recommender trained with a per-item-type softmax.

    Parameters
    ----------
    dim : int
        Embedding size of each tower.
    epochs : int
        Passes over the (user, item) training pairs.
    batch_size : int
        Pairs per step.
    lr : float
        Adam learning rate.
    weight_decay : float
        Decoupled weight decay (AdamW) on every table.
    kind_weights : dict of str to float, optional
        Loss weight per interaction kind (default ``DEFAULT_TWO_TOWER_WEIGHTS`` and a view at
        ``VIEW_WEIGHT``).
    half_life_days : float, optional
        Interactions this many days older than the cutoff weigh half as much in
        the loss; None weighs all history alike.
    softmax_items : int
        An item type with at most this many items gets the exact softmax; a larger
        one a sampled softmax.
    sampled_negatives : int
        Uniformly drawn items per batch in the sampled softmax (shared by the batch).
    random_state : int
        Seed of the initialisation and of the batch order.

    Attributes
    ----------
    user_vectors_ : ndarray of float32, shape (n_users, dim + 1)
    item_vectors_ : ndarray of float32, shape (n_items, dim + 1)
        Tower outputs; ``user_vectors_ @ item_vectors_.T`` are the scores.
    user_codes_, item_codes_ : ndarray of int64
        Attribute codes the towers read (0 = missing).
    user_vocab_, item_vocab_ : list of int
        Vocabulary size of each attribute.
    train_losses_ : list of float
        Mean loss per epoch.
    """

    name = "two-tower"

    def __init__(
        self,
        dim: int = 32,
        epochs: int = 10,
        batch_size: int = 512,
        lr: float = 0.003,
        weight_decay: float = 1.0,
        kind_weights: Mapping[str, float] | None = None,
        half_life_days: float | None = None,
        softmax_items: int = 4096,
        sampled_negatives: int = SAMPLED_NEGATIVES,
        random_state: int = 42,
    ) -> None:
        self.dim = dim
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.kind_weights = kind_weights
        self.half_life_days = half_life_days
        self.softmax_items = softmax_items
        self.sampled_negatives = sampled_negatives
        self.random_state = random_state

    def _fit(self, data: TrainingData) -> None:
        users = data.users.set_index("id").reindex(self.user_ids_).reset_index()
        self.user_codes_, self.user_vocab_ = _codes(users, USER_ATTRIBUTES)
        self.item_codes_, self.item_vocab_ = _codes(data.items, ITEM_ATTRIBUTES)

        df = data.profile
        weights = kind_weight_array(df["kind"], self.kind_weights or with_views(DEFAULT_TWO_TOWER_WEIGHTS))
        if self.half_life_days:
            weights = weights * time_decay(df["created_at"], data.cutoff, self.half_life_days)
        u = np.searchsorted(self.user_ids_, df["user_id"].to_numpy(np.int64))
        i = np.searchsorted(self.item_ids_, df["item_id"].to_numpy(np.int64))
        # One training pair per (user, item), weighted by its summed kind weights.
        key, inverse = np.unique(u * len(self.item_ids_) + i, return_inverse=True)
        pair_w = np.bincount(inverse, weights=weights)
        keep = pair_w > 0
        pair_u, pair_i = np.divmod(key[keep], len(self.item_ids_))
        pair_w = pair_w[keep]

        with torch.random.fork_rng(devices=[]), _torch_threads(TRAIN_THREADS):
            torch.manual_seed(self.random_state)
            net = self._net()
            self.train_losses_ = self._train(net, pair_u, pair_i, pair_w)
        self._embed(net)
        self._net_state = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}

    def _net(self) -> TwoTowerNet:
        return TwoTowerNet(len(self.user_ids_), len(self.item_ids_), self.user_vocab_, self.item_vocab_,
                           self.dim)

    def _train(self, net: TwoTowerNet, pair_u: np.ndarray, pair_i: np.ndarray,
               pair_w: np.ndarray) -> list[float]:
        """AdamW over batches of one item type each; returns the mean weighted loss per epoch."""
        item_codes = torch.from_numpy(self.item_codes_)
        user_codes = torch.from_numpy(self.user_codes_)
        # The softmax of a pair runs over the items of its type: batch pairs by type.
        type_rows = [torch.from_numpy(r) for r in self._rows_by_type_list()]
        pair_type = self.item_type_codes_[pair_i].astype(np.int64)
        local = np.zeros(len(pair_i), dtype=np.int64)  # the item's position among its type's rows
        for code, rows in enumerate(type_rows):
            mine = pair_type == code
            local[mine] = np.searchsorted(rows.numpy(), pair_i[mine])
        pu, pl, pt = torch.from_numpy(pair_u), torch.from_numpy(local), torch.from_numpy(pair_type)
        pw = torch.from_numpy((pair_w / pair_w.mean()).astype(np.float32))
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        gen = torch.Generator().manual_seed(self.random_state)
        losses = []
        net.train()
        for _ in range(self.epochs):
            batches = []
            for code in range(len(type_rows)):
                members = torch.nonzero(pt == code).squeeze(1)
                if len(members) == 0:
                    continue  # torch.split would yield one empty batch
                members = members[torch.randperm(len(members), generator=gen)]
                batches += [(code, b) for b in torch.split(members, self.batch_size)]
            total = 0.0
            for j in torch.randperm(len(batches), generator=gen).tolist():
                code, b = batches[j]
                rows = type_rows[code]
                users = net.embed_users(pu[b], user_codes[pu[b]])
                if len(rows) <= self.softmax_items:
                    logits = users @ net.embed_items(rows, item_codes[rows]).T  # (B, items of the type)
                    target = pl[b]
                else:
                    logits, target = self._sampled_logits(net, users, rows, rows[pl[b]], item_codes, gen)
                loss = (nn.functional.cross_entropy(logits, target, reduction="none") * pw[b]).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(b)
            losses.append(total / len(pu))
        if not np.isfinite(losses[-1]):
            raise ValueError(f"two-tower training diverged (loss {losses[-1]}); lower lr (now {self.lr})")
        return losses

    def _sampled_logits(self, net: TwoTowerNet, users: Tensor, rows: Tensor, positives: Tensor,
                        item_codes: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """Sampled softmax: each row's positive against S items drawn uniformly from its type.

        Returns logits (B, 1 + S), target column 0. A uniform proposal needs only the
        constant correction log(N / S) on the negatives; a sample that hits the row's
        own positive is masked out.
        """
        n, s = len(rows), self.sampled_negatives
        negatives = rows[torch.randint(n, (s,), generator=gen)]
        pos = (users * net.embed_items(positives, item_codes[positives])).sum(1, keepdim=True)
        neg = users @ net.embed_items(negatives, item_codes[negatives]).T + float(np.log(n / s))
        neg = neg.masked_fill(negatives.unsqueeze(0) == positives.unsqueeze(1), float("-inf"))
        return torch.cat([pos, neg], dim=1), torch.zeros(len(users), dtype=torch.long)

    def _rows_by_type_list(self) -> list[np.ndarray]:
        return [np.flatnonzero(self.item_type_codes_ == c) for c in range(len(self.item_types_))]

    @torch.no_grad()
    def _embed(self, net: TwoTowerNet) -> None:
        net.eval()
        ids = torch.arange(len(self.user_ids_))
        users = net.embed_users(ids, torch.from_numpy(self.user_codes_))
        self.user_vectors_ = users.numpy().astype(np.float32)
        items = torch.arange(len(self.item_ids_))
        self.item_vectors_ = net.embed_items(items, torch.from_numpy(self.item_codes_)).numpy().astype(
            np.float32)

    def _score(self, user_row: int, item_rows: np.ndarray) -> np.ndarray:
        return self.item_vectors_[item_rows] @ self.user_vectors_[user_row]

    def _state(self) -> dict[str, np.ndarray]:
        state = {f"net/{k}": v for k, v in self._net_state.items()}
        state.update(user_codes=self.user_codes_, item_codes=self.item_codes_)
        return state

    def _extra_meta(self) -> dict[str, Any]:
        return {"user_vocab": self.user_vocab_, "item_vocab": self.item_vocab_,
                "train_losses": self.train_losses_}

    def _restore(self, arrays: Mapping[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.user_codes_ = arrays["user_codes"].astype(np.int64)
        self.item_codes_ = arrays["item_codes"].astype(np.int64)
        self.user_vocab_ = [int(v) for v in meta["user_vocab"]]
        self.item_vocab_ = [int(v) for v in meta["item_vocab"]]
        self.train_losses_ = list(meta["train_losses"])
        self._net_state = {k[len("net/"):]: v for k, v in arrays.items() if k.startswith("net/")}
        net = self._net()
        state = {k: torch.from_numpy(np.array(v)) for k, v in self._net_state.items()}
        net.load_state_dict(state, strict=True)
        self._embed(net)
