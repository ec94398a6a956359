"""The worker says it is up, and on which device, so producers size their tasks for it.

A daemon thread stamps this worker's entry in Redis (`agile.fleet.announce`) every
few seconds; shutdown removes it, and a SIGKILLed worker's entry goes stale within a
minute. Best effort: a Redis outage only delays the next stamp, never a batch.
"""

from __future__ import annotations

import contextlib
import logging
import threading

from redis.exceptions import RedisError

from agile.fleet import HEARTBEAT_SECONDS, announce, retire
from agile.settings import QueueSettings

log = logging.getLogger("agile.worker")


class Presence:
    def __init__(self, settings: QueueSettings, worker: str, device: str):
        self.settings, self.worker, self.device = settings, worker, device
        self.client = settings.redis_client()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agile-presence", daemon=True)

    def start(self) -> Presence:
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            try:
                announce(self.client, self.settings.key_prefix, self.settings.queue, self.worker, self.device)
            except RedisError as exc:
                log.warning("could not announce this worker to Redis: %s", type(exc).__name__)
            if self._stop.wait(HEARTBEAT_SECONDS):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(RedisError):  # else the entry goes stale on its own
            retire(self.client, self.settings.key_prefix, self.settings.queue, self.worker)
        self.client.close()
