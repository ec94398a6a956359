"""The producer's commands as functions: submit a dump, carry a job on, collect its output, or all three.

`moderate` is what most people run: it checks the dump and the policy before a
job exists, queues the dump with backpressure, collects the scores while the
workers go, repairs lost batches, and writes the output in one rename. Every
step reads the job's own metadata, so `results` (or `moderate` with the job's
id) in any process resumes an interrupted submission and finishes the job.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agile.broker import live_workers, task_size
from agile.producer.jobs import POLL_SECONDS, Job, JobError, JobStatus, check_policy
from agile.producer.results import Drain, Totals
from agile.producer.source import FileSource, MemorySource, Plan, batches, same_file
from agile.prompt import DEFAULT_LABELS
from agile.settings import QueueSettings
from agile.tables import TableError, table_format

log = logging.getLogger("agile.producer")


@dataclass
class Summary:
    job_id: str
    out: Path | None
    totals: Totals
    seconds: float
    status: JobStatus

    @property
    def rows(self) -> int:
        return self.totals.rows

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0: every row scored; 1: some rows failed (the output's `error` column says why)."""
        return 1 if self.totals.failed else 0


def prepare(settings: QueueSettings, source: FileSource, policies: list[dict], out: str | Path | None = None,
            fmt: str | None = None, observe: bool = False) -> Plan:
    """Everything that can be checked before a job exists: policies, output path, every row of the dump."""
    check_policy(policies, observe)
    if out is not None:
        table_format(out, fmt)
        if not Path(out).resolve().parent.is_dir():
            raise TableError(f"{out}: directory {Path(out).resolve().parent} does not exist")
    plan = source.inspect(sized(settings).batch_size)
    if plan.rows == 0:
        raise TableError(f"{source.path}: no rows to score")
    if plan.duplicates:
        log.warning("%s: %d row(s) repeat an id an earlier row has (e.g. %s); every row is scored and "
                    "written on its own", source.path, plan.duplicates, ", ".join(map(repr, plan.examples)))
    return plan


def sized(settings: QueueSettings, client=None) -> QueueSettings:
    """The settings with a task size: AGILE_BATCH_SIZE / --batch-size when given, else one for the
    workers up now (512 comments once one has a GPU, 64 otherwise; `agile.broker.task_size`)."""
    if settings.batch_size:
        return settings
    own = client is None
    client = settings.redis_client() if own else client
    try:
        workers = live_workers(client, settings.key_prefix, settings.queue)
    finally:
        if own:
            client.close()
    size = task_size(workers)
    devices = sorted(set(workers.values()))
    log.info("%d comments per task, for %s", size, f"{len(workers)} live worker(s) on {', '.join(devices)}"
             if workers else "no worker up yet (CPU-sized)")
    return settings.with_(batch_size=size)


def start(settings: QueueSettings, source: FileSource, policies: list[dict], plan: Plan,
          observe: bool = False) -> Job:
    return Job.create(settings, policies, plan, plan.batch_size,
                      {"source": source.to_json(), "fingerprint": json.dumps(source.fingerprint())},
                      observe=observe)


def job_source(job: Job) -> FileSource:
    """The job's dump, checked to be the bytes it was made from."""
    if "source" not in job.meta:
        raise JobError(f"job {job.job_id} was not made from a file; only its own client can finish it")
    source = FileSource.from_json(job.meta["source"])
    source.check(json.loads(job.meta["fingerprint"]))
    return source


def _check_open(job: Job) -> None:
    state = job.meta.get("status")
    if state == "delivered":
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(job.meta["delivered_at"])))
        raise JobError(f"job {job.job_id} was delivered at {when} to {job.meta['delivered_to']}; "
                       "its scores are there, and no longer in Redis")
    if state == "cancelled":
        raise JobError(f"job {job.job_id} was cancelled")


