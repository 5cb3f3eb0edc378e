"""The ranker itself: features, the MLP, its loss, training data, training, reranking and the
model registry.

- :mod:`ranker.rank.features`: the feature registry (one function per feature) and list contexts.
- :mod:`ranker.rank.metrics`: NDCG, MRR, AUC, pairwise accuracy, list diversity (checked against sklearn).
- :mod:`ranker.rank.spec`: ``ModelSpec``, the one owner of the net's shape: builds, saves and loads it.
- :mod:`ranker.rank.model`: ``RankerMLP``, the torch module a spec builds.
- :mod:`ranker.rank.losses`: the pairwise loss.
- :mod:`ranker.rank.dataset`: leak-free training data (``ranker dataset``).
- :mod:`ranker.rank.train`: the training loop (``ranker train``).
- :mod:`ranker.rank.rerank`: scorers and the greedy rerank.
- :mod:`ranker.rank.registry`: checkpoints, versions, activation, hot reload.
- :mod:`ranker.rank.tuning`: rule weights and the freshness boost, validated and saved.
"""
