"""Everything this project knows about Celery and kombu on Redis, in one place.

Task messages: the producer's batches and `agile serve`'s requests are protocol-2
JSON pushed by hand (`message`: each batch encoded once, queued in the same Redis
round trip as its bookkeeping), held key by key to Celery's encoder by
tests/test_wire_encoder.py; the service client's interactive `score` sends through
Celery's own `send_task` (`sender`).
Results: `celery-task-meta-<id>` in the result backend.
Queue depth: a queue is a Redis list named after it; a message a worker has taken
sits in the `unacked` hash until it is acknowledged, with its delivery tag in the
`unacked_index` sorted set. We count the index, never the hash: the hash holds
whole message bodies (comment texts), which a depth reading has no business
fetching. The index is shared by every queue of the Redis database, so
`in_flight` counts them all: one queue per database gives the exact figure, and
an overcount only makes a producer wait longer before it repairs a job.
The payload inside a message is agile.wire's; who is up is agile.fleet's.
"""

from __future__ import annotations

import base64
import json
import socket
from datetime import datetime
from typing import TYPE_CHECKING

from agile.wire import TASK_NAME

if TYPE_CHECKING:
    from agile.settings import QueueSettings

RESULT_PREFIX = "celery-task-meta-"  # Celery's Redis result backend: one key per task id
UNACKED = "unacked"  # kombu: delivered-but-unacknowledged messages, by delivery tag
UNACKED_INDEX = "unacked_index"
HOST = socket.gethostname()
BODY_ENCODING = "utf-8"  # kombu: the body is stored as the text it is


def queue_depth(client, *queues: str) -> tuple[int, int]:
    """(messages waiting in `queues`, together, messages delivered but not yet acknowledged)."""
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.llen(queue)
    pipe.zcard(UNACKED_INDEX)
    *waiting, in_flight = pipe.execute()
    return sum(map(int, waiting)), int(in_flight)


def message(task_id: str, delivery_tag: str, queue: str, kwargs: dict, expires: datetime | None = None,
            ignore_result: bool = False, sender: str = "agile-serve") -> str:
    """A Celery protocol-2 message as kombu's Redis transport stores it (JSON), encoded once.

    tests/test_wire_encoder.py holds it, key by key, to the message Celery's own `send_task` stores,
    with and without `expires` and a stored result. One difference: the body is the JSON text itself
    (`body_encoding` utf-8, which kombu passes through as it is), not base64 of it as Celery writes:
    a quarter fewer bytes, and less to encode here and to decode on every worker, per comment.
    """
    body = json.dumps([[], kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    headers = {
        "lang": "py", "task": TASK_NAME, "id": task_id, "shadow": None, "eta": None,
        "expires": expires.isoformat() if expires else None, "group": None, "group_index": None, "retries": 0,
        "timelimit": [None, None], "root_id": task_id, "parent_id": None, "argsrepr": "()",
        "kwargsrepr": "{...}", "origin": f"{sender}@{HOST}", "ignore_result": ignore_result,
        "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {},
    }
    properties = {
        "correlation_id": task_id, "reply_to": "", "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
        "body_encoding": BODY_ENCODING, "delivery_tag": delivery_tag,
    }
    return json.dumps({
        "body": body, "content-encoding": "utf-8",
        "content-type": "application/json", "headers": headers, "properties": properties,
    })


def sender(settings: QueueSettings):
    """A Celery app that only sends: no tasks, no model, the queue's own settings."""
    from celery import Celery

    app = Celery("agile-producer")
    app.conf.update(settings.celery_config())
    return app


def body_of(envelope: dict) -> str:
    """A stored message's body text: as it is (ours), or base64 (Celery's own)."""
    body = envelope["body"]
    return base64.b64decode(body).decode() if envelope["properties"].get("body_encoding") == "base64" else body


def job_of(raw: str) -> str | None:
    """The job id of a queued task message (protocol 2, JSON body), or None for anything else."""
    try:
        body = json.loads(body_of(json.loads(raw)))
        return body[1].get("job_id")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None
