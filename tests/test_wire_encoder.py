"""The server's hand-built Celery message, held to a message Celery itself publishes.

`agile serve` pushes protocol-2 JSON straight onto the queue's Redis list (agile/broker.py); a
Celery or kombu upgrade that changes the envelope would leave workers reading messages they no
longer understand. Here Celery's own `send_task` publishes the same task through kombu's Redis
transport to a real Redis, and the two stored messages must agree on every key and every value
that is not per-message (ids, tags, host names, times).
"""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone

import pytest
from celery import Celery

from agile.broker import body_of, message
from agile.wire import TASK_NAME

PER_MESSAGE = {"id", "root_id", "origin", "expires", "correlation_id", "delivery_tag", "reply_to"}
# Properties Celery's message has and the server's leaves out, each for a reason that holds on Redis.
# Properties both send with another value, for a reason.
OTHER_VALUE = {
    "body_encoding": "ours is utf-8 (the JSON body as it is, which kombu passes through), Celery's base64",
}
NOT_SENT = {
    "expiration": "AMQP's per-message TTL; kombu's Redis transport never reads it, workers drop by `expires`",
    "kwargsrepr": "apply_async copies the option into the properties too; workers read the header",
}


def _publish_with_celery(redis_url: str, queue: str, kwargs: dict, expires: datetime | None,
                         ignore_result: bool) -> None:
    app = Celery("encoder-check", broker=redis_url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], broker_connection_retry_on_startup=False)
    try:
        # The server reads every result from the backend, so it asks for it to be stored; the
        # producer's batches write back themselves and have no deadline.
        app.send_task(TASK_NAME, kwargs=kwargs, queue=queue, expires=expires, kwargsrepr="{...}",
                      ignore_result=ignore_result)
    finally:
        app.close()


def _same_shape(ours, theirs, where: str = "message") -> None:
    assert type(ours) is type(theirs), f"{where}: {type(ours).__name__} here, {type(theirs).__name__} from Celery"
    if isinstance(ours, dict):
        assert set(ours) == set(theirs), f"{where}: keys differ: {sorted(set(ours) ^ set(theirs))}"
        for key in ours:
            if key not in PER_MESSAGE:
                _same_shape(ours[key], theirs[key], f"{where}.{key}")
    elif where.rsplit(".", 1)[-1] not in PER_MESSAGE:
        assert ours == theirs, f"{where}: {ours!r} here, {theirs!r} from Celery"


@pytest.mark.parametrize("sender", ["agile-serve", "agile-producer"])
def test_our_messages_are_the_ones_celery_publishes(redis_settings, private_redis, sender) -> None:
    client = private_redis.client()
    queue = "encoder-check"
    kwargs = {"adapter": "ethos-hate", "items": [{"id": "0012", "text": "a comment"}], "job": None}
    serve = sender == "agile-serve"
    expires = datetime.now(timezone.utc) + timedelta(seconds=30) if serve else None
    _publish_with_celery(redis_settings.redis_url, queue, kwargs, expires, ignore_result=not serve)
    raw = client.lpop(queue)
    assert raw is not None, "Celery published nothing onto the queue's list"
    theirs = json.loads(raw)
    ours = json.loads(message("id-1", "tag-1", queue, kwargs, expires, ignore_result=not serve, sender=sender))

    # The origin names the sender; Celery's says gen<pid>@host, ours agile-serve@host or agile-producer@host.
    theirs["headers"]["origin"] = ours["headers"]["origin"]
    for key in NOT_SENT if serve else set(NOT_SENT) - {"expiration"}:  # no deadline, no expiration
        assert key in theirs["properties"], f"Celery no longer sends {key!r}: drop it from NOT_SENT"
        del theirs["properties"][key]
    assert (ours["properties"]["body_encoding"], theirs["properties"]["body_encoding"]) == ("utf-8", "base64")
    assert json.loads(body_of(ours)) == json.loads(base64.b64decode(theirs["body"]))
    for key in OTHER_VALUE:
        theirs["properties"][key] = ours["properties"][key]
    _same_shape({k: v for k, v in ours.items() if k != "body"}, {k: v for k, v in theirs.items() if k != "body"})
    assert ours["headers"]["ignore_result"] is theirs["headers"]["ignore_result"] is (not serve)
    if serve:
        assert datetime.fromisoformat(theirs["headers"]["expires"]) == expires
        assert datetime.fromisoformat(ours["headers"]["expires"]) == expires
    else:
        assert ours["headers"]["expires"] is theirs["headers"]["expires"] is None
    assert ours["headers"]["id"] == ours["headers"]["root_id"] == ours["properties"]["correlation_id"]
    assert theirs["headers"]["id"] == theirs["headers"]["root_id"] == theirs["properties"]["correlation_id"]
