"""Crashes on purpose, with real processes: workers killed, Redis killed and restarted, poison batches.

Each test has its own redis-server (append-only file on, as in production,
unless the test says otherwise) and its own workers, visibility timeout 3 s. A
worker hook (queue_fixtures) records every batch a worker starts in a Redis
list, so the tests can see redeliveries.
"""

from __future__ import annotations

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor

from queue_fixtures import (
    POISON_KILL,
    POISON_RAISE,
    queue_env,
    read_output,
    release_key,
    settings_of,
    wait_for,
    write_csv,
)

from agile.producer.commands import moderate
from agile.producer.source import FileSource

TRACE = "queue-test-trace"


def started(client) -> list[dict]:
    return [json.loads(x) for x in client.lrange(TRACE, 0, -1)]


def run_job(env, source, out):
    """`moderate` in a thread, as a user's shell would run it while things break."""
    pool = ThreadPoolExecutor(1)
    future = pool.submit(moderate, settings_of(env), FileSource.of(source), out, [{}], timeout=120)
    pool.shutdown(wait=False)
    return future


def assert_exactly_once(out, n: int, summary) -> None:
    ids = [r["id"] for r in read_output(out)]
    assert ids == [f"c{i}" for i in range(n)]  # every row once, in input order
    assert (summary.totals.scored, summary.totals.failed) == (n, 0)
    assert (summary.status.scored, summary.status.failed) == (n, 0)  # Redis counters never double count


def test_kill_9_mid_batch_then_every_comment_is_scored_exactly_once(processes, tiny_preset, tmp_path):
    redis = processes.redis()
    env = queue_env(redis.url, tiny_preset, batch_size=8, QUEUE_TEST_TRACE=TRACE)
    held = "b2"
    slow = processes.worker("slow", {**env, "QUEUE_TEST_HOLD": held}).wait_ready()
    out = tmp_path / "scores.csv"
    job = run_job(env, write_csv(tmp_path / "dump.csv", 96), out)
    r = redis.client()
    wait_for(lambda: held in [s["batch"] for s in started(r)], 60, "the held batch started")
    slow.signal(signal.SIGKILL)  # mid-batch: the hook holds it before scoring, so before its write-back
    slow.proc.wait(10)
    processes.worker("fresh", env, via_agile=True).wait_ready()  # `agile worker`, the wrapper
    summary = job.result(timeout=120)
    assert_exactly_once(out, 96, summary)
    batches = [s["batch"] for s in started(r)]
    assert batches.count(held) == 2, "the killed worker's batch is delivered again"
    assert all(batches.count(f"b{i}") == 1 for i in range(12) if f"b{i}" != held)


def test_a_worker_killed_after_writing_back_does_not_double_count(processes, tiny_preset, tmp_path):
    redis = processes.redis()
    once = tmp_path / "killed-once.json"
    env = queue_env(redis.url, tiny_preset, batch_size=8, QUEUE_TEST_TRACE=TRACE,
                    QUEUE_TEST_KILL_AFTER_WRITE_ONCE=str(once))
    supervisor = processes.supervise("w", env)
    out = tmp_path / "scores.csv"
    summary = run_job(env, write_csv(tmp_path / "dump.csv", 48), out).result(timeout=120)
    assert_exactly_once(out, 48, summary)
    written = json.loads(once.read_text())["batch_id"]
    assert [s["batch"] for s in started(redis.client())].count(written) == 2  # delivered twice, counted once
    assert len(supervisor.workers) == 2


def test_poison_batches_are_marked_failed_and_the_job_completes(processes, tiny_preset, tmp_path):
    redis = processes.redis()
    env = queue_env(redis.url, tiny_preset, batch_size=8, max_deliveries=2, QUEUE_TEST_TRACE=TRACE)
    supervisor = processes.supervise("w", env)
    source = write_csv(tmp_path / "dump.csv", 40, extra={9: POISON_KILL, 25: POISON_RAISE})
    out = tmp_path / "scores.csv"
    summary = run_job(env, source, out).result(timeout=150)
    rows = {r["id"]: r for r in read_output(out)}
    assert len(rows) == 40
    killed = [rows[f"c{i}"]["error"] for i in range(8, 16)]  # batch b1
    raised = [rows[f"c{i}"]["error"] for i in range(24, 32)]  # batch b3
    assert all(e == "gave up after 2 deliveries: the worker died while scoring this batch" for e in killed)
    assert all(e.startswith("gave up after 2 deliveries: RuntimeError: queue test") for e in raised)
    assert all(rows[f"c{i}"]["error"] == "" for i in [*range(8), *range(16, 24), *range(32, 40)])
    assert (summary.status.scored, summary.status.failed) == (24, 16)
    assert summary.exit_code == 1  # some rows failed
    assert len(supervisor.workers) == 3  # killed twice by b1, then b1 was given up without running it
    batches = [s["batch"] for s in started(redis.client())]
    assert batches.count("b1") == 3  # killed, killed, given up
    assert batches.count("b3") == 2  # raised, raised and given up


def test_redis_killed_and_restarted_empty_mid_submission_loses_nothing(processes, tiny_preset, tmp_path):
    """No persistence: the queue, the job's keys and its counters are really gone; repair must restore them."""
    redis = processes.redis(persist=False)
    env = queue_env(redis.url, tiny_preset, batch_size=8, max_in_flight=3, QUEUE_TEST_TRACE=TRACE,
                    QUEUE_TEST_DELAY="0.1")
    worker = processes.worker("w", env).wait_ready()
    out = tmp_path / "scores.csv"
    job = run_job(env, write_csv(tmp_path / "dump.csv", 240), out)
    r = redis.client()
    wait_for(lambda: len(started(r)) >= 6, 60, "six batches started")
    (meta_key,) = r.keys("*:job:*:meta")
    assert int(r.hget(meta_key, "next_batch")) < 30  # still submitting when Redis dies
    redis.kill()
    redis.start()  # same port, nothing on disk: an empty Redis
    summary = job.result(timeout=150)
    assert_exactly_once(out, 240, summary)
    assert int(redis.client().hget(meta_key, "resent_batches") or 0) >= 1  # repair did run
    assert worker.proc.poll() is None, "the worker reconnected instead of dying"


def test_warm_shutdown_finishes_the_batch_in_hand(processes, tiny_preset, tmp_path):
    redis = processes.redis()
    env = queue_env(redis.url, tiny_preset, batch_size=8, QUEUE_TEST_TRACE=TRACE)
    held = "b0"
    first = processes.worker("first", {**env, "QUEUE_TEST_HOLD": held}).wait_ready()
    out = tmp_path / "scores.csv"
    job = run_job(env, write_csv(tmp_path / "dump.csv", 32), out)
    r = redis.client()
    wait_for(lambda: held in [s["batch"] for s in started(r)], 60, "the held batch started")
    first.signal(signal.SIGTERM)  # what systemd, docker stop and Kubernetes send first
    time.sleep(0.5)  # the signal is in: the batch is still in hand
    r.set(release_key(TRACE), 1)
    assert first.proc.wait(30) == 0
    assert any(f"/{held}: 8 scored" in line for line in first.text().splitlines())  # finished, not dropped
    processes.worker("second", env).wait_ready()
    summary = job.result(timeout=120)
    assert_exactly_once(out, 32, summary)
    assert [s["batch"] for s in started(r)].count(held) == 1
