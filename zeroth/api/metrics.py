"""Prometheus metrics, per app (no process-global registry), gunicorn multiprocess aware.

Under gunicorn, gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR (prometheus_client's own
variable, read when it is imported) before anything imports prometheus_client; each worker then
writes its samples there and /metrics aggregates them (settings.metrics_dir).
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
INPUT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "zeroth_requests", "HTTP requests", ["endpoint", "method", "status"], registry=r
        )
        self.errors = Counter(
            "zeroth_request_errors", "HTTP requests answered 4xx/5xx", ["status"], registry=r
        )
        self.latency = Histogram(
            "zeroth_request_duration_seconds",
            "Time to answer a request",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "zeroth_embedding_tokens",
            "Tokens embedded (usage.prompt_tokens)",
            ["model"],
            registry=r,
        )
        self.inputs = Histogram(
            "zeroth_embedding_inputs_per_request",
            "Inputs per embeddings request",
            ["model"],
            buckets=INPUT_BUCKETS,
            registry=r,
        )

        # Children by label values: `labels()` costs several microseconds a call. Bounded: the
        # endpoints are route rules (or "unmatched"), the models those of the models list.
        self._request_children: dict[tuple[str, str, int], tuple] = {}
        self._model_children: dict[str, tuple] = {}

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        key = (endpoint, method, status)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self.requests.labels(endpoint, method, str(status)),
                self.errors.labels(str(status)) if status >= 400 else None,
                self.latency.labels(endpoint),
            )
        requests, errors, latency = children
        requests.inc()
        if errors is not None:
            errors.inc()
        latency.observe(seconds)

    def observe_embeddings(self, model: str, inputs: int, tokens: int) -> None:
        children = self._model_children.get(model)
        if children is None:
            children = self._model_children[model] = (
                self.tokens.labels(model),
                self.inputs.labels(model),
            )
        children[0].inc(tokens)
        children[1].observe(inputs)

    def render(self) -> bytes:
        if self.multiprocess_dir is not None:
            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged, str(self.multiprocess_dir))
            return generate_latest(merged)
        return generate_latest(self.registry)
