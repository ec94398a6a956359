"""Several hosts for real: Redis, two workers and the producer each on a network namespace of their own.

Topology (tests/netns_hosts.py): one bridge in a switch namespace, a veth from it to
each host, addresses 10.a.b.0/24 (a free /24): .1 Redis (a redis-server of its own,
bound to that address only), .2 worker w1, .3 worker w2, .4 the producer; the test
process watches Redis from .254. The producer runs `agile submit` and, at the end,
`agile results` against redis://10.a.b.1:6379.

While w1 holds a batch (its delivery counted, its rows not yet written back) its
cable is pulled at the switch (`ip link set <its port> down`). Its write-back then
hangs on a dead link; kombu on w2 puts the unacknowledged batch back on the queue
once the visibility timeout has passed, and w2 scores it. The job completes with w1
still cut off. When the link is mended, w1's write-back lands late, and the job's
`done` set (worker/store.py) must make it change nothing: every row once, in order,
counters exact.
"""

from __future__ import annotations

import json
import os
import sys
import time

import pytest
import redis
from netns_hosts import Network, events, why_no_namespaces
from queue_fixtures import queue_env, read_output, wait_for, write_csv

from agile.wire import JobKeys, lanes

pytestmark = pytest.mark.redis  # its own Redis, workers and producer processes

VISIBILITY_TIMEOUT = 3  # s
ROWS, BATCH = 64, 4  # 16 batches
TRACE = "hosts-test-trace"  # queue_fixtures' trace of batches taken, in Redis


@pytest.fixture(scope="module")
def can_make_namespaces():
    reason = why_no_namespaces()  # checked once
    if reason:
        pytest.skip(f"several hosts need Linux network namespaces: {reason}")


@pytest.fixture
def network(can_make_namespaces, tmp_path):
    net = Network(["redis", "w1", "w2", "producer"], tmp_path)
    try:
        net.create()
        yield net
    finally:
        net.close()
    assert net.leftovers() == [], "namespaces or links left behind"


def worker_argv(name: str, env: dict[str, str]) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "agile.worker", "worker", "--pool", "solo",
            "--hostname", f"{name}@%h", "--queues", ",".join(lanes(env["AGILE_QUEUE"])), "--without-mingle",
            "--without-gossip", "--include", "queue_fixtures,netns_hosts", "--loglevel", "INFO"]


def agile(*args: str) -> list[str]:
    return [sys.executable, "-m", "agile.cli.main", *args]


def of(evs: list[dict], event: str, batch: str | None = None) -> list[dict]:
    return [e for e in evs if e["event"] == event and (batch is None or e["batch"] == batch)]


