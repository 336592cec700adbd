"""Prometheus metrics of one app, in a registry of its own (tests build many apps)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)
_CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


class ServiceMetrics:
    """Every metric the service exports."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "cites_http_requests",
            "HTTP requests by method, route template and status",
            ("method", "route", "status"),
            registry=r,
        )
        self.latency = Histogram(
            "cites_http_request_duration_seconds",
            "HTTP request latency by method and route template",
            ("method", "route"),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "cites_batch_size",
            "Images per ONNX Runtime call (micro-batches)",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "cites_queue_depth", "Images waiting for the micro-batcher", registry=r
        )
        self.inference_seconds = Histogram(
            "cites_inference_seconds",
            "Time of one micro-batch in the predictor",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "cites_queue_wait_seconds",
            "Time an image waited in the queue before its batch started",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.commit_rows = Histogram(
            "cites_db_commit_rows",
            "Identifications written per database transaction (group commit)",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge(
            "cites_model_info",
            "The active model version (value 1 for the active one)",
            ("version",),
            registry=r,
        )
        self.decisions = Counter(
            "cites_decisions",
            "Decisions by kind and label",
            ("kind", "label"),
            registry=r,
        )
        self.confidence = Histogram(
            "cites_confidence",
            "Top-1 calibrated probability of each identification",
            buckets=_CONFIDENCE_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "cites_rejected",
            "Requests refused before inference, by reason",
            ("reason",),
            registry=r,
        )
        self.auth_failures = Counter(
            "cites_auth_failures",
            "Requests refused for their API key, by reason (missing, invalid, throttled)",
            ("reason",),
            registry=r,
        )
        self.model_swaps = Counter(
            "cites_model_activations",
            "Model activation attempts by outcome",
            ("outcome",),
            registry=r,
        )

    def set_active_model(self, version: str) -> None:
        """Mark ``version`` as the one active model."""
        self.model_info.clear()
        self.model_info.labels(version=version).set(1)

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)
