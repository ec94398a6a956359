"""`agile submit`, `agile status`, `agile results`, `agile moderate`, `agile cancel` (registered by agile.cli.main).

Exit status: 0 every row scored; 1 some rows failed (the output's `error` column
says why); 2 the job could not run (one line on stderr says why).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

from agile.policy_set import add_arguments as add_set_arguments


def register(subparsers) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--redis-url", help="Redis for the queue and scores (AGILE_REDIS_URL)")
    common.add_argument("--queue", help="queue name (AGILE_QUEUE, default agile)")

    source = argparse.ArgumentParser(add_help=False, parents=[common])
    source.add_argument("file", help="comments: .csv, .jsonl or .parquet, read in chunks")
    source.add_argument("--adapter", help="adapter name, e.g. ethos-hate (default: zero-shot, --labels)")
    add_set_arguments(source)
    source.add_argument("--labels", help="zero-shot labels, comma-separated (default Positive,Negative)")
    source.add_argument("--instructions", help="zero-shot instructions")
    source.add_argument("--model", help="the model the workers must serve (checked by each worker)")
    source.add_argument("--text-column", default="text")
    source.add_argument("--id-column", help="id column (default: 'id' if the file has one, else row numbers)")
    source.add_argument("--format", dest="fmt", help="input format when the suffix does not say")
    source.add_argument("--delimiter", help="CSV delimiter (detected when omitted)")
    source.add_argument("--batch-size", type=int,
                        help="comments per task (AGILE_BATCH_SIZE; default: 1024 when a GPU worker is up, else 64)")
    source.add_argument("--max-in-flight", type=int, help="batches of the job in flight at most "
                                                          "(AGILE_MAX_IN_FLIGHT)")

    p = subparsers.add_parser("submit", parents=[source], help="check and queue a comment dump; prints the job id")
    p.set_defaults(func=_cmd_submit)

    p = subparsers.add_parser("status", parents=[common], help="progress of a job (rows, rate, ETA)")
    p.add_argument("job")
    p.add_argument("--once", action="store_true", help="print one line instead of following the job")
    p.set_defaults(func=_cmd_status)

    p = subparsers.add_parser("results", parents=[common],
                              help="carry a job on (resuming its submission) and write its scores to a file")
    p.add_argument("job")
    p.add_argument("-o", "--out", required=True, help="output .csv, .jsonl or .parquet")
    p.add_argument("--out-format", help="output format when the suffix does not say")
    p.set_defaults(func=_cmd_results)

    p = subparsers.add_parser("moderate", parents=[source], help="check, submit, wait and write the scores")
    p.add_argument("-o", "--out", required=True, help="output .csv, .jsonl or .parquet")
    p.add_argument("--out-format", help="output format when the suffix does not say")
    p.add_argument("--job", help="carry this interrupted job of the same file on instead of starting one")
    p.set_defaults(func=_cmd_moderate)

    p = subparsers.add_parser("cancel", parents=[common], help="drop a job: its keys and its queued batches")
    p.add_argument("job")
    p.set_defaults(func=_cmd_cancel)


def _fails_clearly(func):
    """Known failures become one line on stderr (plus what to do next) and exit code 2, not a traceback."""

    @functools.wraps(func)
    def run(args) -> int:
        from redis.exceptions import RedisError

        from agile.files import OutputError
        from agile.policy_set import PolicySetError
        from agile.producer.jobs import JobError
        from agile.settings import SettingsError
        from agile.tables import TableError
        from agile.wire import PayloadError

        try:
            return func(args)
        except (SettingsError, TableError, JobError, PayloadError, PolicySetError, OutputError, OSError,
                TimeoutError) as exc:  # OSError: a file that cannot be read or written (a full disk)
            _say(f"agile: error: {exc}", exc)
        except RedisError as exc:
            _say(f"agile: error: Redis: {exc}", exc)
        except KeyboardInterrupt as exc:
            _say("agile: interrupted", exc)
            return 130
        return 2

    return run


def _say(line: str, exc: BaseException) -> None:
    print(line, file=sys.stderr)
    for note in getattr(exc, "__notes__", []):
        print(f"agile: {note}", file=sys.stderr)


def _settings(args):
    from agile.settings import QueueSettings

    return QueueSettings.from_env(redis_url=args.redis_url, queue=args.queue,
                                  batch_size=getattr(args, "batch_size", None),
                                  max_in_flight=getattr(args, "max_in_flight", None))


def _policies(args) -> list[dict]:
    """The job's policies: a set (`--policy`, `--policy-set`, `--adapter`), or one zero-shot policy."""
    from agile.policy_set import from_args

    entries = from_args(args)
    if entries is not None:
        return [{**e.to_wire(), "model": args.model} for e in entries]
    labels = [x.strip() for x in args.labels.split(",")] if args.labels is not None else None
    return [dict(labels=labels, instructions=args.instructions, model=args.model)]


