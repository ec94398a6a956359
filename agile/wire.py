"""The queue contract both sides share: task name, payload, Redis key layout.

Light on purpose (standard library only): the producer, the service client and
clients in other languages follow it without the model stack. docs/QUEUE.md is
the same contract in prose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields

TASK_NAME = "agile.score_batch"
DEFAULT_QUEUE = "agile"
INTERACTIVE_SUFFIX = ".interactive"  # the lane every worker takes from before the bulk queue
MAX_ITEMS = 1024  # per task: a bigger batch gains nothing on one GPU and lengthens redelivery
MAX_TEXT_CHARS = 200_000  # longer texts are refused; up to this they are scored truncated
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # job and batch ids: safe inside Redis key names
PAYLOAD_KEYS = ("items", "job_id", "batch_id", "adapter", "model", "labels", "instructions", "threshold",
                "observe", "policies")
SET_KEYS = ("adapter", "threshold", "if")  # one entry of `policies`


def lanes(queue: str) -> tuple[str, str]:
    """(interactive, bulk): a fleet's two queues, in the order its workers take from them.

    Requests someone waits on (`agile serve`, or any client that sends to the first name)
    never wait behind a bulk backlog, only behind the batch a worker has in hand.
    """
    return f"{queue}{INTERACTIVE_SUFFIX}", queue


class PayloadError(ValueError):
    """A task payload that cannot be scored at all; the message says which field and why."""


class BatchFailed(RuntimeError):
    """A batch failed or killed its worker on every delivery; its items are marked failed."""


@dataclass(frozen=True)
class Item:
    id: str
    text: str


@dataclass
class BatchRequest:
    """The kwargs of `agile.score_batch`. `job_id` and `batch_id` go together (write-back)."""

    items: list[Item]
    job_id: str | None = None
    batch_id: str | None = None
    adapter: str | None = None  # a plain adapter name; None scores zero-shot with `labels`
    model: str | None = None  # must be the worker's model when given
    labels: list[str] | None = None  # zero-shot only
    instructions: str | None = None  # zero-shot only
    threshold: float | None = None  # with `adapter`: flag at this probability instead of the adapter's
    observe: bool | None = None  # score, flag nothing (for tuning thresholds)
    policies: list[dict] | None = None  # a policy set: [{"adapter", "threshold"?, "if"?}], instead of `adapter`
    problems: dict[str, str] = field(default_factory=dict)  # id -> why this item cannot be scored

    def to_kwargs(self) -> dict:
        # Shallow on purpose: dataclasses.asdict copied every Item recursively, ~10 µs a comment
        # in a producer that sends hundreds of thousands of them.
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("items", "problems")}
        out = {"items": [{"id": i.id, "text": i.text} for i in self.items], **out}
        return {k: v for k, v in out.items() if v is not None}

    @property
    def batch_key(self) -> str | None:
        return f"{self.job_id}/{self.batch_id}" if self.job_id else None

    @classmethod
    def from_task(cls, args: tuple, kwargs: dict) -> BatchRequest:
        """Validate what a (possibly foreign) client sent; structural faults raise PayloadError."""
        if args:
            raise PayloadError(
                f"{TASK_NAME} takes keyword arguments only (kwargs={{'items': [...], ...}}), "
                f"got {len(args)} positional argument(s)"
            )
        unknown = sorted(set(kwargs) - set(PAYLOAD_KEYS))
        if unknown:
            raise PayloadError(f"unknown payload key(s) {unknown}; allowed: {list(PAYLOAD_KEYS)}")
        if "items" not in kwargs:
            raise PayloadError("payload has no 'items' (a list of {'id': ..., 'text': ...})")
        job_id, batch_id = kwargs.get("job_id"), kwargs.get("batch_id")
        for key, value in (("job_id", job_id), ("batch_id", batch_id)):
            if value is not None and not (isinstance(value, str) and NAME.match(value)):
                raise PayloadError(f"{key} must be 1-64 characters of A-Z a-z 0-9 _ . -, got {value!r:.80}")
        if (job_id is None) != (batch_id is None):
            raise PayloadError("job_id and batch_id must be given together")
        for key in ("adapter", "model", "instructions"):
            value = kwargs.get(key)
            if value is not None and not (isinstance(value, str) and value):
                raise PayloadError(f"{key} must be a non-empty string, got {value!r:.80}")
        labels = kwargs.get("labels")
        if labels is not None:
            if kwargs.get("adapter"):
                raise PayloadError("labels are for zero-shot scoring; an adapter brings its own")
            if not (isinstance(labels, list) and len(labels) >= 2
                    and all(isinstance(x, str) for x in labels)):
                raise PayloadError(f"labels must be a list of at least two strings, got {labels!r:.80}")
        threshold, observe = kwargs.get("threshold"), kwargs.get("observe")
        if threshold is not None:
            if not kwargs.get("adapter"):
                raise PayloadError("threshold needs an adapter (zero-shot policies flag nothing)")
            _check_threshold("threshold", threshold)
        if observe is not None and not isinstance(observe, bool):
            raise PayloadError(f"observe must be true or false, got {observe!r:.80}")
        policies = kwargs.get("policies")
        if policies is not None:
            if any(kwargs.get(k) is not None for k in ("adapter", "labels", "instructions", "threshold")):
                raise PayloadError("policies is a policy set: give adapter, labels, instructions and threshold "
                                   "inside its entries, not beside it")
            _check_set(policies)
        items, problems = _items(kwargs["items"])
        return cls(
            items=items, job_id=job_id, batch_id=batch_id, adapter=kwargs.get("adapter"),
            model=kwargs.get("model"), labels=labels, instructions=kwargs.get("instructions"),
            threshold=threshold, observe=observe, policies=policies, problems=problems,
        )


def _check_threshold(where: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise PayloadError(f"{where} must be a number within [0, 1], got {value!r:.80}")


def _check_set(policies) -> None:
    """A policy set: adapters, each named once; an `if` names an earlier entry (its gate)."""
    if not isinstance(policies, list) or not policies:
        raise PayloadError(f"policies must be a non-empty list of {{'adapter': ...}}, got {policies!r:.80}")
    seen: list[str] = []
    for n, entry in enumerate(policies):
        where = f"policies[{n}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("adapter"), str) or not entry["adapter"]:
            raise PayloadError(f"{where} must be an object with an 'adapter' name, got {entry!r:.80}")
        unknown = sorted(set(entry) - set(SET_KEYS))
        if unknown:
            raise PayloadError(f"{where}: unknown key(s) {unknown}; allowed: {list(SET_KEYS)}")
        name = entry["adapter"]
        if name in seen:
            raise PayloadError(f"{where}: policy {name!r} appears twice in the set")
        if entry.get("threshold") is not None:
            _check_threshold(f"{where}.threshold", entry["threshold"])
        gate = entry.get("if")
        if gate is not None and gate not in seen:
            raise PayloadError(f"{where} ({name}): 'if' must name a policy earlier in the set, got {gate!r:.80}")
        seen.append(name)


def _items(raw) -> tuple[list[Item], dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise PayloadError(f"items must be a non-empty list, got {type(raw).__name__}")
    if len(raw) > MAX_ITEMS:
        raise PayloadError(f"items has {len(raw)} entries; the limit is {MAX_ITEMS} per task")
    items: list[Item] = []
    problems: dict[str, str] = {}
    seen: set[str] = set()
    for n, entry in enumerate(raw):
        if not isinstance(entry, dict) or "id" not in entry:
            raise PayloadError(f"items[{n}] must be an object with 'id' and 'text', got {entry!r:.80}")
        key = entry["id"]
        if isinstance(key, bool) or not isinstance(key, (str, int)) or key == "":
            raise PayloadError(f"items[{n}].id must be a non-empty string or an integer, got {key!r:.80}")
        key = str(key)
        if key in seen:
            raise PayloadError(f"items[{n}].id {key!r} appears twice in this task")
        seen.add(key)
        text = entry.get("text")
        problem = text_problem(text) if "text" in entry else "item has no 'text'"
        if problem:
            problems[key] = problem
            text = ""
        items.append(Item(key, text))
    return items, problems


def text_problem(text) -> str | None:
    """Why this text cannot be scored, or None. Producers call it too, to fail rows early."""
    if not isinstance(text, str):
        return f"text must be a string, got {type(text).__name__}"
    if not text.strip():
        return "text is empty"
    if len(text) > MAX_TEXT_CHARS:
        return f"text has {len(text):,} characters; the limit is {MAX_TEXT_CHARS:,}"
    problem = unicode_problem(text)
    return f"text is {problem}" if problem else None


def unicode_problem(value: str) -> str | None:
    """Why `value` cannot be written as UTF-8, or None: JSON's `"\\ud800"` decodes to an unpaired
    surrogate, which no reply, log line or task message can carry."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"not valid UTF-8 (unpaired surrogate at character {exc.start})"
    return None


