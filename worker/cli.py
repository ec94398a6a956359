"""`agile worker`: a Celery worker with the right defaults (one per GPU; two batches in hand on a GPU).

Flags become AGILE_* variables before the Celery app is imported, so the worker,
its metrics and its logs all see the same settings.
"""

from __future__ import annotations

import argparse
import os


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "worker", help="score queued batches (one process per GPU, or one on CPU)",
        description="Runs `celery -A agile.worker worker` with this project's settings: a solo pool, or "
                    "threads sharing one model when it holds several batches (--tasks-in-hand). "
                    "Extra Celery worker options go after `--`.",
    )
    p.add_argument("--redis-url", help="broker and result backend (AGILE_REDIS_URL)")
    p.add_argument("--queue", help="queue to consume (AGILE_QUEUE, default agile)")
    p.add_argument("--model", help="the model this worker serves (AGILE_MODEL, default gemma3_270m)")
    p.add_argument("--adapter-path", help="extra adapter directories, ':'-separated (AGILE_ADAPTER_PATH)")
    p.add_argument("--visibility-timeout", type=int, help="seconds before an unacked batch is redelivered")
    p.add_argument("--max-deliveries", type=int, help="deliveries before a batch fails (default 3)")
    p.add_argument("--scoring-batch", type=int,
                   help="rows per forward pass (AGILE_SCORING_BATCH; default: 16 on a CPU, 512 on a GPU)")
    p.add_argument("--tasks-in-hand", type=int,
                   help="batches held at once (AGILE_TASKS_IN_HAND): 2 overlaps one's CPU work with another's "
                        "model time; default 2 on a GPU, 1 on a CPU")
    p.add_argument("--metrics-port", type=int, help="Prometheus port (AGILE_METRICS_PORT, 9808; 0 disables)")
    p.add_argument("--log-format", choices=("text", "json"), help="AGILE_LOG_FORMAT")
    p.add_argument("--gpu", type=int, help="GPU index (sets CUDA_VISIBLE_DEVICES; metrics port + index)")
    p.add_argument("--hostname", help="Celery node name (default agile-<gpu|cpu>@<host>)")
    p.add_argument("--loglevel", default="INFO")
    p.add_argument("celery_args", nargs=argparse.REMAINDER, help="after --: passed to celery worker")
    p.set_defaults(func=run)


def run(args) -> int:
    from agile.settings import QueueSettings, SettingsError

    overrides = {name: getattr(args, name) for name in (
        "redis_url", "queue", "model", "adapter_path", "visibility_timeout", "max_deliveries",
        "scoring_batch", "tasks_in_hand", "metrics_port", "log_format")}
    try:
        settings = QueueSettings.from_env(**overrides)
        if args.gpu is not None and settings.metrics_port:
            settings = settings.with_(metrics_port=settings.metrics_port + args.gpu)
    except SettingsError as exc:
        print(f"agile: error: {exc}")
        return 2
    os.environ.update(settings.to_env())
    if args.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu)  # before torch is imported, in this process only
    node = args.hostname or f"agile-{'cpu' if args.gpu is None else f'gpu{args.gpu}'}@%h"
    extra = [a for a in args.celery_args if a != "--"]

    from agile.wire import lanes
    from agile.worker.app import app, pool

    chosen = pool(settings)
    app.worker_main(["worker", "--pool", chosen["worker_pool"], "--concurrency", str(chosen["worker_concurrency"]),
                     "--prefetch-multiplier", "1",
                     "--queues", ",".join(lanes(settings.queue)), "--hostname", node, "--loglevel", args.loglevel,
                     "--without-mingle", "--without-gossip", *extra])
    return 0
