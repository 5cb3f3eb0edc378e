"""The HTTP serving API: FastAPI over the same :class:`ranker.serving.service.Service` the dashboard
and the simulator use, so there is one ranking code path.

Concurrency: every route is a plain ``def``. FastAPI runs those in AnyIO's worker
threadpool, so the event loop never blocks on torch, numpy or the database, and the
service's own locks guard its caches. Each request's writes (impressions, outcomes,
upserts) are one short transaction: a request either lands whole or not at all.

Errors: every 4xx and 5xx body is an :class:`ErrorResponse` naming the field at fault;
a 500 carries no traceback (it is logged instead).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException

from ranker import config
from ranker.api import metrics, schemas
from ranker.api.auth import Keys, require_read, require_write
from ranker.api.schemas import ErrorResponse

log = logging.getLogger(__name__)
T = TypeVar("T")


class ApiError(HTTPException):
    """An HTTP error whose body names the field at fault."""

    def __init__(self, status_code: int, message: str, field: str | None = None):
        super().__init__(status_code, message)
        self.field = field


class BodyTooLarge(ApiError):
    def __init__(self) -> None:
        super().__init__(status.HTTP_413_CONTENT_TOO_LARGE,
                         f"request body over {schemas.MAX_BODY_BYTES:,} bytes; send smaller batches", "body")


def _error(status_code: int, message: str, field: str | None = None,
           details: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse(error=message, field=field, details=details or [])
    return JSONResponse(body.model_dump(), status_code=status_code, headers=headers)


def _field(loc: tuple) -> str | None:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] or parts[:1]
    return ".".join(parts) or None


# --- Middleware: body limit and metrics ------------------------------------------------------


class Guard:
    """Pure ASGI middleware: refuses bodies over 1 MiB (413) and records request metrics."""

    def __init__(self, app: Callable) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or ()).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > schemas.MAX_BODY_BYTES):
            response = (_error(413, f"request body over {schemas.MAX_BODY_BYTES:,} bytes; send smaller batches",
                               "body") if length.isdigit() else _error(400, "invalid Content-Length header", "body"))
            await response(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > schemas.MAX_BODY_BYTES:
                raise BodyTooLarge()
            return message

        code = 500

        async def send_status(message: dict) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        t0 = time.perf_counter()
        try:
            await self.app(scope, limited_receive, send_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", "unmatched")
            metrics.REQUESTS.labels(endpoint, scope.get("ranker.flow", ""), str(code)).inc()
            metrics.LATENCY.labels(endpoint).observe(time.perf_counter() - t0)


# --- The app ----------------------------------------------------------------------------------


def create_app(engine: Engine | None = None, keys: Keys | None = None) -> FastAPI:
    """The API over ``engine`` (default: ``RANKER_DATABASE_URL``, schema created or upgraded).

    ``keys`` default to ``RANKER_API_KEYS`` / ``RANKER_API_READ_KEYS`` (see :mod:`ranker.api.auth`).
    """
    from ranker.data.db import ensure_schema, get_engine
    from ranker.serving.service import service

    engine = engine or ensure_schema(get_engine())
    svc = service(engine)
    svc.model.on_load.append(lambda _version: metrics.RELOADS.inc())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:  # load models and catalogue before the first request, off the event loop
            metrics.observe_model(await anyio.to_thread.run_sync(svc.warm_up))
        except OperationalError as exc:  # start anyway: /readyz says why it is not ready
            log.warning("database unavailable at start-up: %s", str(exc.orig or exc).splitlines()[0])
        except Exception as exc:  # e.g. an empty database: requests will say what to do
            log.warning("serving warm-up skipped: %s", exc)
        yield
        metrics.mark_process_dead(os.getpid())

    app = FastAPI(
        title="Ranker",
        version="1",
        summary="A lightweight neural reranking layer for recommendations.",
        description="Recommend, rerank, send feedback, manage the catalogue. Writes need an `X-API-Key` "
                    "when `RANKER_API_KEYS` is set. See docs/api.md.",
        lifespan=lifespan,
        responses={400: {"model": ErrorResponse, "description": "the body cannot be parsed (not UTF-8 JSON)"},
                   422: {"model": ErrorResponse, "description": "a field is wrong; `field` names it"},
                   413: {"model": ErrorResponse, "description": "body over 1 MiB"},
                   503: {"model": ErrorResponse, "description": "the database is unavailable; retry"}},
    )
    app.state.engine = engine
    app.state.keys = keys if keys is not None else Keys.from_env()
    app.add_middleware(Guard)
    _add_error_handlers(app)
    app.include_router(_v1_routes(engine))
    app.include_router(_ops_routes(engine))
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = []
        for e in exc.errors():
            field = _field(tuple(e.get("loc", ())))
            message = e.get("msg", "invalid")
            if e.get("type") == "json_invalid":
                message = f"malformed JSON ({e.get('ctx', {}).get('error', 'cannot parse')}); send a JSON object"
                field = "body"
            details.append({"field": field, "message": message})
        first = details[0] if details else {"field": None, "message": "invalid request"}
        where = f"{first['field']}: " if first["field"] else ""
        return _error(422, f"{where}{first['message']}", first["field"], details)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 400 and not isinstance(exc, ApiError):  # FastAPI could not parse the body
            return _error(400, "malformed body: send a JSON object, UTF-8 encoded", "body")
        return _error(exc.status_code, str(exc.detail), getattr(exc, "field", None), headers=exc.headers)

    @app.exception_handler(OperationalError)
    async def database_down(request: Request, exc: OperationalError) -> JSONResponse:
        log.error("database error serving %s: %s", request.url.path, str(exc.orig or exc).splitlines()[0])
        return _error(503, "the database is unavailable or busy; retry shortly", None, headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error serving %s", request.url.path)
        return _error(500, "internal error; it is logged on the server", None)


def _domain(fn: Callable[[], T]) -> T:
    """Run a service call, turning its errors into 4xx responses that name the field."""
    from ranker.data.db import DatabaseError
    from ranker.flows import FlowError, UnknownUserError

    try:
        return fn()
    except UnknownUserError as exc:
        raise ApiError(404, f"{exc}; create it with PUT /v1/users/{{id}}", "user_id") from None
    except FlowError as exc:
        raise ApiError(422, str(exc), "flow") from None
    except DatabaseError as exc:
        raise ApiError(503, str(exc)) from None
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None


def _served(rec: Any, latency_s: float, response_model: type = schemas.RecommendResponse, **extra: Any):
    kind = "trending" if rec.model_version == "trending" else ("rule" if rec.model_version == "rule" else None)
    if kind:
        metrics.FALLBACKS.labels(kind).inc()
    if rec.reranked:
        metrics.observe_model(rec.model_version)
    items = [schemas.ServedItem(item_id=i.item_id, rank=i.position + 1, base_rank=i.base_rank + 1,
                                score=i.score if i.score is not None else i.base_score, base_score=i.base_score)
             for i in rec.items]
    return response_model(
        request_id=rec.request_id, user_id=rec.user_id, flow=rec.flow, model_version=rec.model_version,
        arm=rec.arm, reranked=rec.reranked, fallback=rec.fallback_reason is not None,
        fallback_reason=rec.fallback_reason,
        base_model=rec.base_model, served_at=rec.served_at, items=items, latency_ms=round(latency_s * 1e3, 3),
        **extra)


def _v1_routes(engine: Engine) -> APIRouter:
    router = APIRouter(prefix="/v1")
    _serving_routes(router, engine)
    _feedback_routes(router, engine)
    _catalogue_routes(router, engine)
    _experiment_routes(router, engine)

    @router.get("/model", response_model=schemas.ModelInfo, dependencies=[Depends(require_read)])
    def model() -> schemas.ModelInfo:
        """The active model, its metrics, when it became active, the fallback state and the history."""
        return _model_info(engine)

    return router


def _experiment_routes(router: APIRouter, engine: Engine) -> None:
    """/v1/experiments: list, start and stop A/B experiments (none runs until one is started)."""
    from ranker.serving import experiments as ex

    def info(r: Any) -> schemas.ExperimentInfo:
        return schemas.ExperimentInfo(id=r.id, name=r.name, arms=r.arms, allocation=r.allocation,
                                      started_at=r.started_at, ended_at=r.ended_at, owner=r.owner,
                                      running=r.ended_at is None)

    auth = {401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}}
    conflict = {**auth, 409: {"model": ErrorResponse, "description": "one is running already, or the name is taken"}}

    @router.get("/experiments", response_model=list[schemas.ExperimentInfo], dependencies=[Depends(require_read)])
    def experiments() -> list[schemas.ExperimentInfo]:
        """Every experiment, newest first."""
        return [info(r) for r in _domain(lambda: ex.list_experiments(engine))]

    @router.post("/experiments", response_model=schemas.ExperimentInfo, status_code=status.HTTP_201_CREATED,
                 dependencies=[Depends(require_write)], responses=conflict)
    def start(body: schemas.ExperimentStart) -> schemas.ExperimentInfo:
        """Start an A/B experiment now (serve clock): `rollout` % of users get the ranker."""
        try:
            return info(ex.start_experiment(engine, body.name, body.rollout, owner=body.owner))
        except ex.ExperimentError as exc:
            raise ApiError(409, str(exc), "name") from None

    @router.post("/experiments/stop", response_model=schemas.ExperimentInfo, dependencies=[Depends(require_write)],
                 responses={**auth, 409: {"model": ErrorResponse, "description": "no experiment is running"}})
    def stop() -> schemas.ExperimentInfo:
        """End the running experiment now; everyone gets the ranker from the next request."""
        try:
            return info(ex.stop_experiment(engine, owner="api"))
        except ex.ExperimentError as exc:
            raise ApiError(409, str(exc)) from None


def _serving_routes(router: APIRouter, engine: Engine) -> None:
    """/v1/recommend (POST and GET) and /v1/rank."""
    from ranker.serving import service as serve

    read = [Depends(require_read)]

    def recommend(request: Request, user_id: int, flow: str, k: int, context: dict | None):
        request.scope["ranker.flow"] = flow
        t0 = time.perf_counter()
        rec = _domain(lambda: serve.recommend(user_id, flow, k, engine=engine, source="api", context=context))
        return _served(rec, time.perf_counter() - t0)

    @router.post("/recommend", response_model=schemas.RecommendResponse, dependencies=read,
                 responses={404: {"model": ErrorResponse, "description": "unknown user"}})
    def recommend_post(request: Request, body: schemas.RecommendRequest) -> schemas.RecommendResponse:
        """The top k items for a user in a flow; the list is logged as impressions under `request_id`."""
        return recommend(request, body.user_id, body.flow.value, body.k, body.context)

    @router.get("/recommend", response_model=schemas.RecommendResponse, dependencies=read,
                responses={404: {"model": ErrorResponse, "description": "unknown user"}})
    def recommend_get(request: Request, user_id: Annotated[int, Query(ge=0, le=schemas.MAX_ID)],
                      flow: Annotated[schemas.Flow, Query()],
                      k: Annotated[int, Query(ge=1, le=schemas.MAX_K)] = config.DEFAULT_K
                      ) -> schemas.RecommendResponse:
        """The same as POST, for browsers and curl."""
        return recommend(request, user_id, flow.value, k, None)

    @router.post("/rank", response_model=schemas.RankResponse, dependencies=read,
                 responses={404: {"model": ErrorResponse, "description": "unknown user"}})
    def rank(request: Request, body: schemas.RankRequest) -> schemas.RankResponse:
        """Rerank the caller's candidates (up to 1,000) for a user. Unknown or repeated item ids are
        left out and listed in `errors`; the list is logged as impressions like /v1/recommend's."""
        flow = body.flow.value if body.flow else None
        request.scope["ranker.flow"] = flow or ""
        ids = [c.item_id for c in body.items]
        scores = [c.base_score for c in body.items] if body.items[0].base_score is not None else None
        t0 = time.perf_counter()
        rec, left_out = _domain(lambda: serve.rank(body.user_id, ids, scores, body.k, flow=flow, engine=engine,
                                                   source="api", context=body.context))
        request.scope["ranker.flow"] = rec.flow
        errors = [schemas.ItemError(item_id=i, error=e) for i, e in left_out.items()]
        return _served(rec, time.perf_counter() - t0, schemas.RankResponse, errors=errors)



