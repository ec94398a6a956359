"""Soak of the job contract: the chaos run (tests/chaos.py) at >= 1,000 batches, more kills, both Redis modes.

    nice -n 10 .venv/bin/python bench/bench_soak.py                 # 2,400 rows in batches of 2, both modes
    .venv/bin/python bench/bench_soak.py --rows 4000 --kills 30 --modes none

Each mode starts its own redis-server (`aof`: append-only file, as in production;
`none`: a restart loses everything), supervised workers on the tiny random model,
and kills workers at points spread over the job's progress, the producer mid-submit (then `agile results` in a
new process carries the job on), and Redis once mid-job. It reports rows lost,
doubled and out of place (all must be 0), the Redis counters, batches re-sent,
kills and restarts, and Redis's peak memory; results in bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import common

sys.path.insert(0, str(common.ROOT / "tests"))
os.environ["PYTHONPATH"] = os.pathsep.join([str(common.ROOT / "tests"), str(common.ROOT)])


def main() -> int:
    from chaos import ChaosConfig, run_chaos

    from agile.testing import make_tiny_preset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2400)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kills", type=int, default=15, help="worker SIGKILLs per mode")
    parser.add_argument("--modes", default="aof,none", help="Redis modes: aof, none, or both")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    runs, table = [], []
    with tempfile.TemporaryDirectory(prefix="agile-soak-") as tmp:
        preset = make_tiny_preset(Path(tmp) / "preset")
        for mode in args.modes.split(","):
            cfg = ChaosConfig(rows=args.rows, batch_size=args.batch_size, workers=args.workers,
                              worker_kills=args.kills, kill_gap=1.0, redis_persist=mode == "aof",
                              seed=args.seed, timeout=1800)
            report = run_chaos(cfg, Path(tmp) / mode, preset)
            runs.append({"mode": mode, **report.as_dict()})
            table.append([mode, report.batches, report.rows_in, report.rows_out, report.rows_lost,
                          report.rows_doubled, report.rows_out_of_place, report.rows_failed,
                          f"{report.scored_counter}/{report.failed_counter}", report.resent_batches,
                          report.worker_kills, report.producer_kills, report.redis_restarts,
                          f"{report.peak_redis_mb:.1f}", f"{report.seconds:.0f}", report.exit_code])
            if report.exit_code != 0:
                print(report.log_tail, file=sys.stderr)
    common.print_table(["redis", "batches", "rows in", "rows out", "lost", "doubled", "out of place", "failed",
                        "scored/failed counters", "re-sent", "worker kills", "producer kills",
                        "redis restarts", "peak redis MB", "seconds", "exit"], table)
    common.write_result("soak", {"runs": runs}, "cpu")
    bad = [r for r in runs if r["exit_code"] != 0 or r["rows_lost"] or r["rows_doubled"] or r["rows_out_of_place"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
