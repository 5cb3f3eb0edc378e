"""Request and response bodies of the HTTP API (pydantic v2).

Every request model forbids unknown fields, so a misspelt field is a 422 that names
it rather than a silently ignored value. Ids are bounded to 32-bit integers (the
database's ``INTEGER``), strings refuse NUL characters, and numbers must be finite.
Ranks in responses are 1-based: ``rank`` 1 is the top of the served list, and
``base_rank`` is where the item stood in the base order.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from ranker import config, flows

MAX_ID = 2**31 - 1
MAX_K = 100
MAX_CANDIDATES = 1_000
MAX_EVENTS = 1_000
MAX_BODY_BYTES = 1 << 20  # 1 MiB

Id = Annotated[int, Field(ge=0, le=MAX_ID)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=60, pattern=r"^[^\x00-\x1f]+$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")]
RequestId = Annotated[str, StringConstraints(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9._:-]+$")]
Score = Annotated[float, Field(allow_inf_nan=False)]
K = Annotated[int, Field(ge=1, le=MAX_K, description=f"list length, 1 to {MAX_K}")]


def _utc_naive(value: datetime) -> datetime:
    """Aware times are converted to UTC; naive ones are taken as UTC. Years 1970 to 2200."""
    try:
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
    except OverflowError:
        raise ValueError("time out of range") from None
    if not 1970 <= value.year <= 2200:
        raise ValueError("time must be between 1970 and 2200 (ISO 8601, UTC)")
    return value


Timestamp = Annotated[datetime, AfterValidator(_utc_naive)]
#: A time in a response: the database's naive UTC, sent as RFC 3339 with ``Z``.
UtcTime = Annotated[datetime, AfterValidator(lambda d: d if d.tzinfo else d.replace(tzinfo=UTC))]
ContextKey = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f]+$")]
ContextValue = (Annotated[str, StringConstraints(max_length=200, pattern=r"^[^\x00]*$")]
                | Annotated[int, Field(ge=-(2**53), le=2**53)] | Score | bool | None)
Context = Annotated[dict[ContextKey, ContextValue], Field(
    max_length=32, description="free-form request context (page, device, ...), kept with the served list")]

Flow = StrEnum("Flow", {f: f for f in flows.request_flows()})
RankFlow = StrEnum("RankFlow", {f: f for f in flows.personalised_flows()})
EventType = StrEnum("EventType", {k: k for k in config.INTERACTION_KINDS})
Role = StrEnum("Role", {r: r for r in (*config.ROLES, "user")})
ItemType = StrEnum("ItemType", {t: t for t in (*config.ITEM_TYPES, "item")})


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- Recommend and rank -----------------------------------------------------------------


class RecommendRequest(_Request):
    user_id: Id
    flow: Flow = Field(description="a personalised flow (reranked) or a trending list (never reranked)")
    k: K = config.DEFAULT_K
    context: Context | None = None


class ServedItem(BaseModel):
    item_id: int
    rank: int = Field(description="1-based position in the served list")
    base_rank: int = Field(description="1-based position in the base order")
    score: float = Field(description="the ranker's score when reranked, else the base score")
    base_score: float


class RecommendResponse(BaseModel):
    request_id: str = Field(description="the impression id: send it back with feedback")
    user_id: int
    flow: str
    model_version: str = Field(description='registry version ("v2", "v2+fresh2"), "rule", "base" or "trending"')
    arm: Literal["control", "treatment"]
    reranked: bool
    fallback: bool = Field(description="true when the neural ranker or personalisation was not used")
    fallback_reason: str | None
    base_model: str
    served_at: UtcTime
    items: list[ServedItem]
    latency_ms: float = Field(description="time spent serving this request inside the service")


class Candidate(_Request):
    item_id: Id
    base_score: Score | None = Field(None, description="the caller's score; higher is better")


class RankRequest(_Request):
    user_id: Id
    items: list[Candidate] = Field(min_length=1, max_length=MAX_CANDIDATES)
    k: K = config.DEFAULT_K
    flow: RankFlow | None = Field(None, description="default: the user's own flow")
    context: Context | None = None

    @model_validator(mode="after")
    def _scores_all_or_none(self) -> RankRequest:
        given = [c.base_score is not None for c in self.items]
        if any(given) and not all(given):
            raise ValueError("give base_score for every item or for none (then the order given is the base order)")
        return self


class ItemError(BaseModel):
    item_id: int
    error: str


class RankResponse(RecommendResponse):
    errors: list[ItemError] = Field(description="candidates left out, each with why")


# --- Feedback ----------------------------------------------------------------------------


class Event(_Request):
    request_id: RequestId
    item_id: Id
    type: EventType
    ts: Timestamp | None = Field(None, description="when it happened (ISO 8601); default: now on the serve clock")


class FeedbackRequest(_Request):
    events: list[Event] = Field(min_length=1, max_length=MAX_EVENTS)


class EventResult(BaseModel):
    index: int = Field(description="position of the event in the request")
    status: Literal["stored", "duplicate", "rejected"]
    error: str | None = None


class FeedbackResponse(BaseModel):
    stored: int
    duplicates: int
    rejected: int
    results: list[EventResult]


# --- Catalogue and users ----------------------------------------------------------------------


class ItemUpsert(_Request):
    item_type: ItemType
    category: Text
    field: Text
    type: Text
    name: Name | None = Field(None, description='default on create: "item-<id>"')
    created_at: Timestamp | None = Field(None, description="default on create: now on the serve clock")
    updated_at: Timestamp | None = Field(None, description="default: now on the serve clock")

    @model_validator(mode="after")
    def _ordered(self) -> ItemUpsert:
        if self.created_at and self.updated_at and self.updated_at < self.created_at:
            raise ValueError("updated_at is before created_at")
        return self


class UserUpsert(_Request):
    role: Role
    name: Annotated[str, StringConstraints(min_length=1, max_length=120, pattern=r"^[^\x00-\x1f]+$")] | None = None
    category: Text | None = None
    field: Text | None = None
    created_at: Timestamp | None = None


class Upserted(BaseModel):
    id: int
    created: bool = Field(description="true when the row is new, false when it was updated")
    row: dict[str, Any]


# --- Experiments ------------------------------------------------------------------------------------
ExperimentName = Annotated[str, StringConstraints(min_length=1, max_length=80, pattern=r"^[^\x00-\x1f]+$")]


class ExperimentStart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: ExperimentName | None = Field(None, description='default: "experiment-<n>"')
    rollout: float | None = Field(None, ge=0, le=100, allow_inf_nan=False,
                                  description="percent of users in treatment (default: the last one used, else 50)")
    owner: ExperimentName = Field("api", description="who starts it (kept in the record)")


class ExperimentInfo(BaseModel):
    id: int
    name: str
    arms: list[str]
    allocation: float = Field(description="percent of users in treatment")
    started_at: UtcTime = Field(description="on the serve clock")
    ended_at: UtcTime | None = Field(description="on the serve clock; null while running")
    owner: str
    running: bool


# --- Model, health, errors --------------------------------------------------------------------------


class Activation(BaseModel):
    version: str
    activated_at: UtcTime
    actor: str


class ModelInfo(BaseModel):
    active_version: str | None = Field(description="the registry's active version; null: the rule-based ranker")
    serving: str = Field(description="what this worker scores with: a version (with any boost) or rule")
    fallback: bool
    fallback_reason: str | None
    activated_at: UtcTime | None
    activated_by: str | None
    metrics: dict[str, Any] | None
    freshness_boost: float
    rule_weights: dict[str, float]
    history: list[Activation] = Field(description="latest activations, newest first")


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    ready: bool
    database: str
    scorer: str


class FieldError(BaseModel):
    field: str | None
    message: str


class ErrorResponse(BaseModel):
    error: str = Field(description="one line: what is wrong and what to do")
    field: str | None = Field(description="the first offending field (dotted path), when one is to blame")
    details: list[FieldError] = []
