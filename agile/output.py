"""The output rows of `agile score` and of a queue job: one per input row, in input order.

A run scores its comments under a policy set (one policy is a set of one) and
gets, per batch, each policy's result fields as columns (`Results`: one value
per row, None where a gate kept the policy shut); they become the output's
columns batch by batch, with no dict per comment. Which columns is a writer
choice, made once per run:

- one policy (`one_policy`): id, p_<label>..., prediction, flagged, truncated, model, policy, error
- a set (`per_policy`): id, then p_<policy>, flagged_<policy>, version_<policy> for each policy,
  truncated (any policy's prompt cut), model, error

`id` is the input's id exactly as written (empty when the row had none). A row
that could not be scored keeps its id and says why in `error`, with the score
columns empty. `flagged` is set when the policy has a positive label (adapters);
zero-shot it is empty. docs/QUEUE.md documents the same columns.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa


@dataclass
class Results:
    """One batch's results as columns, exactly one value per row, rows in input order: how a worker
    writes them back and how an output is written, with no dict per comment in between."""

    errors: list[str]  # why each row failed; "" where it was scored
    fields: dict[str, dict[str, list]]  # policy -> field -> one value per row (None where it did not score it)
    scored: dict[str, list[bool]]  # policy -> whether it scored each row

    @classmethod
    def of(cls, n: int, columns: dict[str, tuple[dict[str, list], list[int] | None]],
           errors: dict[int, str]) -> Results:
        """From each policy's (values, rows): `values[field][j]` belongs to row `rows[j]`; rows None:
        to every row not in `errors`, in order (a policy without a gate)."""
        failed = [""] * n
        for i, why in errors.items():
            failed[i] = why
        good = None if not errors else [i for i in range(n) if i not in errors]
        fields: dict[str, dict[str, list]] = {}
        scored: dict[str, list[bool]] = {}
        for name, (values, rows) in columns.items():
            rows = good if rows is None else rows
            if rows is None:  # every row: the columns as they are
                fields[name], scored[name] = dict(values), [True] * n
                continue
            fields[name] = {key: _spread(column, rows, n) for key, column in values.items()}
            mask = [False] * n
            for i in rows:
                mask[i] = True
            scored[name] = mask
        return cls(failed, fields, scored)

    @classmethod
    def failed(cls, n: int, reason: str) -> Results:
        return cls([reason] * n, {}, {})

    def __len__(self) -> int:
        return len(self.errors)

    def rows(self) -> list[dict]:
        """Per row {"error": why}, or {policy: fields, or None where it did not score the row}: one
        comment's answer (HTTP, the service client)."""
        per: dict[str, list[dict | None]] = {}
        for name, fields in self.fields.items():
            keys = list(fields)
            per[name] = [dict(zip(keys, values, strict=True)) if scored else None
                         for scored, *values in zip(self.scored[name], *fields.values(), strict=True)]
        names = list(per)
        return [{"error": why} if why else {name: per[name][i] for name in names}
                for i, why in enumerate(self.errors)]


def _spread(values: list, rows: list[int], n: int) -> list:
    out: list = [None] * n
    for i, v in zip(rows, values, strict=True):
        out[i] = v
    return out


@dataclass(frozen=True)
class Layout:
    """The columns of one run's output, and how a batch's results fill them."""

    policies: tuple[str, ...]  # the set's policy names, in order
    labels: tuple[str, ...] = ()  # one policy: its output names (`p_<label>` columns)
    positive: dict[str, str] = field(default_factory=dict)  # a set: policy -> positive label (p_<policy>)
    versions: dict[str, str] = field(default_factory=dict)  # a set: policy -> adapter version
    name: str = ""  # one policy: its `policy` column (the adapter's own name; the set may key it by path)

    @property
    def single(self) -> bool:
        return bool(self.labels)

    def columns(self, ids: list[str], results: Results, model: str = "") -> dict[str, list]:
        """The output's columns for a batch: one value per row, in the schema's order."""
        n = len(ids)
        if len(results) != n:
            raise ValueError(f"{len(results)} results for {n} rows")
        out: dict[str, list] = {"id": ids}
        if self.single:
            (name,) = self.policies
            fields = results.fields.get(name, {})
            for label in self.labels:
                out[f"p_{label}"] = fields.get(f"p_{label}") or [None] * n
            prediction = fields.get("prediction") or [""] * n
            out["prediction"] = [p or "" for p in prediction] if None in prediction else prediction
            out["flagged"] = fields.get("flagged") or [None] * n
            out["truncated"] = fields.get("truncated") or [None] * n
            out["model"], out["policy"], out["error"] = [model] * n, [self.name] * n, results.errors
            return out
        cut = [False] * n
        for name in self.policies:
            fields, scored = results.fields.get(name, {}), results.scored.get(name) or [False] * n
            out[f"p_{name}"] = fields.get(f"p_{self.positive.get(name, '')}") or [None] * n
            out[f"flagged_{name}"] = fields.get("flagged") or [None] * n
            version = self.versions.get(name, "")
            out[f"version_{name}"] = [version if s else "" for s in scored]
            cut = [c or bool(t) for c, t in zip(cut, fields.get("truncated") or [None] * n, strict=True)]
        out["truncated"] = [None if e else c for c, e in zip(cut, results.errors, strict=True)]
        out["model"], out["error"] = [model] * n, results.errors
        return out

    def count(self, results: Results, into: Counter) -> None:
        """Add what a progress summary counts: each row's prediction, or each policy that flagged it,
        and "failed" for each row that failed."""
        failed = sum(map(bool, results.errors))
        if failed:
            into["failed"] += failed
        if self.single:
            prediction = results.fields.get(self.policies[0], {}).get("prediction")
            if prediction:  # none where the whole batch failed
                into.update(prediction if not failed else
                            (p for p, e in zip(prediction, results.errors, strict=True) if not e))
            return
        for name in self.policies:
            flagged = sum(1 for f in results.fields.get(name, {}).get("flagged") or () if f)
            if flagged:
                into[f"{name} flagged"] += flagged

    def schema(self) -> pa.Schema:
        """Column types for Parquet, fixed up front so a first page of failed rows types nothing wrong."""
        if self.single:
            return pa.schema([("id", pa.string()), *((f"p_{label}", pa.float64()) for label in self.labels),
                              ("prediction", pa.string()), ("flagged", pa.bool_()), ("truncated", pa.bool_()),
                              ("model", pa.string()), ("policy", pa.string()), ("error", pa.string())])
        types = {"p": pa.float64(), "flagged": pa.bool_(), "version": pa.string()}
        return pa.schema([("id", pa.string()),
                          *((f"{c}_{n}", types[c]) for n in self.policies for c in ("p", "flagged", "version")),
                          ("truncated", pa.bool_()), ("model", pa.string()), ("error", pa.string())])


def one_policy(name: str, labels: Sequence[str], key: str | None = None) -> Layout:
    """A run of one policy: its label columns, as outputs have always had them. `key`: the policy's
    name in the results (the entry as given, perhaps a path), when it is not `name`."""
    return Layout((key or name,), tuple(labels), name=name)


def per_policy(positive: dict[str, str], versions: dict[str, str]) -> Layout:
    """A run of a policy set: three columns per policy, named after it."""
    return Layout(tuple(positive), (), dict(positive), dict(versions))
