"""Measurement: offline metrics, evaluations, the A/B statistics and the report.

- :mod:`ranker.rank.metrics`: NDCG, MRR, AUC, pairwise accuracy, list diversity.
- :mod:`ranker.evaluation.abtest`: per-user delta-method A/B analysis and sample sizes.
- :mod:`ranker.evaluation.evaluate`: end-to-end evaluation on imported data.
- :mod:`ranker.evaluation.evaluate_base`: Recall/NDCG of the base models on a time split.
- :mod:`ranker.ops.report`: online metrics per arm and the paired oracle comparison.
"""