def test_a_worker_host_cut_off_mid_batch_loses_and_doubles_nothing(network, tiny_preset, tmp_path):
    net = network
    address = net.address["redis"]
    url = f"redis://{address}:6379/0"
    (tmp_path / "redis").mkdir()
    server = net.start("redis", "redis-server", [
        "redis-server", "--port", "6379", "--bind", address, "--protected-mode", "no", "--dir",
        str(tmp_path / "redis"), "--appendonly", "no", "--save", ""], dict(os.environ))
    watch = redis.Redis.from_url(url, decode_responses=True, socket_timeout=5, socket_connect_timeout=2)

    def answers() -> bool:
        try:
            return bool(watch.ping())
        except redis.exceptions.RedisError:
            assert server.proc.poll() is None, server.text()
            return False

    wait_for(answers, 15, f"redis-server on {address}, seen from the test's host")

    env = queue_env(url, tiny_preset, visibility_timeout=VISIBILITY_TIMEOUT, QUEUE_TEST_TRACE=TRACE)
    release = tmp_path / "release-w1"
    ev = {name: tmp_path / f"events-{name}.jsonl" for name in ("w1", "w2")}
    # w1 holds the second batch it scores: mid-batch, after its delivery is counted, before its write-back.
    w1 = net.start("w1", "w1", worker_argv("w1", env), {
        **env, "HOSTS_TEST_EVENTS": str(ev["w1"]), "HOSTS_TEST_HOLD_NTH": "2", "HOSTS_TEST_RELEASE": str(release)})
    w2 = net.start("w2", "w2", worker_argv("w2", env), {**env, "HOSTS_TEST_EVENTS": str(ev["w2"])})
    w1.wait_for_text("ready.", 90, "worker w1")
    w2.wait_for_text("ready.", 90, "worker w2")

    dump = write_csv(tmp_path / "dump.csv", ROWS, id_prefix="row-")
    submitted = net.run("producer", agile("submit", str(dump), "--batch-size", str(BATCH), "--max-in-flight", "64"),
                        env, timeout=60)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job = submitted.stdout.split()[0]
    keys = JobKeys(env["AGILE_KEY_PREFIX"], job)

    held = wait_for(lambda: of(events(ev["w1"]), "held"), 60, "w1 holding a batch")[0]
    net.cut("w1")
    cut_at = time.time()
    release.touch()  # w1 goes on: its write-back now hangs on the dead link
    batch = held["batch"]
    taken_by_w1 = of(events(ev["w1"]), "taken", batch)[0]["t"]

    wait_for(lambda: watch.scard(keys.done) == ROWS // BATCH, 60, "every batch written back without w1")
    recovered_at = time.time()
    meta = watch.hgetall(keys.meta)
    assert (int(meta["scored"]), int(meta["failed"])) == (ROWS, 0)
    assert not of(events(ev["w1"]), "finished", batch), "w1 wrote back through a cut link"

    # Redelivered to w2, once the visibility timeout had passed since w1 took the batch.
    again = of(events(ev["w2"]), "taken", batch)
    assert len(again) == 1, again
    assert again[0]["t"] - taken_by_w1 >= VISIBILITY_TIMEOUT - 0.2
    assert of(events(ev["w2"]), "finished", batch)[0]["retval"]["scored"] == BATCH
    trace = [json.loads(x) for x in watch.lrange(TRACE, 0, -1)]
    assert [t["pid"] for t in trace if t["batch"] == batch] == [w1.proc.pid, w2.proc.pid]
    assert {t["batch"] for t in trace} == {f"b{i}" for i in range(ROWS // BATCH)}
    assert of(events(ev["w1"]), "finished") and len(of(events(ev["w2"]), "finished")) >= 2  # a job across both

    # The link back: w1's late write-back lands, and the done set makes it change nothing.
    net.mend("w1")
    mended_at = time.time()
    late = wait_for(lambda: of(events(ev["w1"]), "finished", batch), 60, "w1's late write-back")[0]
    assert late["t"] >= mended_at and late["retval"]["scored"] == BATCH  # it did score and write, late
    after = watch.hgetall(keys.meta)
    assert (int(after["scored"]), int(after["failed"])) == (ROWS, 0)
    assert after["last_done_at"] == meta["last_done_at"]  # the late write was ignored as a whole
    assert watch.scard(keys.done) == watch.hlen(keys.results) == ROWS // BATCH

    out = tmp_path / "scores.csv"
    collected = net.run("producer", agile("results", job, "-o", str(out)), env, timeout=60)
    assert collected.returncode == 0, collected.stdout + collected.stderr
    rows = read_output(out)
    assert [r["id"] for r in rows] == [f"row-{i}" for i in range(ROWS)]  # every row once, in order, ids as written
    assert all(r["error"] == "" for r in rows)
    assert f"/{batch}: {BATCH} scored" in w2.text()
    print(f"\npartition: w1 cut {cut_at - taken_by_w1:.2f} s into {batch}; redelivered to w2 "
          f"{again[0]['t'] - cut_at:.2f} s after the cut; job complete {recovered_at - cut_at:.2f} s after the cut; "
          f"w1's late write-back {late['t'] - mended_at:.2f} s after the link came back; "
          f"w1 alive at the end: {w1.proc.poll() is None}")