def _source(args):
    from agile.producer.source import FileSource

    id_column = "id" if args.id_column is None else (args.id_column or None)
    return FileSource.of(args.file, args.text_column, id_column, args.fmt, args.delimiter,
                         id_required=bool(args.id_column))


def _progress():
    from agile.producer.progress import Progress

    return Progress()


@_fails_clearly
def _cmd_submit(args) -> int:
    from agile.producer.commands import submit

    submit(_settings(args), _source(args), _policies(args), progress=_progress(), observe=args.observe,
           on_start=lambda job: print(job.job_id, flush=True))  # the id first: kept by a killed submit too
    return 0


@_fails_clearly
def _cmd_status(args) -> int:
    from agile.producer.jobs import POLL_SECONDS, Job

    job = Job.open(_settings(args), args.job)
    status = job.status()
    bar = None if args.once else _progress()
    idle_since = time.monotonic()
    while bar is not None and status.state in ("submitting", "submitted"):
        bar(status)
        if status.in_flight or status.state == "submitted":
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > 10:
            break  # a submission nobody carries on: say so rather than wait forever
        time.sleep(POLL_SECONDS * 5)
        status = job.status()
    if bar is not None:
        bar.close()
    print(describe(status))
    return 0 if args.once or status.complete else 1


@_fails_clearly
def _cmd_results(args) -> int:
    from agile.producer.commands import collect
    from agile.producer.jobs import Job

    settings = _settings(args)
    summary = collect(settings, Job.open(settings, args.job), args.out, args.out_format, progress=_progress())
    return _report(summary)


@_fails_clearly
def _cmd_moderate(args) -> int:
    from agile.producer.commands import moderate

    summary = moderate(_settings(args), _source(args), args.out, _policies(args), fmt=args.out_format,
                       job_id=args.job, progress=_progress(), observe=args.observe,
                       reads=(args.policy_set,) if args.policy_set else ())
    return _report(summary)


@_fails_clearly
def _cmd_cancel(args) -> int:
    from agile.producer.jobs import Job

    removed = Job.open(_settings(args), args.job).cancel()
    print(f"job {args.job}: cancelled; {removed} queued batch(es) removed, its keys deleted")
    return 0


def _report(summary) -> int:
    t = summary.totals
    failed = f", {t.failed} FAILED (see the error column)" if t.failed else ""
    print(f"job {summary.job_id}: {t.rows} rows in {summary.seconds:.1f} s ({summary.rate:.1f}/s): "
          f"{t.scored} scored{failed}; {_counts(t.predictions)}; output: {summary.out}")
    return summary.exit_code


def describe(status) -> str:
    """One line: state, rows done of total, counts, rate and ETA."""
    if not status.exists:
        return f"job {status.job_id}: unknown (never created, or expired)"
    parts = [f"job {status.job_id}: {status.state}", f"{status.rows_done:,}/{status.total_rows:,} rows",
             f"{status.scored:,} scored", f"{status.failed:,} failed"]
    if status.duplicates:
        parts.append(f"{status.duplicates:,} rows repeat an earlier id")
    if status.state == "submitting":
        parts.append(f"batches sent {status.next_batch}/{status.total_batches}")
        if not status.in_flight:
            parts.append(f"nothing in flight: if its producer stopped, `agile results {status.job_id} -o OUT` "
                         "carries it on")
    if status.state in ("delivered", "cancelled"):
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC",
                             time.gmtime(float(status.meta.get(f"{status.state}_at") or 0)))
        to = f" to {status.meta.get('delivered_to')}" if status.state == "delivered" else ""
        parts.append(f"{status.state} at {when}{to}")
    if status.rate:
        parts.append(f"{status.rate:.1f}/s")
    if status.eta is not None:
        parts.append(f"ETA {status.eta:.0f} s")
    for version in status.versions:
        adapters = version.get("adapters") or {version.get("adapter"): version.get("adapter_version")}
        parts.append(f"model {version.get('model')}, "
                     + ", ".join(f"adapter {name}@{v}" for name, v in adapters.items()))
    return ", ".join(parts)


def _counts(predictions: dict[str, int]) -> str:
    return ", ".join(f"{label}: {n}" for label, n in sorted(predictions.items())) or "no rows"
