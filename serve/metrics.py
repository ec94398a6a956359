"""Prometheus metrics of the server process, served at /metrics on the API port."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter("agile_serve_requests_total", "HTTP requests answered", ["route", "code"])
SECONDS = Histogram("agile_serve_request_seconds", "Time to answer a request", ["route"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
COMMENTS = Counter("agile_serve_comments_total", "Comments scored, per policy", ["policy"])
TASKS = Counter("agile_serve_tasks_total", "Tasks sent to the workers (coalesced batches), per policy", ["policy"])
BATCH_ITEMS = Histogram("agile_serve_batch_items", "Comments per task sent",
                        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
REJECTED = Counter("agile_serve_rejected_total", "Requests refused before scoring, by reason", ["reason"])
