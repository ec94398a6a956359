"""Two batches in hand: turns (a redelivered batch alone), and the model shared under the device lock."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from agile.settings import QueueSettings
from agile.worker.overlap import Turns
from agile.worker.runtime import Runtime

WAIT = 10  # s: only ever reached when the rule under test is broken


def hold(turns: Turns, alone: bool, entered: threading.Event, release: threading.Event) -> None:
    with turns.turn(alone):
        entered.set()
        assert release.wait(WAIT)


def test_first_deliveries_share_turns_and_a_redelivery_waits_for_them_then_runs_alone():
    turns = Turns()
    pool = ThreadPoolExecutor(4)
    a, b, c, d = ([threading.Event(), threading.Event()] for _ in range(4))
    first = pool.submit(hold, turns, False, *a)
    second = pool.submit(hold, turns, False, *b)
    assert a[0].wait(WAIT) and b[0].wait(WAIT), "two first deliveries run side by side"
    suspect = pool.submit(hold, turns, True, *c)
    assert not c[0].wait(0.3), "a redelivered batch waits while others are in hand"
    later = pool.submit(hold, turns, False, *d)
    a[1].set()
    first.result(WAIT)
    assert not c[0].wait(0.3), "... until every one of them has ended"
    b[1].set()
    second.result(WAIT)
    assert c[0].wait(WAIT), "then it runs"
    assert not d[0].wait(0.3), "and a batch that came while it waited does not start beside it"
    c[1].set()
    suspect.result(WAIT)
    assert d[0].wait(WAIT)
    d[1].set()
    later.result(WAIT)
    pool.shutdown()


def test_two_redeliveries_take_turns_alone_without_deadlock():
    turns, inside, most = Turns(), [0], [0]
    lock = threading.Lock()

    def alone() -> None:
        with turns.turn(True):
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            threading.Event().wait(0.02)
            with lock:
                inside[0] -= 1

    with ThreadPoolExecutor(4) as pool:
        for f in [pool.submit(alone) for _ in range(8)]:
            f.result(WAIT)
    assert most[0] == 1


@pytest.fixture(scope="module")
def runtime(tiny_preset, adapter_dir):
    return Runtime(QueueSettings(model=str(tiny_preset), adapter_path=str(adapter_dir)))


def test_batches_scored_from_two_threads_get_the_scores_they_get_alone(runtime):
    """The adapter swap and the forward passes are one batch's at a time: two threads switching between
    two policies (and the base model) never score a batch under another's weights."""
    texts = [f"comment number {i}: {'you are lovely' if i % 2 else 'I will find you'}" for i in range(24)]
    policies = [runtime.policy(name, None, None) for name in ("tiny-toxic", "tiny-threat")]
    policies.append(runtime.policy(None, None, None))
    alone = [runtime.score(p, texts).probs for p in policies]
    jobs = [(k % 3, texts) for k in range(18)]
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda job: runtime.score(policies[job[0]], job[1]).probs, jobs))
    for (k, _), probs in zip(jobs, got, strict=True):
        np.testing.assert_allclose(probs, alone[k], rtol=0, atol=1e-6)
