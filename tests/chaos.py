"""Chaos for the job contract, shared by the CI test (tests/test_queue_chaos.py) and the soak (bench/bench_soak.py).

A dump with duplicate, blank and zero-padded ids goes through real supervised
workers on a private Redis while things break: workers are SIGKILLed at random
moments, the producer (`agile moderate`) is SIGKILLed mid-submit and the job is
resumed by another process (`agile results JOB`), and Redis is SIGKILLed and
restarted once mid-job (without persistence its queue and job keys are really
gone). The output must be the input, row for row.
"""

from __future__ import annotations

import csv
import random
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from queue_fixtures import ROOT, Processes, queue_env, wait_for


@dataclass
class ChaosConfig:
    rows: int = 600
    batch_size: int = 2
    max_in_flight: int = 8
    workers: int = 2
    worker_kills: int = 6
    kill_gap: float = 1.0  # seconds at least between two worker kills (they follow the job's progress)
    redis_persist: bool = False  # True: append-only file, as in production; False: a restart loses everything
    producer_kill_at: float = 0.3  # share of the batches sent when the first producer is killed
    redis_kill_at: float = 0.5  # share of the batches written back when Redis is killed
    seed: int = 0
    timeout: float = 600.0


@dataclass
class ChaosReport:
    config: dict
    batches: int
    rows_in: int
    rows_out: int = 0
    rows_lost: int = 0
    rows_doubled: int = 0
    rows_out_of_place: int = 0
    rows_failed: int = 0
    scored_counter: int = 0
    failed_counter: int = 0
    resent_batches: int = 0
    worker_kills: int = 0
    worker_starts: int = 0
    producer_kills: int = 0
    redis_restarts: int = 0
    peak_redis_mb: float = 0.0
    seconds: float = 0.0
    exit_code: int | None = None
    log_tail: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def make_dump(path: Path, rows: int) -> list[str]:
    """Rows with ids that repeat, are blank, or have leading zeros; returns the ids as written.

    Texts are short (the sample's first words), so the run spends its time on faults, not on scoring.
    """
    texts = [r["text"] for r in csv.DictReader((ROOT / "data" / "sample_comments.csv").open(encoding="utf-8"))]
    ids = ["" if i % 7 == 3 else f"{i % 97:04d}" for i in range(rows)]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        for i, row_id in enumerate(ids):
            writer.writerow([row_id, f"{' '.join(texts[i % len(texts)].split()[:8])} ({i})"])
    return ids


def _meta(redis, prefix: str) -> tuple[str, dict] | None:
    keys = [k for k in redis.keys(f"{prefix}:job:*:meta")]
    return (keys[0], redis.hgetall(keys[0])) if keys else None


def run_chaos(cfg: ChaosConfig, workdir: Path, preset: Path) -> ChaosReport:
    import pandas as pd
    import redis as redis_lib

    rng = random.Random(cfg.seed)
    workdir.mkdir(parents=True, exist_ok=True)
    dump, out = workdir / "dump.csv", workdir / "scores.csv"
    ids = make_dump(dump, cfg.rows)
    batches = -(-cfg.rows // cfg.batch_size)
    report = ChaosReport(asdict(cfg), batches, cfg.rows)
    procs = Processes(workdir)
    stop = threading.Event()
    started = time.monotonic()
    try:
        server = procs.redis(persist=cfg.redis_persist)
        env = {**queue_env(server.url, preset, batch_size=cfg.batch_size, max_in_flight=cfg.max_in_flight),
               "OMP_NUM_THREADS": "1"}  # several workers share the cores
        prefix = env["AGILE_KEY_PREFIX"]
        supervisors = [procs.supervise(f"w{n}", env) for n in range(cfg.workers)]
        for s in supervisors:
            s.workers[-1].wait_ready(120)

        def client():
            return redis_lib.Redis.from_url(server.url, decode_responses=True, socket_timeout=2)

        def sample_memory() -> None:
            while not stop.wait(0.25):
                try:
                    used = int(client().info("memory")["used_memory"]) / 2**20
                    report.peak_redis_mb = max(report.peak_redis_mb, used)
                except redis_lib.RedisError:
                    pass

        def progress() -> float:
            found = _meta(client(), prefix)
            return client().scard(found[0].replace(":meta", ":done")) / batches if found else 0.0

        def kill_workers() -> None:
            """Kill k comes once 3/4 * k/n of the batches are written: spread over the job's progress,
            not the clock, so every kill lands mid-job however fast the machine is."""
            seen, last = 0.0, 0.0
            for k in range(1, cfg.worker_kills + 1):
                while not stop.wait(0.1):
                    try:
                        seen = max(seen, progress())  # a Redis restart without persistence empties the set
                    except redis_lib.RedisError:
                        continue
                    alive = [s.workers[-1] for s in supervisors if s.workers[-1].proc.poll() is None]
                    if seen >= 0.75 * k / cfg.worker_kills and time.monotonic() - last >= cfg.kill_gap and alive:
                        rng.choice(alive).signal(9)
                        report.worker_kills += 1
                        last = time.monotonic()
                        break

        threads = [threading.Thread(target=f, daemon=True) for f in (sample_memory, kill_workers)]
        for t in threads:
            t.start()

        def agile(*argv: str, log: str) -> subprocess.Popen:
            with (workdir / log).open("w") as f:
                return subprocess.Popen([sys.executable, "-m", "agile.cli.main", *argv], cwd=ROOT, env=env,
                                        stdout=f, stderr=subprocess.STDOUT)

        first = agile("moderate", str(dump), "-o", str(out), log="producer-1.log")

        def sent_enough():
            found = _meta(client(), prefix)
            return found and int(found[1].get("next_batch") or 0) >= cfg.producer_kill_at * batches

        wait_for(sent_enough, cfg.timeout, "the first producer to send its share")
        first.kill()
        first.wait(30)
        report.producer_kills += 1
        meta_key = _meta(client(), prefix)[0]
        job_id = meta_key.split("{")[1].split("}")[0]

        second = agile("results", job_id, "-o", str(out), log="producer-2.log")

        def written_enough():
            done = client().scard(meta_key.replace(":meta", ":done"))
            return done >= cfg.redis_kill_at * batches or second.poll() is not None

        wait_for(written_enough, cfg.timeout, "half the batches written back")
        if second.poll() is None:
            server.kill()
            server.start()
            report.redis_restarts += 1
        report.exit_code = second.wait(cfg.timeout)
        report.log_tail = (workdir / "producer-2.log").read_text()[-2000:]
        meta = client().hgetall(meta_key)
        report.scored_counter, report.failed_counter = int(meta.get("scored", 0)), int(meta.get("failed", 0))
        report.resent_batches = int(meta.get("resent_batches", 0))
        report.worker_starts = sum(len(s.workers) for s in supervisors)
    finally:
        stop.set()
        procs.close()
        report.seconds = time.monotonic() - started
    if out.exists():
        frame = pd.read_csv(out, dtype={"id": str}, keep_default_na=False)
        got = frame["id"].tolist()
        report.rows_out = len(got)
        report.rows_lost = max(0, len(ids) - len(got))
        report.rows_doubled = max(0, len(got) - len(ids))
        report.rows_out_of_place = sum(a != b for a, b in zip(got, ids, strict=False))
        report.rows_failed = int((frame["error"] != "").sum())
    return report
