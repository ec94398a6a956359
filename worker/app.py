"""The Celery app: settings from the environment, and the worker's start-up (metrics, model).

`celery -A agile.worker worker` gives a solo-pool worker on AGILE_QUEUE that loads its
model before it takes the first batch; a model that does not load stops the
worker at once with the reason, instead of failing every batch. Settings are read
when Celery first needs them, so `agile worker` flags (set as AGILE_* variables
just before) take effect and importing this module costs nothing.
"""

from __future__ import annotations

import functools
import logging
import os

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger, worker_init, worker_ready, worker_shutdown

from agile.settings import QueueSettings
from agile.worker.presence import Presence

log = logging.getLogger("agile.worker")
_presence: Presence | None = None  # this process's announcement of itself, from start to shutdown


@functools.cache
def settings() -> QueueSettings:
    return QueueSettings.from_env()


app = Celery("agile", include=["agile.worker.tasks"])
app.add_defaults(lambda: settings().celery_config())


@after_setup_logger.connect
@after_setup_task_logger.connect
def _log_format(logger: logging.Logger, **_) -> None:
    if settings().log_format == "json":
        from agile.worker.logs import use_json

        use_json(logger)


@worker_init.connect
def _start(sender=None, **_) -> None:
    from agile.models import ModelLoadError
    from agile.worker import metrics
    from agile.worker.runtime import get_runtime

    pool = getattr(sender, "pool_cls", "solo")
    pool = pool.__module__.rsplit(".", 1)[-1] if isinstance(pool, type) else str(pool)
    if pool != "solo":  # the runtime swaps adapters in place: one batch at a time per process
        log.critical("pool %r is not supported: run one solo worker per GPU (agile worker), and more "
                     "processes for more throughput", pool)
        raise SystemExit(2)
    config = settings()
    log.info("worker on queue %r at %s", config.queue, config.masked_url)
    try:
        runtime = get_runtime(config)
    except ModelLoadError as exc:
        log.critical("cannot load model %r: %s", config.model, exc)
        raise SystemExit(2) from exc
    metrics.MODEL.labels(runtime.info.spec, runtime.info.checksum[:12]).set(1)
    metrics.serve(config)
    global _presence
    _presence = Presence(config, getattr(sender, "hostname", None) or f"pid{os.getpid()}", runtime.device).start()
    log.info("model on %s", runtime.device)


@worker_shutdown.connect
def _stop(**_) -> None:
    if _presence is not None:
        _presence.stop()


@worker_ready.connect
def _ready(**_) -> None:
    log.info("ready: model %s, visibility timeout %d s", settings().model, settings().visibility_timeout)
