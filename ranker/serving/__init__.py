"""Serving: what a user of the platform is shown, and what is logged about it.

- :mod:`ranker.serving.service`: ``recommend()`` and ``rank()``, over a process-wide ``Service``.
- :mod:`ranker.serving.candidates`: flow routing and base candidates.
- :mod:`ranker.serving.experiments`: A/B assignment, impression, outcome and feedback logs.
- :mod:`ranker.serving.online`: online metrics from the logs, aggregated in SQL.
"""
