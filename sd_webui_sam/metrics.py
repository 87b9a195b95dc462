"""Prometheus metrics for the standalone server: requests, errors and latency per route,
encoder/decoder time, and the engine's embedding-cache hit rate.

Each :class:`ApiMetrics` has its own registry (never the process-global default), so two
servers in one process, or a test creating many, do not collide.
"""
from __future__ import annotations

from typing import Any, Iterable, Tuple

try:
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.exposition import CONTENT_TYPE_LATEST
except ImportError:  # optional: only the standalone server exposes metrics
    CollectorRegistry = None

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def available() -> bool:
    return CollectorRegistry is not None


class _EngineCollector:
    """Reads the engine's counters at scrape time, so nothing has to be pushed."""

    def __init__(self) -> None:
        self.engine: Any = None

    def collect(self) -> Iterable:
        if self.engine is None:
            return []
        try:
            stats = dict(self.engine.stats())
        except Exception:  # a scrape must never fail because the engine is busy or broken
            return []
        families = []
        cache = stats.get("embedding_cache", stats)
        hits = float(cache.get("hits", 0) or 0)
        misses = float(cache.get("misses", 0) or 0)
        for name, value, text in (
            ("sam_embedding_cache_hits", hits, "Image embeddings served from the cache."),
            ("sam_embedding_cache_misses", misses, "Image embeddings computed by the encoder."),
            ("sam_embedding_cache_hit_ratio", hits / (hits + misses) if hits + misses else 0.0,
             "Share of embedding look-ups served from the cache."),
            ("sam_models_loaded", float(len(stats["loaded_models"])),
             "SAM models in memory."),
        ):
            family = GaugeMetricFamily(name, text)
            family.add_metric([], value)
            families.append(family)
        return families


class ApiMetrics:
    def __init__(self) -> None:
        if CollectorRegistry is None:
            raise RuntimeError("prometheus-client is not installed; `pip install prometheus-client` for metrics.")
        self.registry = CollectorRegistry()
        self.requests = Counter("sam_api_requests", "API requests by route and status.", ["route", "status"],
                                registry=self.registry)
        self.errors = Counter("sam_api_errors", "API requests answered with an error, by route and class.",
                              ["route", "kind"], registry=self.registry)
        self.latency = Histogram("sam_api_request_seconds", "Request latency by route.", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.encoder = Histogram("sam_encoder_seconds",
                                 "Image encode step: the encoder on an embedding-cache miss, a look-up on a hit.",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.decoder = Histogram("sam_decoder_seconds", "Prompts to full-size masks (decoder and upsampling).",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.detector = Histogram("sam_detector_seconds", "GroundingDINO time.", buckets=LATENCY_BUCKETS,
                                  registry=self.registry)
        self._engine_collector = _EngineCollector()
        self.registry.register(self._engine_collector)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)
        if status >= 400:
            self.errors.labels(route=route, kind="client" if status < 500 else "server").inc()

    def observe_encode(self, seconds: float) -> None:
        self.encoder.observe(seconds)

    def observe_decode(self, seconds: float) -> None:
        self.decoder.observe(seconds)

    def observe_detect(self, seconds: float) -> None:
        self.detector.observe(seconds)

    def render(self, engine: Any = None) -> Tuple[bytes, str]:
        self._engine_collector.engine = engine
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
