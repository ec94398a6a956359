"""The interactive lane (issue 19): a request through `agile serve` waits for the batch in hand, never the backlog.

One real worker (each batch held 0.4 s, so a bulk job of 16 batches is a backlog of
about 6 s), a real `agile serve`, a real `agile submit` filling the bulk queue. The
worker traces the order it takes tasks in: the request's task must come right after
the bulk batch in hand, and the bulk job still ends row for row.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

from celery import Celery
from queue_fixtures import ROOT, queue_env, read_output, wait_for, write_csv
from serve_fixtures import Server, analyze, serve_env, tiny_policies

from agile.wire import TASK_NAME, lanes

BULK_BATCHES = 16


def test_a_request_overtakes_a_bulk_backlog_and_the_bulk_job_still_completes(processes, tiny_preset, adapter_dir,
                                                                               tmp_path):
    redis = processes.redis(persist=False)
    trace = f"trace-{uuid.uuid4().hex[:6]}"
    env = queue_env(redis.url, tiny_preset, tiny_policies(adapter_dir, tmp_path / "adapters"),
                    QUEUE_TEST_TRACE=trace, QUEUE_TEST_DELAY="0.4", max_in_flight=BULK_BATCHES)
    worker = processes.worker("lane", env)
    server = Server(serve_env(env, tmp_path, coalesce_ms=5), tmp_path).start()
    processes.started.append(server)
    worker.wait_ready()
    server.wait_ready()
    client = redis.client()
    interactive, bulk = lanes(env["AGILE_QUEUE"])

    dump = write_csv(tmp_path / "dump.csv", BULK_BATCHES * 4)
    submit = subprocess.run([sys.executable, "-m", "agile.cli.main", "submit", str(dump), "--adapter", "tiny-toxic",
                             "--batch-size", "4"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert submit.returncode == 0, submit.stderr
    job_id = submit.stdout.strip()
    wait_for(lambda: client.llen(trace) >= 1, 30, "the worker's first bulk batch")
    assert client.llen(bulk) >= BULK_BATCHES - 3  # a backlog of bulk batches waits behind it

    started = time.monotonic()
    r = analyze(server.url, {"comment": {"text": "hello there"}, "requestedAttributes": {"TOXICITY": {}}})
    seconds = time.monotonic() - started
    assert r.status_code == 200, r.text
    taken = [json.loads(x)["batch"] for x in client.lrange(trace, 0, -1)]
    position = taken.index(None)  # the request's task carries no batch id
    assert position <= 2, taken  # after the batch in hand (and at most one taken as the request was sent)
    assert client.llen(bulk) >= BULK_BATCHES - 6, "the request waited for the backlog"
    assert seconds < BULK_BATCHES * 0.4 / 2, seconds
    assert client.llen(interactive) == 0

    # several requests at once are all taken before the next bulk batch (kombu's default round robin
    # would take a bulk batch between each two)
    app = Celery("lanes", broker=redis.url, backend=redis.url)
    app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    seen = client.llen(trace)
    sent = [app.send_task(TASK_NAME, kwargs={"items": [{"id": "0", "text": f"request {n}"}], "adapter": "tiny-toxic"},
                          queue=interactive) for n in range(3)]
    for result in sent:
        assert "0" in result.get(timeout=30)["results"]
        result.forget()
    after = [json.loads(x)["batch"] for x in client.lrange(trace, seen, -1)]
    first = after.index(None)
    assert after[first:first + 3] == [None] * 3 and first <= 1, after

    out = tmp_path / "scores.csv"
    results = subprocess.run([sys.executable, "-m", "agile.cli.main", "results", job_id, "-o", str(out)], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=180)
    assert results.returncode == 0, results.stderr
    assert [row["id"] for row in read_output(out)] == [f"c{i}" for i in range(BULK_BATCHES * 4)]
    every = [json.loads(x)["batch"] for x in client.lrange(trace, 0, -1)]
    assert sorted(b for b in every if b is not None) == sorted(f"b{i}" for i in range(BULK_BATCHES))  # each once
