"""Operations: background jobs, the retraining pipeline and the report.

- :mod:`ranker.ops.jobs`: jobs run outside the dashboard's script run, with progress in the database.
- :mod:`ranker.ops.pipeline`: train → evaluate → register → promote (``ranker train``, ``ranker retrain``).
- :mod:`ranker.ops.report`: online metrics per arm, A/B verdicts, the paired oracle comparison (``ranker report``).
"""
