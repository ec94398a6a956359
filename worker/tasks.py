"""`agile.score_batch`: unpack, score with the foundation's batched scorer, write back.

Errors are sorted by what a retry could change. A bad payload, an unknown adapter
or another model can never succeed: the task fails at once, with the reason, and
a job's items are marked failed, so the job still ends (fail closed: whenever the
payload names its job and batch, even if nothing else in it parses). Anything
else is retried until the batch has been delivered AGILE_MAX_DELIVERIES times; a
batch that kills its worker is counted the same way, on its next delivery, so a
poison batch cannot loop. A batch of a job already delivered or cancelled is
dropped without writing anything. A worker holding two batches (AGILE_TASKS_IN_HAND)
counts a redelivered batch only once it runs alone (agile.worker.overlap).
"""

from __future__ import annotations

import logging
import threading
import time

from celery.exceptions import Reject
from redis.exceptions import RedisError

from agile.adapters import AdapterError
from agile.policy import ZERO_SHOT
from agile.policy_set import SetEntry, score_set, set_results
from agile.tokens import LabelError
from agile.wire import NAME, TASK_NAME, BatchFailed, BatchRequest, PayloadError
from agile.worker import metrics
from agile.worker.app import app, settings
from agile.worker.overlap import Turns
from agile.worker.store import Store

log = logging.getLogger("agile.worker")
PERMANENT = (PayloadError, AdapterError, LabelError, BatchFailed)
_store: Store | None = None
_store_made = threading.Lock()
turns = Turns()


def store() -> Store:
    global _store
    with _store_made:
        if _store is None:
            _store = Store(settings())
        return _store


@app.task(name=TASK_NAME, bind=True, throws=PERMANENT)
def score_batch(self, *args, **kwargs) -> dict:
    try:
        req = BatchRequest.from_task(args, kwargs)
    except PayloadError as exc:
        metrics.ERRORS.labels("payload").inc()
        refuse(kwargs, str(exc))
        raise
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    with turns.turn(alone=redelivered):  # before its delivery is counted
        return deliver(self.request.id, req)


def deliver(task_id: str, req: BatchRequest) -> dict:
    """Count this delivery, then score and write back, fail the batch, or put it back on the queue."""
    ids = ids_of(req)
    try:
        delivery = store().begin(req, task_id)
    except RedisError as exc:  # still down after retrying: back on the queue, never dropped
        raise Reject(f"Redis: {exc}", requeue=True) from exc
    if delivery.gone:
        log.info("batch %s: its job was delivered, cancelled or is not in Redis; nothing written", req.batch_key,
                 extra=ids)
        return {**ids, "gone": True}
    if delivery.already_done:
        log.info("batch %s already written back; delivery %d ignored", req.batch_key, delivery.count,
                 extra={**ids, "delivery": delivery.count})
        return {**ids, "duplicate": True}
    if delivery.count > settings().max_deliveries:
        reason = (f"gave up after {delivery.count - 1} deliveries: "
                  f"{delivery.last_error or 'the worker died while scoring this batch'}")
        metrics.ERRORS.labels("poison").inc()
        fail_all(req, task_id, reason)
        raise BatchFailed(reason)
    try:
        return score(req, task_id)
    except PERMANENT as exc:
        metrics.ERRORS.labels("adapter" if isinstance(exc, AdapterError) else "payload").inc()
        fail_all(req, task_id, str(exc))
        raise
    except Exception as exc:
        metrics.ERRORS.labels("worker").inc()
        reason = f"{type(exc).__name__}: {exc}"
        log.exception("batch %s failed on delivery %d", req.batch_key or "(no job)", delivery.count,
                      extra={**ids, "delivery": delivery.count, "kind": "worker"})
        store().record_error(req, task_id, reason[:1000])
        if delivery.count >= settings().max_deliveries:
            fail_all(req, task_id, f"gave up after {delivery.count} deliveries: {reason}")
            raise BatchFailed(reason) from exc
        raise Reject(reason, requeue=True) from exc  # back on the queue as it is: no ETA message on Redis


