"""Worker log lines as JSON (AGILE_LOG_FORMAT=json) for log pipelines, or Celery's text format.

A JSON line carries the Celery task id, and the job and batch ids when the
record names them (`extra=`), so one batch's story can be pulled out of a fleet's logs.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

FIELDS = ("job_id", "batch_id", "items", "scored", "failed", "seconds", "delivery", "kind", "adapter")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        task_id = _current_task_id()
        if task_id:
            line["task_id"] = task_id
        line.update({k: getattr(record, k) for k in FIELDS if hasattr(record, k)})
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def _current_task_id() -> str | None:
    from celery import current_task

    request = getattr(current_task, "request", None)
    return getattr(request, "id", None) if current_task else None


def use_json(logger: logging.Logger) -> None:
    """Give every handler of `logger` the JSON formatter (called from Celery's logging signals)."""
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())
