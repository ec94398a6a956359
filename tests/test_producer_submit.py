"""The producer without workers: fixed row ranges, checks before a job exists, backpressure from Redis."""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
import tracemalloc

import pytest
from queue_fixtures import wait_for, write_csv

from agile.producer.commands import JobCancelled, prepare, run_job, start
from agile.producer.jobs import Job
from agile.producer.payload import check_policy
from agile.producer.source import FileSource, batches
from agile.tables import Chunk, TableError
from agile.wire import BatchRequest, PayloadError
from agile.worker.store import Store


def test_batches_are_fixed_row_ranges_and_keep_every_row(tmp_path):
    path = tmp_path / "dump.csv"
    path.write_text("id,text\n" + "".join(f"d{i % 3},comment {i}\n" for i in range(10)))
    source = FileSource.of(path)
    first = [(b.id, b.start, b.ids, b.texts) for b in batches(source.chunks(), 4)]
    assert first == [(b.id, b.start, b.ids, b.texts) for b in batches(source.chunks(), 4)]
    assert first[0] == ("b0", 0, ["d0", "d1", "d2", "d0"], [f"comment {i}" for i in range(4)])
    assert first[-1][:3] == ("b2", 8, ["d2", "d0"])
    assert [b.id for b in batches(source.chunks(), 4, first=1)] == ["b1", "b2"]
    plan = source.inspect(4)
    assert (plan.rows, plan.batches, plan.duplicates, plan.examples) == (10, 3, 7, ["d0", "d1", "d2"])


@pytest.mark.parametrize("first", [0, 1, 2, 3])
def test_batches_cut_across_the_readers_chunks_as_across_one(first):
    """The reader's chunks end anywhere; a batch (and a resume's skip) may span several of them."""
    rows = [(f"i{n}", f"t{n}") for n in range(11)]
    ends = [0, 3, 8, 8, 10, 11]  # an empty chunk too
    chunks = [Chunk(a, [i for i, _ in rows[a:b]], [t for _, t in rows[a:b]]) for a, b in itertools.pairwise(ends)]
    got = [(b.number, b.start, b.ids, b.texts) for b in batches(chunks, 4, first=first)]
    want = [(n, 4 * n, [i for i, _ in rows[4 * n:4 * n + 4]], [t for _, t in rows[4 * n:4 * n + 4]])
            for n in range(first, 3)]
    assert got == want


def test_reading_a_big_dump_keeps_memory_flat(tmp_path):
    path = write_csv(tmp_path / "big.csv", 200_000)
    tracemalloc.start()
    rows = sum(len(b.ids) for b in batches(FileSource.of(path).chunks(), 64))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert rows == 200_000
    assert peak < 40e6, f"peak {peak / 1e6:.0f} MB while streaming a {path.stat().st_size / 1e6:.0f} MB file"


@pytest.mark.parametrize("policy, says", [
    ({"labels": ["A"]}, "labels must be a list of at least two strings"),
    ({"instructions": ""}, "instructions must be a non-empty string"),
    ({"adapter": "ethos-hate", "labels": ["A", "B"]}, "an adapter brings its own"),
    ({"labels": ["A", "A"]}, "labels must be distinct"),
])
def test_a_policy_the_workers_would_refuse_is_refused_here(policy, says):
    with pytest.raises(PayloadError, match=says):
        check_policy([policy])


def test_bad_input_is_refused_before_a_job_exists(redis_settings, tmp_path):
    good = write_csv(tmp_path / "dump.csv", 20)
    bad_utf8 = tmp_path / "bad.csv"
    bad_utf8.write_bytes(b"id,text\n" + b"".join(b"%d,fine\n" % i for i in range(29)) + b"29,bro\xffken\n")
    shifted = tmp_path / "shifted.csv"  # pandas would take the ids as the index and send the labels as texts
    shifted.write_text("id,text,label\n0,go back, nobody wants you,1\n1,fine,0\n")
    cases = [(FileSource.of(tmp_path / "absent.csv"), {}, "no such file"),
             (FileSource.of(good, text_column="comment"), {}, "no column 'comment'"),
             (FileSource.of(good, id_column="cid", id_required=True), {}, "no column 'cid'"),
             (FileSource.of(bad_utf8), {}, r"invalid UTF-8 at row 29 \(line 31, byte offset \d+\)"),
             (FileSource.of(shifted), {}, r"row 0 has more fields than the header \(Expected 3 fields in line 2"),
             (FileSource.of(good), {"labels": ["A"]}, "labels")]
    for source, policy, says in cases:
        with pytest.raises((TableError, PayloadError), match=says):
            prepare(redis_settings, source, [policy], tmp_path / "out.csv")
    assert redis_settings.redis_client().keys("*") == []  # nothing in Redis: no job, no batch


def _write_back_one(job: Job, store: Store, batch) -> None:
    req = BatchRequest.from_task((), {"texts": batch.texts,
                                      "job_id": job.job_id, "batch_id": batch.id})
    store.fail(req, "t", "skipped")


def test_backpressure_is_per_job_in_redis_and_holds_across_processes(redis_settings, tmp_path):
    source = FileSource.of(write_csv(tmp_path / "dump.csv", 40))
    job = start(redis_settings, source, [{}], prepare(redis_settings, source, [{}]))
    r = redis_settings.redis_client()
    thread = threading.Thread(target=run_job, args=(redis_settings, job, source), daemon=True)
    thread.start()
    wait_for(lambda: r.llen(redis_settings.queue) == 3, 10, "three batches queued")
    time.sleep(1)
    assert r.llen(redis_settings.queue) == 3 and thread.is_alive()  # held back: nothing written back yet
    other = Job.open(redis_settings, job.job_id)  # another process sees the same three in flight
    assert other.in_flight()[0] == 3 and not other.has_room()
    store, most = Store(redis_settings), 0
    for batch in batches(source.chunks(), 4):
        wait_for(lambda b=batch: other.status().next_batch > b.number, 10, f"{batch.id} sent")
        most = max(most, other.in_flight()[0])
        _write_back_one(job, store, batch)
    thread.join(10)
    assert not thread.is_alive() and most == 3
    status = job.status()
    assert (status.total_batches, status.total_rows, status.next_batch, status.failed) == (10, 40, 10, 40)
    assert r.llen(redis_settings.queue) == 10 and status.state == "complete"  # no worker took them


def test_bytes_in_flight_are_bounded_too(redis_settings, tmp_path):
    settings = redis_settings.with_(max_bytes_in_flight=100, max_in_flight=30)
    source = FileSource.of(write_csv(tmp_path / "dump.csv", 12))
    job = start(settings, source, [{}], prepare(settings, source, [{}]))
    def carry() -> None:
        with contextlib.suppress(JobCancelled):  # how it ends: the test cancels the job
            run_job(settings, job, source)

    thread = threading.Thread(target=carry, daemon=True)
    thread.start()
    wait_for(lambda: job.in_flight()[0] == 1, 10, "one batch in flight")
    time.sleep(0.5)
    assert job.in_flight()[0] == 1 and job.in_flight()[1] > 100  # one batch is over the bound: it goes alone
    assert json.loads(job.meta["policies"]) == [{}]
    job.cancel()  # else the held-back sender outlives the test and writes into the next one's Redis
    thread.join(10)
    assert not thread.is_alive()
