"""How full the queue is, read from kombu's Redis layout (which Celery's Redis transport uses).

A queue is a Redis list named after it; a message a worker has taken sits in the
`unacked` hash until it is acknowledged, with its delivery tag in the
`unacked_index` sorted set. We count the index, never the hash: the hash holds
whole message bodies (comment texts), which a depth reading has no business
fetching. The index is shared by every queue of the Redis database, so
`in_flight` counts them all: one queue per database gives the exact figure, and
an overcount only makes a producer wait longer before it repairs a job.
"""

from __future__ import annotations

UNACKED_INDEX = "unacked_index"


def queue_depth(client, queue: str) -> tuple[int, int]:
    """(messages waiting in `queue`, messages delivered but not yet acknowledged)."""
    pipe = client.pipeline(transaction=False)
    pipe.llen(queue)
    pipe.zcard(UNACKED_INDEX)
    waiting, in_flight = pipe.execute()
    return int(waiting), int(in_flight)
