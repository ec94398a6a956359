"""Batches in hand at once: one's CPU work (tokenizing, bookkeeping, write-back) beside another's model time.

A worker that holds two batches keeps its GPU busy: while one batch is on the
device (`Runtime.score` holds the device lock), the other is parsed, tokenized,
decided and written back. Exactly-once does not depend on it (the write-back
script is keyed by batch), but the poison cap does: a worker killed with two
batches in hand counts a delivery against both. So a batch delivered before
(kombu marks a restored message `redelivered`: its worker died, was stopped, or
the batch raised) runs alone: it waits for the other batch to end, no other
starts until it ends, and its delivery is counted only once it is alone. An
innocent batch is blamed for another's crash at most once, on its first delivery.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Turns:
    """Shared turns for first deliveries, a turn alone for redeliveries (writers first, so none starves)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running = 0  # batches in a shared turn
        self._alone = False  # a batch has its turn alone
        self._waiting_alone = 0  # batches waiting for one

    @contextmanager
    def turn(self, alone: bool) -> Iterator[None]:
        with self._cond:
            if alone:
                self._waiting_alone += 1
                self._cond.wait_for(lambda: not self._alone and self._running == 0)
                self._waiting_alone -= 1
                self._alone = True
            else:
                self._cond.wait_for(lambda: not self._alone and self._waiting_alone == 0)
                self._running += 1
        try:
            yield
        finally:
            with self._cond:
                if alone:
                    self._alone = False
                else:
                    self._running -= 1
                self._cond.notify_all()