def _feedback_routes(router: APIRouter, engine: Engine) -> None:
    """/v1/feedback."""
    from ranker.serving.experiments import FeedbackEvent, record_feedback

    @router.post("/feedback", response_model=schemas.FeedbackResponse, dependencies=[Depends(require_write)],
                 responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}})
    def feedback(body: schemas.FeedbackRequest) -> schemas.FeedbackResponse:
        """Clicks, views and explicit feedback on served items. Idempotent: an event already stored is
        reported as a duplicate. Each invalid event gets its own error; the valid ones are stored."""
        events = [FeedbackEvent(e.request_id, e.item_id, e.type.value, e.ts) for e in body.events]
        results = _domain(lambda: record_feedback(engine, events))
        counts = {s: sum(r.status == s for r in results) for s in ("stored", "duplicate", "rejected")}
        for result, n in counts.items():
            if n:
                metrics.FEEDBACK.labels(result).inc(n)
        return schemas.FeedbackResponse(
            stored=counts["stored"], duplicates=counts["duplicate"], rejected=counts["rejected"],
            results=[schemas.EventResult(index=r.index, status=r.status, error=r.error) for r in results])



def _catalogue_routes(router: APIRouter, engine: Engine) -> None:
    """PUT /v1/items/{id} and /v1/users/{id}: validated upserts."""
    from ranker.data.upserts import upsert_item, upsert_user
    from ranker.serving import service as serve

    write = [Depends(require_write)]

    def upserted(response: Response, row: dict, created: bool) -> schemas.Upserted:
        response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return schemas.Upserted(id=row["id"], created=created, row=row)

    upsert = {"response_model": schemas.Upserted, "dependencies": write,
              "responses": {201: {"model": schemas.Upserted, "description": "created"},
                            401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}}}

    @router.put("/items/{item_id}", **upsert)
    def put_item(item_id: Annotated[int, Path(ge=0, le=schemas.MAX_ID)], body: schemas.ItemUpsert,
                 response: Response) -> schemas.Upserted:
        """Create or update a catalogue item (200: updated, 201: created)."""
        row, created = _domain(lambda: upsert_item(engine, item_id, **_plain(body)))
        serve.service(engine).reload_catalog()  # this worker serves the change from its next request
        return upserted(response, row, created)

    @router.put("/users/{user_id}", **upsert)
    def put_user(user_id: Annotated[int, Path(ge=0, le=schemas.MAX_ID)], body: schemas.UserUpsert,
                 response: Response) -> schemas.Upserted:
        """Create or update a user (200: updated, 201: created)."""
        row, created = _domain(lambda: upsert_user(engine, user_id, **_plain(body)))
        return upserted(response, row, created)