def run_job(settings: QueueSettings, job: Job, source: FileSource | MemorySource, drain: Drain | None = None,
            progress: Callable[[JobStatus], None] | None = None, timeout: float | None = None,
            on_wait: Callable[[], None] | None = None) -> JobStatus:
    """Send the rest of the job, and with a `drain` collect it to the end, repairing losses on the way.

    Without a drain it returns once every batch is sent (`agile submit`).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    pending = batches(source.rows(), job.batch_size, first=job.next_batch)
    collected = drain.counts if drain else {}
    while True:
        job.restore(collected)
        sent_all = job.submit_some(pending)
        if drain is not None:
            drain.step()
        if job.next_batch and job.stalled():
            resent = job.repair(batches(source.rows(), job.batch_size))
            log.warning("job %s: no progress and nothing queued; sent %d lost batch(es) again", job.job_id, resent)
        status = job.status()
        if progress:
            progress(status)
        if drain is None and sent_all:
            return status
        if drain is not None and drain.complete(job.total_batches):
            return status
        if on_wait:
            on_wait()
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job.job_id} not complete after {timeout:.0f} s: "
                               f"{status.done_batches}/{job.total_batches} batches written back")
        time.sleep(POLL_SECONDS)


def _labels(job: Job) -> list[str]:
    policy = job.policy
    return [] if policy.get("adapter") else list(policy.get("labels") or DEFAULT_LABELS)


def collect(settings: QueueSettings, job: Job, out: str | Path, fmt: str | None = None, *,
            progress: Callable[[JobStatus], None] | None = None, timeout: float | None = None,
            on_wait: Callable[[], None] | None = None) -> Summary:
    """Carry the job on (resuming its submission if it was cut short) and write its output."""
    started = time.monotonic()
    _check_open(job)
    source = job_source(job)
    drain = Drain(job, out, fmt)
    try:
        status = run_job(settings, job, source, drain, progress, timeout, on_wait)
        names = [p["adapter"] for p in job.policies] if job.is_set else None
        totals = drain.finish(source.rows(), job.batch_size, int(job.meta["total_rows"]), _labels(job), names)
    except BaseException as exc:
        if drain.spool.exists():
            exc.add_note(f"the scores collected so far are kept in {drain.spool}; "
                         f"`agile results {job.job_id} -o {out}` carries on from there")
        raise
    job.delivered(str(drain.out))
    return Summary(job.job_id, drain.out, totals, time.monotonic() - started, status)


def submit(settings: QueueSettings, source: FileSource, policies: list[dict],
           progress: Callable[[JobStatus], None] | None = None, observe: bool = False) -> Job:
    """Check, then queue every row of the file as one job (blocks while the job has no room in flight)."""
    job = start(settings, source, policies, prepare(settings, source, policies, observe=observe), observe)
    try:
        run_job(settings, job, source, progress=progress)
    except BaseException as exc:
        exc.add_note(f"job {job.job_id} stays in Redis: `agile results {job.job_id} -o OUT` sends the rest "
                     f"and collects it, `agile cancel {job.job_id}` drops it")
        raise
    return job


def moderate(settings: QueueSettings, source: FileSource, out: str | Path, policies: list[dict], *,
             fmt: str | None = None, job_id: str | None = None, observe: bool = False,
             progress: Callable[[JobStatus], None] | None = None, timeout: float | None = None,
             on_wait: Callable[[], None] | None = None) -> Summary:
    """Check, submit, follow and collect in one go; with `job_id`, carry that job on instead."""
    started = time.monotonic()
    if job_id:
        job = Job.open(settings, job_id)
        made_from = FileSource.from_json(job.meta["source"]).path if "source" in job.meta else ""
        if not same_file(made_from, source.path):
            raise JobError(f"job {job_id} was made from {made_from or 'a client'}, not {source.path}")
    else:
        job = start(settings, source, policies, prepare(settings, source, policies, out, fmt, observe), observe)
    summary = collect(settings, job, out, fmt, progress=progress, timeout=timeout, on_wait=on_wait)
    summary.seconds = time.monotonic() - started
    return summary
