"""One source of truth for the project's constants.

Everything that more than one module needs to agree on lives here: flows, roles,
item types, interaction kinds, feature names, default rule weights, file paths.
"""

from __future__ import annotations

import os
from pathlib import Path

# --- Paths -------------------------------------------------------------------
DATA_DIR = Path(os.environ.get("RANKER_DATA_DIR", "data"))
MODELS_DIR = Path(os.environ.get("RANKER_MODELS_DIR", "models"))
DEFAULT_DATABASE_URL = f"sqlite:///{DATA_DIR / 'ranker.db'}"
DATABASE_URL_ENV = "RANKER_DATABASE_URL"

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
TRENDING_FLOW = "trending"  # popularity lists; never reranked

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
FETCH_MULTIPLIER = 2
DEFAULT_K = 10

# --- Experiments -------------------------------------------------------------
DEFAULT_ROLLOUT_PERCENT = 50.0
DEFAULT_EXPERIMENT_SALT = "ranker-ab-1"
ARMS = ("control", "treatment")

# --- Logging message the guide promises operators ---------------------------
MODEL_NOT_FOUND_MESSAGE = "Ranker model not found, using rule-based ranker"
