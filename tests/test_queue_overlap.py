"""Workers holding two batches at once (AGILE_TASKS_IN_HAND=2), with real processes: overlap, kills, poison.

A worker with two batches in hand works on one while the other has the model. These
tests hold it to the queue's promises: every row once and in order, a kill -9 with two
batches in hand loses neither, a warm shutdown finishes both, and a poison batch that
kills its worker fails alone: the batch that happened to be in hand beside it is
scored, because a redelivered batch is counted only once it runs alone.
"""

from __future__ import annotations

import itertools
import json
import signal

from queue_fixtures import POISON_KILL, ended_key, queue_env, read_output, release_key, wait_for, write_csv
from test_queue_faults import TRACE, assert_exactly_once, run_job, started


def queue(redis_url: str, tiny_preset, **settings) -> dict[str, str]:
    return queue_env(redis_url, tiny_preset, batch_size=8, tasks_in_hand=2, QUEUE_TEST_TRACE=TRACE, **settings)


def spans(client) -> dict[tuple[int, str], list[tuple[float, float]]]:
    """(pid, batch) -> [(started, ended)] from the workers' trace."""
    ends: dict[tuple[int, str], list[float]] = {}
    for raw in client.lrange(ended_key(TRACE), 0, -1):
        e = json.loads(raw)
        ends.setdefault((e["pid"], e["batch"]), []).append(e["at"])
    out: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for s in started(client):
        key = (s["pid"], s["batch"])
        later = [t for t in ends.get(key, []) if t >= s["at"]]
        if later:
            out.setdefault(key, []).append((s["at"], min(later)))
    return out


def test_two_batches_in_hand_overlap_and_every_row_comes_back_once(processes, tiny_preset, tmp_path):
    redis = processes.redis()
    env = queue(redis.url, tiny_preset, QUEUE_TEST_DELAY="0.3")  # the delay is CPU-side, outside the device lock
    worker = processes.worker("pair", env).wait_ready()
    assert "concurrency: 2 (thread)" in worker.text()
    out = tmp_path / "scores.csv"
    summary = run_job(env, write_csv(tmp_path / "dump.csv", 80), out).result(timeout=120)
    assert_exactly_once(out, 80, summary)
    intervals = sorted(t for ts in spans(redis.client()).values() for t in ts)
    assert len(intervals) == 10
    overlapping = sum(1 for a, b in itertools.pairwise(intervals) if b[0] < a[1])
    assert overlapping >= 3, intervals  # one batch started while the one before was still in hand


def holding(processes, tiny_preset, tmp_path, held: set[str], rows: int):
    """A worker with `held` batches in hand (held before scoring) of a job of `rows` rows, in a thread."""
    redis = processes.redis()
    env = queue(redis.url, tiny_preset)
    first = processes.worker("first", {**env, "QUEUE_TEST_HOLD": ",".join(sorted(held))}).wait_ready()
    out = tmp_path / "scores.csv"
    job = run_job(env, write_csv(tmp_path / "dump.csv", rows), out)
    r = redis.client()
    wait_for(lambda: held <= {s["batch"] for s in started(r)}, 60, "both held batches in hand")
    return env, first, job, out, r


def test_a_worker_killed_with_two_batches_in_hand_loses_neither(processes, tiny_preset, tmp_path):
    held = {"b2", "b3"}
    env, first, job, out, r = holding(processes, tiny_preset, tmp_path, held, 96)
    first.signal(signal.SIGKILL)
    first.proc.wait(10)
    processes.worker("second", env).wait_ready()
    summary = job.result(timeout=120)
    assert_exactly_once(out, 96, summary)
    trace = started(r)
    for batch in held:
        runs = [s for s in trace if s["batch"] == batch]
        assert [s["redelivered"] for s in runs] == [False, True], runs  # lost with the worker, delivered again
    assert all([s["batch"] for s in trace].count(f"b{i}") == 1 for i in range(12) if f"b{i}" not in held)


def test_warm_shutdown_with_two_batches_in_hand_finishes_both(processes, tiny_preset, tmp_path):
    held = {"b0", "b1"}
    env, first, job, out, r = holding(processes, tiny_preset, tmp_path, held, 32)
    first.signal(signal.SIGTERM)
    wait_for(lambda: "shutdown" in first.text().lower(), 10, "the worker to take the signal")
    r.set(release_key(TRACE), 1)
    assert first.proc.wait(30) == 0
    for batch in held:
        assert any(f"/{batch}: 8 scored" in line for line in first.text().splitlines()), first.text()[-3000:]
    processes.worker("second", env).wait_ready()
    summary = job.result(timeout=120)
    assert_exactly_once(out, 32, summary)
    assert all([s["batch"] for s in started(r)].count(b) == 1 for b in held)


def test_a_poison_batch_fails_alone_and_the_batch_beside_it_is_scored(processes, tiny_preset, tmp_path):
    redis = processes.redis()
    env = queue(redis.url, tiny_preset, max_deliveries=2)
    supervisor = processes.supervise("w", env)
    source = write_csv(tmp_path / "dump.csv", 40, extra={9: POISON_KILL})
    out = tmp_path / "scores.csv"
    summary = run_job(env, source, out).result(timeout=150)
    rows = {r["id"]: r for r in read_output(out)}
    assert len(rows) == 40
    assert all(rows[f"c{i}"]["error"] == "gave up after 2 deliveries: the worker died while scoring this batch"
               for i in range(8, 16))  # batch b1
    assert all(rows[f"c{i}"]["error"] == "" for i in [*range(8), *range(16, 40)])
    assert (summary.status.scored, summary.status.failed) == (32, 8)
    trace = started(redis.client())
    beside = {s["batch"] for s in trace if s["redelivered"]} - {"b1"}
    assert beside, "some batch was in hand beside the poison one when it killed its worker"
    assert len(supervisor.workers) == 3  # killed twice by b1 (first beside another batch, then alone)
