"""The chaos test (tests/chaos.py) at CI size: 300 batches, workers, the producer and Redis killed mid-job."""

from __future__ import annotations

import pytest
from chaos import ChaosConfig, run_chaos

pytestmark = pytest.mark.redis  # its own Redis, workers and producer processes


def test_chaos_every_row_comes_back_exactly_once_in_order(tiny_preset, tmp_path):
    report = run_chaos(ChaosConfig(rows=600, batch_size=2, worker_kills=5, redis_persist=False), tmp_path,
                       tiny_preset)
    print({k: v for k, v in report.as_dict().items() if k not in ("config", "log_tail")})  # figures, with -s
    assert report.exit_code == 0, report.log_tail
    assert report.batches >= 300
    assert (report.worker_kills, report.producer_kills, report.redis_restarts) == (5, 1, 1)
    assert report.rows_out == report.rows_in == 600
    assert (report.rows_lost, report.rows_doubled, report.rows_out_of_place, report.rows_failed) == (0, 0, 0, 0)
    assert (report.scored_counter, report.failed_counter) == (600, 0)  # counters exact through the restart
    assert report.resent_batches >= 1  # the restart really lost batches, and repair sent them again
