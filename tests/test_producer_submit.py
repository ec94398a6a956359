"""The producer without workers: deterministic batches, bounded memory, backpressure on real Redis."""

from __future__ import annotations

import threading
import time
import tracemalloc
import uuid

import pytest
from queue_fixtures import wait_for, write_csv

from agile.producer.batches import FileSource, make_batches
from agile.producer.jobs import Job
from agile.settings import QueueSettings
from agile.wire import BatchRequest
from agile.worker.store import Store


def test_batches_are_the_same_on_every_read_and_ids_default_to_row_numbers(tmp_path):
    path = tmp_path / "no_ids.csv"
    path.write_text("text\n" + "".join(f"comment {i}\n" for i in range(10)))
    source = FileSource.of(path)
    first = [(b.id, b.ids) for b in make_batches(source.rows(), 4)]
    assert first == [(b.id, b.ids) for b in make_batches(source.rows(), 4)]
    assert first[0] == ("b0", ["0", "1", "2", "3"]) and first[-1] == ("b2", ["8", "9"])
    dup = list(make_batches([("a", "x"), ("a", "y"), ("b", "z")], 4))
    assert dup[0].ids == ["a", "b"] and dup[0].duplicates == 1


def test_reading_a_big_dump_keeps_memory_flat(tmp_path):
    path = write_csv(tmp_path / "big.csv", 200_000)
    tracemalloc.start()
    rows = sum(len(b.ids) for b in make_batches(FileSource.of(path).rows(), 64))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert rows == 200_000
    assert peak < 40e6, f"peak {peak / 1e6:.0f} MB while streaming a {path.stat().st_size / 1e6:.0f} MB file"


@pytest.fixture
def settings():
    s = QueueSettings(redis_url="redis://127.0.0.1:6379/0", key_prefix=f"test-{uuid.uuid4().hex[:8]}",
                      queue=f"test-{uuid.uuid4().hex[:8]}", max_in_flight=3, batch_size=4)
    yield s
    r = s.redis_client()
    for key in [*r.scan_iter(f"{s.key_prefix}:*"), s.queue]:
        r.delete(key)


def test_submit_waits_while_max_in_flight_batches_are_pending(settings, tmp_path):
    source = FileSource.of(write_csv(tmp_path / "dump.csv", 40))
    job = Job(settings).create(source=source.to_meta())
    thread = threading.Thread(target=job.submit, args=(make_batches(source.rows(), 4),), daemon=True)
    thread.start()
    r = settings.redis_client()
    wait_for(lambda: r.llen(settings.queue) == 3, 10, "three batches queued")
    time.sleep(1)
    assert r.llen(settings.queue) == 3 and thread.is_alive()  # held back: nothing written back yet
    store = Store(settings)
    for batch in make_batches(source.rows(), 4):  # what a worker's write-back does, batch by batch
        if not thread.is_alive():
            break
        req = BatchRequest.from_task((), {"items": [{"id": i, "text": t} for i, t in zip(batch.ids, batch.texts,
                                                                                        strict=True)],
                                          "job_id": job.job_id, "batch_id": batch.id})
        store.finish(req, "t", {i: {"error": "skipped"} for i in batch.ids}, None)
        time.sleep(0.3)
    thread.join(10)
    assert not thread.is_alive()
    status = job.status()
    assert status.total_batches == 10 and status.queued == 40
    assert r.llen(settings.queue) <= 10
