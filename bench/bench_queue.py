"""The queue: Redis + Celery against in-process scoring, its own capacity, and the producer's memory.

Every mode starts a private redis-server on a free port (no persistence) and real
`agile worker` processes, and kills all of them (and the producer) on the way out,
Ctrl-C included. Workers get --threads as OMP_NUM_THREADS / MKL_NUM_THREADS; the
in-process side gets the same through torch.set_num_threads.

  inproc-vs-queue  the same comments, cut into the same tasks (--batch comments each), scored by
                   the worker's own code in this process, then through the queue by one warm
                   worker (a warm-up task first, not timed): submit to all results drained.
  capacity         the same, on the tiny random model, for each --batch: what the queue itself
                   carries (several workers by default), next to one worker's in-process ceiling.
  memory           `agile moderate` (a subprocess) on a generated dump of --rows rows: producer
                   RSS and Redis memory sampled every 0.5 s, at 10/50/90 % of progress and peak.

    python bench/bench_queue.py --mode inproc-vs-queue --model gemma3_270m --n 256 --batch 64
    python bench/bench_queue.py --mode capacity --batch 64,256 --n 20000
    python bench/bench_queue.py --mode memory --rows 1000000 --batch 256
"""

from __future__ import annotations

import argparse
import csv
import gc
import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

from agile.settings import QueueSettings

GOAL_RATIO, GOAL_CAPACITY = 0.95, 10_000
MODES = {"inproc-vs-queue": ("gemma3_270m", 256), "capacity": ("tiny", 20000), "memory": ("tiny", None)}


