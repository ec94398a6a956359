"""Prometheus metrics of one worker process, served on AGILE_METRICS_PORT (0 disables).

Queue depth is read from Redis when scraped, so it is current without a poller.
"""

from __future__ import annotations

import logging

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from agile.broker import queue_depth
from agile.settings import QueueSettings
from agile.wire import lanes

log = logging.getLogger("agile.worker")

COMMENTS = Counter("agile_comments_scored_total", "Comments scored", ["adapter"])
FAILED = Counter("agile_comments_failed_total", "Comments that got an error instead of a score", ["adapter"])
ERRORS = Counter("agile_errors_total", "Task or item errors, by kind", ["kind"])
BATCH_SECONDS = Histogram(
    "agile_batch_seconds", "Time to score one batch (model time, excluding Redis)",
    buckets=(0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100, 300),
)
TOKENS = Counter("agile_tokens_total", "Prompt tokens scored")
TOKENS_PER_SECOND = Gauge("agile_tokens_per_second", "Prompt tokens per second in the last batch")
MODEL = Gauge("agile_model_loaded", "The model this worker serves (value 1)", ["model", "checksum"])
ADAPTERS = Gauge("agile_adapter_loaded", "Adapters cached in this worker (value 1)", ["adapter", "version"])


class QueueDepth:
    """Collector: messages waiting in the queue and delivered-but-unacknowledged (in flight)."""

    def __init__(self, settings: QueueSettings):
        self.settings = settings
        self.redis = settings.redis_client()

    def collect(self):
        family = GaugeMetricFamily("agile_queue_depth", "Batches in the queue, by state", labels=["state"])
        try:
            waiting, in_flight = queue_depth(self.redis, *lanes(self.settings.queue))  # both lanes: all work
        except Exception as exc:  # a scrape must not fail because Redis is restarting
            log.warning("queue depth unavailable: %s", exc)
            return
        family.add_metric(["queued"], waiting)
        family.add_metric(["in_flight"], in_flight)
        yield family


def serve(settings: QueueSettings) -> None:
    if not settings.metrics_port:
        return
    REGISTRY.register(QueueDepth(settings))
    start_http_server(settings.metrics_port)
    log.info("metrics on :%d/metrics", settings.metrics_port)


def batch_done(adapter: str, scored: int, failed: int, tokens: int, seconds: float) -> None:
    COMMENTS.labels(adapter).inc(scored)
    if failed:
        FAILED.labels(adapter).inc(failed)
        ERRORS.labels("item").inc(failed)
    BATCH_SECONDS.observe(seconds)
    TOKENS.inc(tokens)
    if seconds > 0:
        TOKENS_PER_SECOND.set(tokens / seconds)
