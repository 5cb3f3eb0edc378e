"""One source of truth for the project's constants.

Everything that more than one module needs to agree on lives here: flows, roles,
item types, interaction kinds, feature names, default rule weights, file paths.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# --- Paths -------------------------------------------------------------------
DATA_DIR = Path(os.environ.get("RANKER_DATA_DIR", "data"))
MODELS_DIR = Path(os.environ.get("RANKER_MODELS_DIR", "models"))
DEFAULT_DATABASE_URL = f"sqlite:///{DATA_DIR / 'ranker.db'}"
DATABASE_URL_ENV = "RANKER_DATABASE_URL"
#: Where registered model versions are kept for every serving replica (``ranker.rank.store``):
#: unset, the local ``models/versions`` folder; ``dir:/PATH``, a shared folder; ``db``, the database;
#: or a fsspec URL such as ``s3://bucket/prefix``. Read at call time.
MODEL_STORE_ENV = "RANKER_MODEL_STORE"
MODEL_STORE = os.environ.get(MODEL_STORE_ENV, "")
#: ``ranker dataset`` keeps its base-model fits under ``MODELS_DIR/base/fits`` and reuses one when
#: the same model is fitted on the same history again (``ranker.base.fits``); ``0`` turns that off.
FIT_CACHE = os.environ.get("RANKER_FIT_CACHE", "1").strip().lower() not in ("0", "off", "false", "no")

# --- Domain ------------------------------------------------------------------
ROLES = ("developer", "investor", "founder")
ITEM_TYPES = ("startup", "developer", "investor")

#: flow id -> (user role, item type it receives). Every flow here is reranked.
FLOWS: dict[str, tuple[str | None, str | None]] = {
    "developer-startup": ("developer", "startup"),
    "investor-startup": ("investor", "startup"),
    "founder-developer": ("founder", "developer"),
    "founder-investor": ("founder", "investor"),
    # Imported generic data (MovieLens, RecBole, CSV): any user, any item.
    "user-item": (None, None),
}
TRENDING_FLOW = "trending"  # popularity lists; never reranked (also their model version)
#: Arm, source and model version of the lists a system logged before the ranker served (the demo
#: world's legacy feed). Training data reads them; A/B analysis never does.
LEGACY = "legacy"

INTERACTION_KINDS = ("view", "click", "like", "favorite", "apply", "interest")
POSITIVE_KINDS = ("like", "favorite", "apply", "interest")  # explicit positives
ENGAGED_KINDS = ("click",) + POSITIVE_KINDS  # anything beyond a plain view

# --- Features and ranking ----------------------------------------------------
RECENCY_DECAY_DAYS = 30.0
#: Popularity is log(views + 3*interactions + 1) / log(max_views), clipped to [0, 1].
DEFAULT_POPULARITY_MAX_VIEWS = 10_000
INTERACTION_POPULARITY_WEIGHT = 3.0
DIVERSITY_ATTRIBUTES = ("category", "field", "type")

DEFAULT_RULE_WEIGHTS: dict[str, float] = {
    "model_score": 0.5,
    "recency": 0.2,
    "popularity": 0.2,
    "diversity": 0.1,
}
#: Optional features to add to the four (comma-separated names from ``features.OPTIONAL``),
#: e.g. ``RANKER_EXTRA_FEATURES=user_affinity``. Set it for every process that builds data,
#: trains or serves: a checkpoint is refused where its features differ from the registry's.
EXTRA_FEATURES_ENV = "RANKER_EXTRA_FEATURES"
EXTRA_FEATURES = tuple(n.strip() for n in os.environ.get(EXTRA_FEATURES_ENV, "").split(",") if n.strip())
#: Feature sets (``ranker features set NAME``, ``--features NAME``): the guide's four, or the four
#: plus the point-in-time history features (:mod:`ranker.rank.features`).
FEATURE_SETS = ("guide", "history")
DEFAULT_FEATURE_SET = "guide"
#: History features: a user's view weighs this much of an engagement in their affinities.
HISTORY_VIEW_WEIGHT = 0.25
#: Affinities are ``weight on the value / (the user's total weight + this)``: shrunk towards 0 for
#: users with little history.
AFFINITY_PRIOR_WEIGHT = 2.0
#: The item CTR's Beta prior: its mean and its strength in pseudo-views.
ITEM_CTR_PRIOR_MEAN = 0.1
ITEM_CTR_PRIOR_VIEWS = 10.0
#: The user's activity recency is ``exp(-days since their last event / this)``.
USER_RECENCY_DAYS = 7.0
FETCH_MULTIPLIER = 2  # candidates per served slot (2 × k), unless the operator sets another (settings)
MAX_FETCH_MULTIPLIER = 10
DEFAULT_K = 10
#: The ranker's training losses (``ranker train --loss``): pairwise RankNet, listwise ListNet, LambdaLoss.
LOSSES = ("pairwise", "listnet", "lambdaloss")

# --- Experiments -------------------------------------------------------------
DEFAULT_ROLLOUT_PERCENT = 50.0
DEFAULT_EXPERIMENT_SALT = "ranker-ab-1"
ARMS = ("control", "treatment")

# --- Logging message the guide promises operators ---------------------------
MODEL_NOT_FOUND_MESSAGE = "Ranker model not found, using rule-based ranker"


# --- Operator defaults ---------------------------------------------------------------
@dataclass(frozen=True)
class Defaults:
    """Every default an operator can override, in one place.

    The CLI's flags, the dashboard's forms, the API and the config dataclasses
    (``TrainConfig``, ``DatasetConfig``) read their defaults from :data:`DEFAULTS`;
    ``tests/test_defaults.py`` fails on a numeric default written anywhere else in the CLI.
    """

    seed: int = 42
    # training data (`ranker dataset`)
    neg_ratio: float = 2.0  # negatives sampled per positive, within the same list
    window_days: float = 45.0  # feedback: lists from the last N days before the clock
    val_fraction: float = 0.2  # the latest share of lists written as validation data
    base_model: str = "ensemble"  # the base model that proposes candidates and gives model_score
    refit_days: float = 7.0  # training data: model_score comes from the base model refitted this often
    # training (`ranker train`), the guide's values
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    arch: str = "default"  # small 16/8, default 32/16, large 64/32
    val_split: float = 0.0  # without a validation file: hold out this share of lists
    split_by: str = "time"  # --val-split holds out the latest lists ("time") or random ones ("random")
    max_pairs_per_positive: int = 64  # pairs per positive per epoch, sampled; lists with fewer negatives keep all
    loss: str = "pairwise"  # the training loss: pairwise (RankNet), listnet or lambdaloss (NDCG-Loss2++)
    # ipw: weight each click by 1 / p(position) (ranker.rank.propensity); auto: ipw when an estimate can be had
    position_correction: str = "auto"
    propensity_clip: float = 20.0  # ipw: a click's weight 1 / p(position) is at most this
    max_memory_fraction: float = 0.5  # without --max-memory, training may use this share of the machine's RAM
    # streaming training over Parquet (`ranker train --stream`): rows read at a time (whole lists), and the
    # size from which a Parquet dataset streams without the flag
    stream_rows: int = 131_072
    stream_min_rows: int = 1_000_000
    # retraining (`ranker retrain`): train on the earliest lists, pick the epoch on the next,
    # promote on the latest
    retrain_val_split: float = 0.2  # share of lists that picks the best epoch
    holdout_split: float = 0.2  # share of lists, the latest, that the promotion gate compares on
    min_positives: int = 100  # refuse to train on fewer positive rows
    # base-model evaluation (`ranker base evaluate`) and candidates
    holdout_days: float = 14.0  # also `ranker offline`'s period (the latest days before the clock)
    recall_k: int = 20
    ndcg_k: int = 10
    candidates: int = 20
    # imports
    positive_min_rating: float = 4.0  # explicit ratings at or above this are positives
    time_split: str = "0.8,0.1,0.1"  # train, validation, test shares of time
    # simulation (`ranker simulate`) and the quality report (`ranker report`)
    sim_days: int = 7
    sim_requests_per_day: int = 500
    sim_seed: int = 0
    report_requests: int = 3000
    report_seed: int = 7
    swap_share: float = 0.05  # share of treatment lists served with randomised adjacent swaps (position bias)
    # diversity (`ranker diversity`): the method the treatment arm's lists are reranked with
    diversity_method: str = "greedy"  # the guide's greedy penalty; or "mmr", "dpp"
    mmr_knob: float = 0.7  # MMR's λ, relevance against redundancy (1: the relevance order)
    dpp_knob: float = 0.7  # the DPP's θ, in [0, 1) (towards 1: the relevance order)
    diversity_curve_requests: int = 300  # paired requests behind the CTR against ILD curves
    # listings
    list_limit: int = 20
    # the HTTP API (`ranker serve`)
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_workers: int = 1


DEFAULTS = Defaults()