class Cluster:
    """A private redis-server and `agile worker` processes; close() kills every process it started."""

    def __init__(self, tmp: Path, settings: QueueSettings):
        self.tmp, self.procs = tmp, []
        port = free_port()
        self.settings = settings.with_(redis_url=f"redis://127.0.0.1:{port}/0", queue="bench", key_prefix="bench",
                                       metrics_port=0)
        self.spawn("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp)])
        self.redis = self.settings.redis_client()
        self.redis.ping()  # the client's retries ride out the server's start

    def env(self, threads: int | None = None) -> dict[str, str]:
        env = {**os.environ, **self.settings.to_env()}
        if threads:
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        return env

    def spawn(self, name: str, args: list[str], env: dict | None = None) -> subprocess.Popen:
        with (self.tmp / f"{name}.log").open("w") as log:
            proc = subprocess.Popen(args, cwd=common.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def workers(self, n: int, threads: int, env: dict[str, str] | None = None,
                celery_args: tuple[str, ...] = ()) -> list[subprocess.Popen]:
        """Start n workers (extra `env`, and Celery options after `--`) and wait until each has loaded
        its model and is consuming."""
        extra = ["--", *celery_args] if celery_args else []
        for i in range(n):
            self.spawn(f"worker{i}", [sys.executable, "-m", "agile.cli.main", "worker", "--hostname", f"bench{i}@%h",
                                      *extra], {**self.env(threads), **(env or {})})
        started = self.procs[-n:]
        for i, proc in enumerate(started):
            log, deadline = self.tmp / f"worker{i}.log", time.monotonic() + 600
            while "ready:" not in log.read_text():
                if proc.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"worker {i} not ready:\n{log.read_text()[-3000:]}")
                time.sleep(0.1)
        return started

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def comments(n: int, chars: int | None = None) -> list[str]:
    """n ETHOS comments (cut to `chars` characters): the file's rows in order, repeated past its end."""
    import pandas as pd

    base = [c[:chars] for c in pd.read_csv(common.ETHOS_CSV, sep=";")["comment"]]
    return list(itertools.islice(itertools.cycle(base), n))


def in_process(settings: QueueSettings, texts: list[str], batch: int, repeats: int) -> tuple[float, list]:
    """The worker's own scoring (agile.worker.runtime), in this process, task by task."""
    from agile.worker.runtime import Runtime

    runtime = Runtime(settings)
    policy = runtime.policy(None, None, None)

    def run():
        return [p for i in range(0, len(texts), batch) for p in runtime.score(policy, texts[i:i + batch]).probs]

    return common.timed(run, repeats, warmup=lambda: runtime.score(policy, texts[:batch]))


def through_queue(settings: QueueSettings, texts: list[str], repeats: int) -> tuple[float, dict]:
    """Submit every comment as one job, then drain all results: timed after one warm-up task."""
    from agile.producer.client import ScoringClient

    client = ScoringClient(settings)
    items = [(f"c{i}", t) for i, t in enumerate(texts)]
    warm = [(f"w{i}", t) for i, t in enumerate(texts[: settings.batch_size])]
    return common.timed(lambda: client.score(items), repeats, warmup=lambda: client.score(warm))


def inproc_vs_queue(args: argparse.Namespace, settings: QueueSettings, tmp: Path) -> dict:
    import numpy as np

    texts = comments(args.n, args.chars)
    seconds_in, probs = in_process(settings, texts, args.batch[0], args.repeats)
    gc.collect()  # the in-process model goes before the worker loads its own
    with Cluster(tmp, settings) as cluster:
        cluster.workers(1, args.threads)
        seconds_q, results = through_queue(cluster.settings, texts, args.repeats)
    label = next(k for k in results["c0"] if k.startswith("p_"))
    dp = float(np.max(np.abs(np.array([results[f"c{i}"][label] for i in range(args.n)]) - np.array(probs)[:, 0])))
    ratio = seconds_in / seconds_q
    common.print_table(["path", "comments/s", "seconds", "vs in-process"], [
        ["in-process (agile.worker.runtime)", args.n / seconds_in, seconds_in, 1.0],
        ["Redis + Celery, 1 worker", args.n / seconds_q, seconds_q, ratio]])
    print(f"\ngoal: queue / in-process = {ratio:.1%} (>= {GOAL_RATIO:.0%}); max |p(queue) - p(in-process)| = "
          f"{dp:.1e}")
    return {"in_process_s": seconds_in, "queue_s": seconds_q, "ratio": ratio, "max_abs_dp": dp}


def capacity(args: argparse.Namespace, settings: QueueSettings, tmp: Path) -> dict:
    texts, rows = comments(args.n, args.chars), []
    with Cluster(tmp, settings) as cluster:
        cluster.workers(args.workers, args.threads)
        for batch in args.batch:
            seconds, _ = through_queue(cluster.settings.with_(batch_size=batch), texts, args.repeats)
            ceiling, _ = in_process(settings, texts, batch, args.repeats)
            rows.append({"batch": batch, "queue_s": seconds, "comments_per_s": args.n / seconds,
                         "tasks_per_s": -(-args.n // batch) / seconds, "in_process_per_s": args.n / ceiling,
                         "efficiency": ceiling / seconds / args.workers})
    common.print_table(["comments per task", "workers", "queue comments/s", "tasks/s", "1 worker in-process /s",
                        "queue / (workers x in-process)"],
                       [[r["batch"], args.workers, r["comments_per_s"], r["tasks_per_s"], r["in_process_per_s"],
                         f"{r['efficiency']:.0%}"] for r in rows])
    print(f"\ngoal: >= {GOAL_CAPACITY:,} comments/s; best {max(r['comments_per_s'] for r in rows):,.0f}")
    return {"runs": rows}


def vm_hwm_mb(pid: int) -> float:
    """Peak resident memory of a running process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def write_dump(path: Path, rows: int, chars: int | None) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        writer.writerows((f"c{i}", text) for i, text in enumerate(comments(rows, chars)))


def memory(args: argparse.Namespace, settings: QueueSettings, tmp: Path) -> dict:
    import psutil

    dump = tmp / "dump.csv"
    write_dump(dump, args.rows, args.chars)
    samples = []  # (progress, producer RSS MB, Redis used_memory MB)
    with Cluster(tmp, settings.with_(batch_size=args.batch[0])) as cluster:
        cluster.workers(args.workers, args.threads)
        start = time.perf_counter()
        producer = cluster.spawn("producer", [sys.executable, "-m", "agile.cli.main", "moderate", str(dump),
                                              "-o", str(tmp / "scores.csv")], cluster.env())
        proc, producer_peak = psutil.Process(producer.pid), 0.0
        while True:
            pid, status, _ = os.wait4(producer.pid, os.WNOHANG)
            if pid:
                break
            try:
                rss = sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20
                # The kernel's high-water mark since exec (ru_maxrss would count the pages the
                # child shared with this process, torch and all, between fork and exec).
                producer_peak = max(producer_peak, vm_hwm_mb(producer.pid))
            except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
                continue
            samples.append((job_progress(cluster, args.rows), rss, cluster.redis.info("memory")["used_memory"] / 2**20))
            time.sleep(0.5)
        seconds = time.perf_counter() - start
        producer.returncode = os.waitstatus_to_exitcode(status)
        if producer.returncode != 0:
            sys.exit(f"agile moderate failed:\n{(tmp / 'producer.log').read_text()[-3000:]}")
        redis_peak = cluster.redis.info("memory")["used_memory_peak"] / 2**20
    at = {f"{q:.0%}": next((s for s in samples if s[0] >= q), samples[-1]) for q in (0.1, 0.5, 0.9)}
    common.print_table(["progress", "producer RSS MB", "Redis used_memory MB"],
                       [[k, rss, red] for k, (_, rss, red) in at.items()] + [["peak", producer_peak, redis_peak]])
    print(f"\n{args.rows:,} rows ({dump.stat().st_size / 2**20:,.0f} MB dump) in {seconds:.1f} s "
          f"({args.rows / seconds:,.0f}/s) with {args.workers} workers, {len(samples)} samples")
    return {"rows": args.rows, "dump_mb": dump.stat().st_size / 2**20, "seconds": seconds,
            "producer_peak_rss_mb": producer_peak, "redis_used_memory_peak_mb": redis_peak,
            "at_progress": {k: {"producer_rss_mb": rss, "redis_used_memory_mb": red}
                            for k, (_, rss, red) in at.items()},
            "samples": samples}


def job_progress(cluster: Cluster, rows: int) -> float:
    """Share of the dump written back, from the job's counters in Redis (the only job there)."""
    for key in cluster.redis.scan_iter(match=f"{cluster.settings.key_prefix}:job:*:meta"):
        scored, failed = cluster.redis.hmget(key, "scored", "failed")
        return (int(scored or 0) + int(failed or 0)) / rows
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser, dtype=False)
    parser.set_defaults(n=None, threads=None)
    parser.add_argument("--mode", required=True, choices=MODES)
    parser.add_argument("--model", help="gemma3_270m, tiny (a random tiny Gemma 3) or a preset dir")
    parser.add_argument("--batch", type=lambda s: [int(b) for b in s.split(",")], default=[64],
                        help="comments per queued task, comma-separated for capacity (default 64)")
    parser.add_argument("--workers", type=int, help="worker processes (default: 1, or one per core)")
    parser.add_argument("--chars", type=int, help="cut every comment to its first N characters (default: whole)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the generated dump (memory)")
    args = parser.parse_args()
    default_model, default_n = MODES[args.mode]
    args.model, args.n = args.model or default_model, args.n or default_n
    model = Path(args.model).name  # the result's name for it (a tiny preset becomes a temp dir below)
    args.workers = args.workers or (1 if args.mode == "inproc-vs-queue" else os.cpu_count())
    args.threads = args.threads or max(1, os.cpu_count() // args.workers)
    common.setup(args.device, args.threads)
    # Ctrl-C and kill both unwind through the `with` blocks, which stop every process started here.
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    with tempfile.TemporaryDirectory(prefix="bench-queue-") as tmp:
        if args.model == "tiny":
            from agile.testing import make_tiny_preset

            args.model = str(make_tiny_preset(Path(tmp) / "tiny"))
        settings = QueueSettings(model=args.model, batch_size=args.batch[0], scoring_batch=args.batch_size)
        print(f"{args.mode}: model {Path(args.model).name}, comments per task {args.batch}, scoring batch "
              f"{args.batch_size}, {args.workers} worker(s) x {args.threads} thread(s)\n")
        payload = {"inproc-vs-queue": inproc_vs_queue, "capacity": capacity, "memory": memory}[args.mode](
            args, settings, Path(tmp))
    tag = {"inproc-vs-queue": f"{model}-n{args.n}", "capacity": f"n{args.n}-w{args.workers}",
           "memory": f"rows{args.rows}-w{args.workers}"}[args.mode]
    common.write_result(args.name or f"queue-{args.mode}-{tag}-b{'-'.join(map(str, args.batch))}-t{args.threads}", {
        "mode": args.mode, "model": model, "n": args.n,
        "batch": args.batch, "scoring_batch": args.batch_size, "chars": args.chars, "workers": args.workers,
        **payload}, args.device)


if __name__ == "__main__":
    main()
