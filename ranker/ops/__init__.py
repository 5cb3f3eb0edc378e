"""Operations: background jobs and the retraining pipeline.

- :mod:`ranker.ops.jobs`: jobs run outside the dashboard's script run, with progress in the database.
- :mod:`ranker.ops.pipeline`: train → evaluate → register → promote (``ranker train``, ``ranker retrain``).
"""
