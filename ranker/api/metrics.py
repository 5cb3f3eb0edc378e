"""Prometheus metrics of the HTTP API (prometheus-client).

With several workers, ``ranker serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` before any
worker starts, so each process writes its samples there and ``/metrics`` merges them
(the library's multiprocess mode). With one process the default registry is used.
"""

from __future__ import annotations

import os
import threading

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter("ranker_http_requests", "HTTP requests by endpoint, flow and status code",
                   ["endpoint", "flow", "status"])
LATENCY = Histogram("ranker_http_request_duration_seconds", "HTTP request latency by endpoint", ["endpoint"],
                    buckets=(0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
FALLBACKS = Counter("ranker_fallbacks", "Served lists that did not use the neural ranker, by kind "
                    "(rule: no usable model; trending: a user with no history)", ["kind"])
RELOADS = Counter("ranker_model_reloads", "Model files loaded by serving (first load and hot reloads)")
MODEL = Gauge("ranker_model_info", "The scorer this process serves with (value 1)", ["version"],
              multiprocess_mode="livemax")
FEEDBACK = Counter("ranker_feedback_events", "Feedback events by result (stored, duplicate, rejected)", ["result"])

_model_lock = threading.Lock()
_model_version: str | None = None


def observe_model(version: str) -> None:
    """Record the version this process serves with, when it changes."""
    global _model_version
    if version == _model_version:
        return
    with _model_lock:
        if _model_version is not None:
            MODEL.labels(_model_version).set(0)
        MODEL.labels(version).set(1)
        _model_version = version


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus text format, merged across workers in multiprocess mode."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    """Drop a stopped worker's live gauges (multiprocess mode only)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
