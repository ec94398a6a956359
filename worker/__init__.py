"""Celery workers that score comment batches: `celery -A agile.worker worker`, or `agile worker`."""

from agile.worker.app import app

__all__ = ["app"]
