"""Offline ranking quality over whole candidate lists: NDCG@10, MAP@10 and recall@10.

Each logged request whose candidates were logged is rebuilt as serving would have seen it
(:func:`ranker.rank.dataset.candidate_lists`): the ``fetch_multiplier × k`` candidates, their
features point in time, and which of them the user engaged with. Every policy orders the same
candidates (the base order, or a greedy rerank with a scorer) and is scored on its top k.
Candidates that were not shown count as not relevant, as in any offline evaluation from logs,
so the figures compare policies; they are not CTRs.

Use a period the models did not train on (a time-later holdout).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from ranker import config
from ranker.rank.dataset import CandidateList
from ranker.rank.metrics import ranked_metrics_at_k
from ranker.rank.rerank import Scorer, greedy_rerank

BASE = "base"
METRICS = ("ndcg", "ap", "recall")


def offline_table(lists: Iterable[CandidateList], scorers: dict[str, Scorer],
                  k: int = config.DEFAULT_K) -> pd.DataFrame:
    """One row per policy (``base``, then each scorer's name): mean NDCG@k, MAP@k and recall@k
    over the lists, and how many lists were scored."""
    sums = {name: np.zeros(len(METRICS)) for name in [BASE, *scorers]}
    n = 0
    for cl in lists:
        n += 1
        orders = {BASE: np.arange(len(cl.context))}
        orders.update({name: greedy_rerank(cl.context, scorer, k).order for name, scorer in scorers.items()})
        for name, order in orders.items():
            m = ranked_metrics_at_k(cl.relevant, order, k)
            sums[name] += [m[key] for key in METRICS]
    table = pd.DataFrame({name: s / max(n, 1) for name, s in sums.items()}, index=[f"{m}@{k}" for m in
                                                                                 ("ndcg", "map", "recall")]).T
    table["lists"] = n
    return table