def _plain(body: Any) -> dict[str, Any]:
    return {k: (v.value if hasattr(v, "value") else v) for k, v in body.model_dump().items()}


def _model_info(engine: Engine) -> schemas.ModelInfo:
    from ranker.rank import registry
    from ranker.serving.service import service

    svc = service(engine)
    settings = svc.settings()
    scorer, reason = svc.scorer(settings)
    metrics.observe_model(scorer.version)
    active = next((row for row in registry.list_versions(engine) if row.is_active), None)
    history = registry.activations(engine, limit=20)
    serving = active.version if active else registry.RULE
    last = next((a for a in history if a.version == serving), None)  # when the current choice was made
    return schemas.ModelInfo(
        active_version=active.version if active else None, serving=scorer.version,
        fallback=reason is not None, fallback_reason=reason or None,
        activated_at=last.activated_at if last else None, activated_by=last.actor if last else None,
        metrics=active.metrics if active else None, freshness_boost=settings.freshness_boost,
        rule_weights=settings.rule_weights,
        history=[schemas.Activation(version=a.version, activated_at=a.activated_at, actor=a.actor) for a in history])


def _ops_routes(engine: Engine) -> APIRouter:
    from ranker.serving.service import service

    router = APIRouter(tags=["operations"])

    @router.get("/healthz", response_model=schemas.Health)
    def healthz() -> schemas.Health:
        """The process is alive."""
        return schemas.Health(status="ok")

    @router.get("/readyz", response_model=schemas.Ready,
                responses={503: {"model": schemas.Ready, "description": "not ready: the database does not answer"}})
    def readyz() -> Response:
        """Ready to serve: the database answers and a scorer is loaded (a model, or the rule fallback)."""
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            database = "ok"
        except OperationalError as exc:
            database = str(exc.orig or exc).strip().splitlines()[0][:200]
        try:
            scorer = service(engine).scorer()[0].version if database == "ok" else "unknown"
        except OperationalError:
            database, scorer = "the settings table does not answer", "unknown"
        ready = database == "ok"
        body = schemas.Ready(ready=ready, database=database, scorer=scorer)
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    @router.get("/metrics", response_class=Response,
                responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    def prometheus() -> Response:
        """Request counts, latency histograms, fallbacks, reloads, feedback results and the model version."""
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    return router
