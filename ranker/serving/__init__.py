"""Serving: what a user of the platform is shown, and what is logged about it.

- :mod:`ranker.serving.service`: ``recommend()`` and ``rank()``, over a process-wide ``Service`` that runs
  one request's three steps:
- :mod:`ranker.serving.retrieval`: catalogue, item counts, the user, base or caller candidates and their
  feature context;
- :mod:`ranker.serving.scoring`: the operator's settings (one query) and the scorer they choose;
- :mod:`ranker.serving.assembly`: ``Recommendation``, the reranked or base list as served.
- :mod:`ranker.serving.candidates`: flow routing and base candidates.
- :mod:`ranker.serving.experiments`: A/B assignment, impression, outcome and feedback logs.
- :mod:`ranker.serving.online`: online metrics from the logs, aggregated in SQL.
"""
