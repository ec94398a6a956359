"""Which workers are up, and on what device, so a producer can size its tasks for them.

Each worker stamps its entry in one hash per queue every HEARTBEAT_SECONDS
(worker/presence.py runs the thread); readers ignore (and drop) entries older
than STALE_SECONDS, so a SIGKILLed worker stops counting within a minute.
"""

from __future__ import annotations

import json
import time

HEARTBEAT_SECONDS = 15
STALE_SECONDS = 60
# Comments per task. A GPU worker takes the most a task holds (wire.MAX_ITEMS): a task costs it milliseconds
# of CPU besides its comments (Celery, kombu and five Redis round trips; bench_scale: 13.1 µs a comment at 512,
# 8.4 at 1,024), and its ~0.1 s on a GPU is still what an interactive request may wait.
# A CPU worker scores 64 in a few seconds, so a lost task costs little.
GPU_TASK_SIZE, CPU_TASK_SIZE = 1024, 64


def workers_key(prefix: str, queue: str) -> str:
    return f"{prefix}:workers:{queue}"


def announce(client, prefix: str, queue: str, worker: str, device: str, now: float | None = None) -> None:
    """Stamp `worker` as up on `device` ('cpu', 'cuda')."""
    key = workers_key(prefix, queue)
    record = json.dumps({"device": device, "seen": time.time() if now is None else now})
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, worker, record)
    pipe.expire(key, STALE_SECONDS * 10)
    pipe.execute()


def retire(client, prefix: str, queue: str, worker: str) -> None:
    client.hdel(workers_key(prefix, queue), worker)


def live_workers(client, prefix: str, queue: str, now: float | None = None) -> dict[str, str]:
    """{worker: device} of the workers stamped within STALE_SECONDS; older entries are removed."""
    now = time.time() if now is None else now
    live, stale = {}, []
    for worker, raw in client.hgetall(workers_key(prefix, queue)).items():
        try:
            record = json.loads(raw)
            fresh = now - float(record["seen"]) <= STALE_SECONDS
        except (ValueError, TypeError, KeyError):
            fresh = False
        if fresh:
            live[worker] = str(record["device"])
        else:
            stale.append(worker)
    if stale:
        client.hdel(workers_key(prefix, queue), *stale)
    return live


def task_size(devices: dict[str, str]) -> int:
    """Comments per task for these live workers: GPU-sized as soon as one worker has a GPU."""
    return GPU_TASK_SIZE if "cuda" in devices.values() else CPU_TASK_SIZE
