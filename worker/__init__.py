"""Celery workers that score comment batches: `celery -A worker worker`, or `agile worker`."""

from worker.app import app

__all__ = ["app"]
