"""`agile submit`, `agile status`, `agile results` and `agile moderate` (registered by agile.cli.main)."""

from __future__ import annotations

import argparse
import functools
import sys


def register(subparsers) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--redis-url", help="Redis for the queue and scores (AGILE_REDIS_URL)")
    common.add_argument("--queue", help="queue name (AGILE_QUEUE, default agile)")

    source = argparse.ArgumentParser(add_help=False, parents=[common])
    source.add_argument("file", help="comments: .csv, .jsonl or .parquet, read in chunks")
    source.add_argument("--adapter", help="adapter name, e.g. ethos-hate (default: zero-shot, --labels)")
    source.add_argument("--labels", help="zero-shot labels, comma-separated (default Positive,Negative)")
    source.add_argument("--instructions", help="zero-shot instructions")
    source.add_argument("--model", help="the model the workers must serve (checked by each worker)")
    source.add_argument("--text-column", default="text")
    source.add_argument("--id-column", default="id", help="rows without one get their row number")
    source.add_argument("--format", dest="fmt", help="input format when the suffix does not say")
    source.add_argument("--batch-size", type=int, help="comments per task (AGILE_BATCH_SIZE, default 64)")
    source.add_argument("--max-in-flight", type=int, help="queued batches at most (AGILE_MAX_IN_FLIGHT)")

    p = subparsers.add_parser("submit", parents=[source], help="queue a comment dump; prints the job id")
    p.set_defaults(func=_cmd_submit)

    p = subparsers.add_parser("status", parents=[common], help="progress of a job (rate, ETA)")
    p.add_argument("job")
    p.add_argument("--once", action="store_true", help="print one line instead of following the job")
    p.set_defaults(func=_cmd_status)

    p = subparsers.add_parser("results", parents=[common], help="stream a job's scores to a file")
    p.add_argument("job")
    p.add_argument("-o", "--out", required=True, help="output .csv, .jsonl or .parquet")
    p.add_argument("--out-format", help="output format when the suffix does not say")
    p.add_argument("--no-wait", action="store_true", help="write what is ready now instead of waiting")
    p.set_defaults(func=_cmd_results)

    p = subparsers.add_parser("moderate", parents=[source], help="submit, wait and write the scores")
    p.add_argument("-o", "--out", required=True, help="output .csv, .jsonl or .parquet")
    p.add_argument("--out-format", help="output format when the suffix does not say")
    p.set_defaults(func=_cmd_moderate)


def _fails_clearly(func):
    """Known failures become one line on stderr and exit code 2, not a traceback."""

    @functools.wraps(func)
    def run(args) -> int:
        from redis.exceptions import RedisError

        from agile.settings import SettingsError
        from agile.tables import TableError

        try:
            return func(args)
        except (SettingsError, TableError, KeyError, FileNotFoundError, TimeoutError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) else exc
            print(f"agile: error: {message}", file=sys.stderr)
        except RedisError as exc:
            print(f"agile: error: Redis: {exc}", file=sys.stderr)
        except KeyboardInterrupt:
            print("agile: interrupted; the job stays in Redis (see agile status, agile results)",
                  file=sys.stderr)
            return 130
        return 2

    return run


def _settings(args):
    from agile.settings import QueueSettings

    return QueueSettings.from_env(redis_url=args.redis_url, queue=args.queue,
                                  batch_size=getattr(args, "batch_size", None),
                                  max_in_flight=getattr(args, "max_in_flight", None))


def _template(args) -> dict:
    labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
    return dict(adapter=args.adapter, labels=labels, instructions=args.instructions, model=args.model)


def _source(args):
    from agile.producer.batches import FileSource

    return FileSource.of(args.file, args.text_column, args.id_column or None, args.fmt)


@_fails_clearly
def _cmd_submit(args) -> int:
    from agile.producer.pipeline import submit

    job = submit(_settings(args), _source(args), **_template(args))
    print(job.job_id)
    return 0


@_fails_clearly
def _cmd_status(args) -> int:
    from agile.producer.jobs import Job
    from agile.producer.pipeline import Progress

    job = Job.open(_settings(args), args.job)
    if args.once:
        print(describe(job.status()))
        return 0
    bar = Progress(job.job_id)
    try:
        status = job.wait(None, progress=bar)
    finally:
        bar.close()
    print(describe(status))
    return 0


@_fails_clearly
def _cmd_results(args) -> int:
    from agile.producer.jobs import Job
    from agile.producer.pipeline import results

    settings = _settings(args)
    job = Job.open(settings, args.job)
    summary = results(settings, job, args.out, args.out_format, wait=not args.no_wait)
    print(f"{summary.rows} rows written to {summary.out} ({_counts(summary.predictions)})")
    return 0


@_fails_clearly
def _cmd_moderate(args) -> int:
    from agile.producer.pipeline import moderate

    summary = moderate(_settings(args), _source(args), args.out, fmt=args.out_format, **_template(args))
    print(f"job {summary.job_id}: {summary.rows} comments in {summary.seconds:.1f} s "
          f"({summary.rate:.1f}/s): {_counts(summary.predictions)}; output: {summary.out}")
    return 0


def describe(status) -> str:
    """One line: state, counts, rate and ETA."""
    if not status.exists:
        return f"job {status.job_id}: unknown (never created, or expired)"
    done = status.scored + status.failed
    state = "complete" if status.complete else status.meta.get("status", "?")
    parts = [f"job {status.job_id}: {state}", f"{done}/{status.queued} comments",
             f"{status.scored} scored", f"{status.failed} failed"]
    if status.rate:
        parts.append(f"{status.rate:.1f}/s")
    if status.eta is not None:
        parts.append(f"ETA {status.eta:.0f} s")
    for version in status.versions:
        parts.append(f"model {version.get('model')}, adapter {version.get('adapter')}"
                     f"@{version.get('adapter_version')}")
    return ", ".join(parts)


def _counts(predictions: dict[str, int]) -> str:
    return ", ".join(f"{label}: {n}" for label, n in sorted(predictions.items())) or "no rows"
