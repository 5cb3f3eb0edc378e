"""Every key of the ``settings`` table, in one place.

The table holds the operator's choices and the state serving needs (the world's clock,
the experiment, rule weights, the freshness boost), plus bookkeeping the dashboard
shows. Code reads and writes them only through these names; ``tests/test_keys.py``
fails on a literal key anywhere else.
"""

CLOCK = "clock"  # the serve clock of a synthetic or imported world (ISO time); absent: the wall clock
EXPERIMENT = "experiment"  # the A/B experiment: rollout %, salt, running, start and stop
RULE_WEIGHTS = "rule_weights"  # the rule-based ranker's weights per feature
FRESHNESS_BOOST = "freshness_boost"  # logits added per unit of recency to the neural ranker's score
ACTIVE_HISTORY = "active_history"  # versions activated, oldest first, for rollback
LAST_DATASET = "last_dataset"  # summary of the latest `ranker dataset`
LAST_TRAINING = "last_training"  # summary of the latest training run
POPULARITY_MAX_VIEWS = "popularity_max_views"  # the popularity feature's normaliser
WORLD = "world"  # what built the data: demo world parameters or the import
#: A demo world build under way: written with its first rows, deleted as its last step, so a build
#: that crashed or was killed leaves it behind ({"seed", "preset", "scale", "started_at"}).
WORLD_BUILD = "world_build"
API_SERVER = "api_server"  # the running `ranker serve`: url, pid, workers, started_at
#: Set when the reranker serving was significantly worse than the base order on a retrain's
#: holdout: the treatment arm serves the base order until a model passes the gate or an operator
#: activates one ({"reason", "since", "scorer", "diff"}).
BASE_ORDER_HOLD = "base_order_hold"
#: How the treatment arm's lists are diversified: {"method": "greedy" | "mmr" | "dpp", "knob": trade-off}.
DIVERSITY = "diversity"
#: Share of treatment lists served with randomised adjacent swaps (ranker.rank.propensity), 0 to 1.
SWAP_SHARE = "swap_share"
#: The latest position-bias estimate (ranker.rank.propensity.PropensityEstimate as a dict).
PROPENSITIES = "propensities"
#: How far the daily rollups of the served-traffic log reach (ranker.data.rollups): {"through": the last
#: day rolled up, "impression_id"/"outcome_id"/"interaction_id": the highest ids seen, "refreshed_at"}.
#: Deleted with the world (or by migration 0010), which starts the rollups afresh.
ROLLUPS = "rollups"

#: The feature set datasets, training and serving use: {"name": "guide" | "history"}.
FEATURE_SET = "feature_set"
#: Candidates the base model proposes per served slot (the guide's 2 × k by default).
FETCH_MULTIPLIER = "fetch_multiplier"

SETTING_KEYS = (CLOCK, EXPERIMENT, RULE_WEIGHTS, FRESHNESS_BOOST, ACTIVE_HISTORY, LAST_DATASET, LAST_TRAINING,
                POPULARITY_MAX_VIEWS, WORLD, API_SERVER, BASE_ORDER_HOLD, DIVERSITY, FEATURE_SET,
                FETCH_MULTIPLIER, SWAP_SHARE, PROPENSITIES, WORLD_BUILD, ROLLUPS)

# --- Metric keys -------------------------------------------------------------------------
# Offline (training and evaluation reports: ``metrics[scorer][key]``).
NDCG_AT_10 = "ndcg@10"
AUC = "auc"
PAIRWISE_ACCURACY = "pairwise_accuracy"
OFFLINE_METRICS = (NDCG_AT_10, AUC, PAIRWISE_ACCURACY)

# Online (served lists and their outcomes, per arm, flow and day).
CTR = "ctr"
FEEDBACK_RATE = "feedback_rate"
ILD = "ild"  # intra-list diversity
CATEGORY_COVERAGE = "category_coverage"
CATEGORY_ENTROPY = "category_entropy"
MEAN_AGE_DAYS = "mean_age_days"  # freshness: mean age of served items
ONLINE_METRICS = (CTR, FEEDBACK_RATE, ILD, CATEGORY_COVERAGE, CATEGORY_ENTROPY, MEAN_AGE_DAYS)