@dataclass(frozen=True)
class JobKeys:
    """Where a job lives in Redis. Every write is keyed, so repeating one changes nothing."""

    prefix: str
    job_id: str

    def _key(self, name: str) -> str:
        # The braces are a Redis Cluster hash tag: all of a job's keys share one slot,
        # so the write-back script may touch them together.
        return f"{self.prefix}:job:{{{self.job_id}}}:{name}"

    @property
    def meta(self) -> str:  # hash: the job itself (source, policies, totals, state) and its counters
        return self._key("meta")

    @property
    def results(self) -> str:  # hash: batch id -> JSON record of that batch's rows, in item order
        return self._key("results")

    @property
    def done(self) -> str:  # set: batch ids written back (scored or failed), the exactly-once guard
        return self._key("done")

    @property
    def inflight(self) -> str:  # hash: batch id -> payload bytes, from send until written back
        return self._key("inflight")

    @property
    def versions(self) -> str:  # set: JSON {model, model_checksum, adapter, adapter_version} seen
        return self._key("versions")

    @property
    def deliveries(self) -> str:  # hash: batch id -> deliveries so far (poison cap); "<id>:error"
        return self._key("deliveries")

    def all(self) -> list[str]:
        return [self.meta, self.results, self.done, self.inflight, self.versions, self.deliveries]


def task_deliveries_key(prefix: str) -> str:
    """Delivery counts of tasks sent without a job (field = Celery task id)."""
    return f"{prefix}:tasks:deliveries"