def score(req: BatchRequest, task_id: str) -> dict:
    """Every request is a policy set: a plain `adapter` (or zero-shot `labels`) is a set of one."""
    from agile.worker.runtime import get_runtime

    runtime = get_runtime(settings())
    runtime.check_model(req.model)
    entries = ([SetEntry.from_wire(e) for e in req.policies] if req.policies
               else [SetEntry(req.adapter or ZERO_SHOT, req.threshold)])

    def policy_of(name: str):
        try:
            return runtime.policy(name, None, None) if req.policies or req.adapter else runtime.policy(
                None, req.labels, req.instructions)
        except ValueError as exc:  # PromptTemplate's own checks on zero-shot labels
            if isinstance(exc, PERMANENT):
                raise
            raise PayloadError(str(exc)) from exc

    tokens = 0

    def scored(policy, texts):
        nonlocal tokens
        metrics.ADAPTERS.labels(policy.name, policy.version).set(1)
        out = runtime.score(policy, texts)
        tokens += int(out.n_tokens.sum())
        return out

    todo = [i for i in range(len(req)) if i not in req.problems] if req.problems else list(range(len(req)))
    texts = [req.texts[i] for i in todo] if req.problems else req.texts
    start = time.perf_counter()
    columns, used = score_set(entries, policy_of, scored, texts, bool(req.observe))
    seconds = time.perf_counter() - start
    store().finish(req, task_id, columns, todo, runtime.info, used)
    done(req, "+".join(p.name for p in used.values()), len(todo), tokens, seconds)
    if req.job_id:
        return {**ids_of(req), "scored": len(todo), "failed": len(req.problems)}
    results = set_results(columns, len(req), todo, req.problems).rows()  # one per item, in item order
    ids = [req.id_of(i) for i in range(len(req))]
    model = {"model": runtime.info.spec, "model_checksum": runtime.info.checksum}
    if req.policies:
        return {**model, "versions": {k: p.version for k, p in used.items()},
                "positive_labels": {k: p.positive_name for k, p in used.items()},
                "results": dict(zip(ids, results, strict=True))}
    # One policy: its fields per comment. positive_label / threshold say what `flagged` means, so a
    # client can read the policy's score (p_<positive_label>) without knowing the adapter; null for zero-shot.
    ((key, policy),) = used.items()
    return {**model, "adapter": req.adapter, "adapter_version": policy.version, "labels": policy.names,
            "positive_label": policy.positive_name, "threshold": policy.threshold if policy.positive_label else None,
            "results": {i: r if "error" in r else r[key] for i, r in zip(ids, results, strict=True)}}


def done(req: BatchRequest, name: str, scored: int, tokens: int, seconds: float) -> None:
    metrics.batch_done(name, scored, len(req.problems), tokens, seconds)
    log.info("batch %s: %d scored, %d failed in %.3f s", req.batch_key or "(no job)", scored,
             len(req.problems), seconds,
             extra={**ids_of(req), "scored": scored, "failed": len(req.problems),
                    "seconds": round(seconds, 4), "adapter": name})
    if seconds > settings().visibility_timeout / 2:
        log.warning("a batch took %.0f s, over half the visibility timeout (%d s): raise "
                    "AGILE_VISIBILITY_TIMEOUT or lower AGILE_BATCH_SIZE, or batches will be delivered twice",
                    seconds, settings().visibility_timeout)


def fail_all(req: BatchRequest, task_id: str, reason: str) -> None:
    """Mark every item of the batch failed with `reason` (the job still completes)."""
    store().fail(req, task_id, reason)
    metrics.FAILED.labels(req.adapter or ("policy-set" if req.policies else "zero-shot")).inc(len(req))
    log.warning("batch %s: %d items failed: %s", req.batch_key or "(no job)", len(req), reason,
                extra={**ids_of(req), "failed": len(req)})


def refuse(kwargs: dict, reason: str) -> None:
    """A refused payload that names its job and batch fails that batch's rows, so the job still ends."""
    job_id, batch_id = kwargs.get("job_id"), kwargs.get("batch_id")
    if not all(isinstance(v, str) and NAME.match(v) for v in (job_id, batch_id)):
        return
    items = kwargs.get("items", kwargs.get("texts"))
    n = len(items) if isinstance(items, list) else 0
    store().refuse(job_id, batch_id, n, f"payload refused: {reason}")
    log.warning("batch %s/%s refused (%d items failed): %s", job_id, batch_id, n, reason,
                extra={"job_id": job_id, "batch_id": batch_id, "failed": n})


def ids_of(req: BatchRequest) -> dict:
    return {"job_id": req.job_id, "batch_id": req.batch_id}
