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
PAYLOAD_KEYS = ("items", "texts", "job_id", "batch_id", "adapter", "model", "labels", "instructions", "threshold",
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


@dataclass
class BatchRequest:
    """The kwargs of `agile.score_batch`, as columns. `job_id` and `batch_id` go together (write-back).

    A client sends `items` ({id, text} each; replies are keyed by id) or `texts` alone (a job's
    batch: results go back by position, so ids would only be bytes to encode and decode)."""

    texts: list[str]
    ids: list[str] | None = None  # as sent in `items` (string form); None: `texts`, a text's id is its position
    job_id: str | None = None
    batch_id: str | None = None
    adapter: str | None = None  # a plain adapter name; None scores zero-shot with `labels`
    model: str | None = None  # must be the worker's model when given
    labels: list[str] | None = None  # zero-shot only
    instructions: str | None = None  # zero-shot only
    threshold: float | None = None  # with `adapter`: flag at this probability instead of the adapter's
    observe: bool | None = None  # score, flag nothing (for tuning thresholds)
    policies: list[dict] | None = None  # a policy set: [{"adapter", "threshold"?, "if"?}], instead of `adapter`
    problems: dict[int, str] = field(default_factory=dict)  # position -> why this text cannot be scored

    def __len__(self) -> int:
        return len(self.texts)

    def id_of(self, i: int) -> str:
        return self.ids[i] if self.ids is not None else str(i)

    def to_kwargs(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("texts", "ids", "problems")}
        if self.ids is None:
            out = {"texts": list(self.texts), **out}
        else:
            out = {"items": [{"id": i, "text": t} for i, t in zip(self.ids, self.texts, strict=True)], **out}
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
        if ("items" in kwargs) == ("texts" in kwargs):
            raise PayloadError("payload needs 'items' (a list of {'id': ..., 'text': ...}) or 'texts' (a list of "
                               "strings, their ids their positions), one of them")
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
        if "items" in kwargs:
            ids, texts = _items(kwargs["items"])
        else:
            ids, texts = None, _sized(kwargs["texts"], "texts")
        return cls(
            texts=texts, ids=ids, problems=problems_of(texts), job_id=job_id, batch_id=batch_id,
            adapter=kwargs.get("adapter"), model=kwargs.get("model"), labels=labels,
            instructions=kwargs.get("instructions"), threshold=threshold, observe=observe, policies=policies,
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


def _sized(raw, name: str) -> list:
    if not isinstance(raw, list) or not raw:
        raise PayloadError(f"{name} must be a non-empty list, got {type(raw).__name__}")
    if len(raw) > MAX_ITEMS:
        raise PayloadError(f"{name} has {len(raw)} entries; the limit is {MAX_ITEMS} per task")
    return raw


def _items(raw) -> tuple[list[str], list]:
    """(ids in string form, texts) of `items`; a text that is missing or no string is checked later."""
    _sized(raw, "items")
    try:  # what every well-formed task is, checked a column at a time
        ids, texts = [e["id"] for e in raw], [e["text"] for e in raw]
        if set(map(type, ids)) == {str} and all(ids) and len(set(ids)) == len(ids):
            return ids, texts
    except (TypeError, KeyError):
        pass
    ids, texts, seen = [], [], set()
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
        ids.append(key)
        texts.append(entry.get("text", _NO_TEXT))
    return ids, texts


_NO_TEXT = object()  # an item without a "text" key


def problems_of(texts: list) -> dict[int, str]:
    """Why each text that cannot be scored cannot, by position, and "" in its place: over the whole
    list at once (C loops), one text at a time only where one fails."""
    if (set(map(type, texts)) == {str} and all(texts) and not any(map(str.isspace, texts))
            and max(map(len, texts)) <= MAX_TEXT_CHARS and unicode_problem("\n".join(texts)) is None):
        return {}
    problems = {}
    for i, text in enumerate(texts):
        problem = "item has no 'text'" if text is _NO_TEXT else text_problem(text)
        if problem:
            problems[i] = problem
            texts[i] = ""
    return problems


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

    @property
    def wake(self) -> str:  # list: a token per write-back, so a waiting producer wakes at once (BLPOP)
        return self._key("wake")

    def all(self) -> list[str]:
        return [self.meta, self.results, self.done, self.inflight, self.versions, self.deliveries, self.wake]


def task_deliveries_key(prefix: str) -> str:
    """Delivery counts of tasks sent without a job (field = Celery task id)."""
    return f"{prefix}:tasks:deliveries"
