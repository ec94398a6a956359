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

from agile.files import check_output, same_file
from agile.fleet import live_workers, task_size
from agile.producer.jobs import Job, JobError
from agile.producer.lease import Lease
from agile.producer.payload import check_policy
from agile.producer.repair import Repair
from agile.producer.results import Drain, Totals
from agile.producer.source import FileSource, MemorySource, Plan, batches
from agile.producer.status import JobStatus
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
            fmt: str | None = None, observe: bool = False, reads: tuple[str, ...] = ()) -> Plan:
    """Everything that can be checked before a job exists: policies, output path, every row of the dump.

    `reads`: other files the run reads (a policy set file): the output may not be one of them either.
    """
    check_policy(policies, observe)
    if out is not None:
        table_format(out, fmt)
        check_output(out, (source.path, *reads))
    plan = source.inspect(sized(settings).batch_size)
    if plan.rows == 0:
        raise TableError(f"{source.path}: no rows to score")
    if plan.duplicates:
        log.warning("%s: %d row(s) repeat an id an earlier row has (e.g. %s); every row is scored and "
                    "written on its own", source.path, plan.duplicates, ", ".join(map(repr, plan.examples)))
    return plan


def sized(settings: QueueSettings, client=None) -> QueueSettings:
    """The settings with a task size: AGILE_BATCH_SIZE / --batch-size when given, else one for the
    workers up now (1,024 comments once one has a GPU, 64 otherwise; `agile.fleet.task_size`)."""
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
    fingerprint = plan.fingerprint or source.fingerprint()
    return Job.create(settings, policies, plan, plan.batch_size,
                      {"source": source.to_json(), "fingerprint": json.dumps(fingerprint)}, observe=observe)


def job_file(job: Job) -> FileSource:
    """The job's dump, as the job records it (not yet checked: `check_source`)."""
    if "source" not in job.meta:
        raise JobError(f"job {job.job_id} was not made from a file; only its own client can finish it")
    return FileSource.from_json(job.meta["source"])


def check_source(job: Job, source: FileSource) -> None:
    """The dump holds the bytes the job was made from (hashed again: size and mtime prove nothing)."""
    source.check(json.loads(job.meta["fingerprint"]))


def job_source(job: Job) -> FileSource:
    """The job's dump, checked to be the bytes it was made from."""
    source = job_file(job)
    check_source(job, source)
    return source


class JobCancelled(JobError):
    """The job was cancelled (before or while this process carried it on)."""


def check_open(job_id: str, meta: dict[str, str]) -> None:
    """Raise JobError if the job has ended: delivered (where and when) or cancelled."""
    state = meta.get("status")
    if state == "delivered":
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(meta["delivered_at"])))
        raise JobError(f"job {job_id} was delivered at {when} to {meta['delivered_to']}; "
                       "its scores are there, and no longer in Redis")
    if state == "cancelled":
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(meta.get("cancelled_at") or 0)))
        raise JobCancelled(f"job {job_id} was cancelled at {when}")


def run_job(settings: QueueSettings, job: Job, source: FileSource | MemorySource, drain: Drain | None = None,
            progress: Callable[[JobStatus], None] | None = None, timeout: float | None = None,
            on_wait: Callable[[], None] | None = None, lease: Lease | None = None) -> JobStatus:
    """Send the rest of the job, and with a `drain` collect it to the end, repairing losses on the way.

    Without a drain it returns once every batch is sent (`agile submit`). It stops (JobError)
    when the job is cancelled or delivered by another process, or another took its `lease`.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    pending = batches(source.chunks(), job.batch_size, first=job.next_batch)
    collected = drain.counts if drain else dict
    repair = Repair(job)
    while True:
        if lease is not None:
            lease.check()
        repair.restore(collected)
        sent_all = job.submit_some(pending)
        if drain is not None:
            drain.step()
        if job.next_batch and repair.stalled():
            resent = repair.resend(batches(source.chunks(), job.batch_size))
            log.warning("job %s: no progress and nothing queued; sent %d lost batch(es) again", job.job_id, resent)
        status = job.status()
        check_open(job.job_id, status.meta)
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
        job.wait()


def _labels(job: Job) -> list[str]:
    policy = job.policy
    return [] if policy.get("adapter") else list(policy.get("labels") or DEFAULT_LABELS)


def collect(settings: QueueSettings, job: Job, out: str | Path, fmt: str | None = None, *,
            progress: Callable[[JobStatus], None] | None = None, timeout: float | None = None,
            on_wait: Callable[[], None] | None = None) -> Summary:
    """Carry the job on (resuming its submission if it was cut short) and write its output.

    One process at a time (the job's lease); the output is checked before any work, and the
    dump is hashed again before the first batch is sent and before the output is renamed into
    place, so no row carries the score of another text.
    """
    started = time.monotonic()
    check_open(job.job_id, job.meta)
    source = job_file(job)
    with Lease(job, f"collecting it into {Path(out).resolve()}") as lease:
        drain = Drain(job, out, fmt, reads=(source.path,))
        try:
            check_source(job, source)
            names = [p["adapter"] for p in job.policies] if job.is_set else None
            drain.open_output(batches(source.chunks(), job.batch_size), job.batch_size, int(job.meta["total_rows"]),
                              _labels(job), names)
            status = run_job(settings, job, source, drain, progress, timeout, on_wait, lease)

            def still_ours() -> None:  # the last moment before the output appears
                lease.check()
                check_source(job, source)

            totals = drain.finish(before_rename=still_ours)
        except JobCancelled:
            drain.abort()
            drain.spool.unlink(missing_ok=True)  # nothing left to resume
            raise
        except BaseException as exc:
            drain.abort()
            if drain.spool.exists():
                exc.add_note(f"the scores collected so far are kept in {drain.spool}; "
                             f"`agile results {job.job_id} -o {out}` carries on from there")
            raise
        job.delivered(str(drain.out))
    return Summary(job.job_id, drain.out, totals, time.monotonic() - started, status)


def submit(settings: QueueSettings, source: FileSource, policies: list[dict],
           progress: Callable[[JobStatus], None] | None = None, observe: bool = False,
           on_start: Callable[[Job], None] | None = None) -> Job:
    """Check, then queue every row of the file as one job (blocks while the job has no room in flight).

    `on_start(job)` runs as soon as the job exists (the CLI prints its id there), so an
    interrupted submission still leaves the id to carry it on with.
    """
    job = start(settings, source, policies, prepare(settings, source, policies, observe=observe), observe)
    try:
        if on_start is not None:
            on_start(job)
        with Lease(job, "submitting it") as lease:
            run_job(settings, job, source, progress=progress, lease=lease)
    except BaseException as exc:
        exc.add_note(f"job {job.job_id} stays in Redis: `agile results {job.job_id} -o OUT` sends the rest "
                     f"and collects it, `agile cancel {job.job_id}` drops it")
        raise
    return job


def moderate(settings: QueueSettings, source: FileSource, out: str | Path, policies: list[dict], *,
             fmt: str | None = None, job_id: str | None = None, observe: bool = False, reads: tuple[str, ...] = (),
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
        plan = prepare(settings, source, policies, out, fmt, observe, reads)
        job = start(settings, source, policies, plan, observe)
    summary = collect(settings, job, out, fmt, progress=progress, timeout=timeout, on_wait=on_wait)
    summary.seconds = time.monotonic() - started
    return summary
