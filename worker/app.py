"""The Celery app: settings from the environment, and the worker's start-up (metrics, model).

`celery -A agile.worker worker` gives a worker on AGILE_QUEUE that loads its model
before it takes the first batch: a solo pool, or a pool of AGILE_TASKS_IN_HAND threads
sharing that model (agile.worker.overlap; `agile worker` makes that two on a GPU); a model that does not load stops the
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


def pool(config: QueueSettings, detect: bool = True) -> dict:
    """The pool for the batches a worker holds at once (AGILE_TASKS_IN_HAND, else 2 on a GPU when `detect`
    asks torch, 1 otherwise): solo for one, threads sharing the model for more."""
    n = config.tasks_in_hand or (2 if detect and _gpu() else 1)
    return {"worker_pool": "threads" if n > 1 else "solo", "worker_concurrency": n}


def _gpu() -> bool:
    from agile.backend import use_torch

    use_torch()
    import torch

    return torch.cuda.is_available()


app = Celery("agile", include=["agile.worker.tasks"])
# Without a GPU check: `celery -A agile.worker inspect ping` (the health probe) reads this config and must not
# import torch; `agile worker` asks torch (worker/cli.py).
app.add_defaults(lambda: {**settings().celery_config(), **pool(settings(), detect=False)})


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

    kind = getattr(sender, "pool_cls", "solo")
    kind = kind.__module__.rsplit(".", 1)[-1] if isinstance(kind, type) else str(kind)
    if kind not in ("solo", "thread"):  # one model per process, shared by its threads under a device lock
        log.critical("pool %r is not supported: run one worker per GPU (agile worker), solo or with "
                     "AGILE_TASKS_IN_HAND threads, and more processes for more throughput", kind)
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
    log.info("model on %s, %d batch(es) in hand", runtime.device, getattr(sender, "concurrency", 1) or 1)


@worker_shutdown.connect
def _stop(**_) -> None:
    if _presence is not None:
        _presence.stop()


@worker_ready.connect
def _ready(**_) -> None:
    log.info("ready: model %s, visibility timeout %d s", settings().model, settings().visibility_timeout)
