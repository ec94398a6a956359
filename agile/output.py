"""The output rows of `agile score` and of a queue job: one per input row, in input order.

A run scores its comments under a policy set (one policy is a set of one) and
gets, per comment, {policy: result fields, or None where a gate kept it shut}.
How that becomes columns is a writer choice, made once per run:

- one policy (`one_policy`): id, p_<label>..., prediction, flagged, truncated, model, policy, error
- a set (`per_policy`): id, then p_<policy>, flagged_<policy>, version_<policy> for each policy,
  truncated (any policy's prompt cut), model, error

`id` is the input's id exactly as written (empty when the row had none). A row
that could not be scored keeps its id and says why in `error`, with the score
columns empty. `flagged` is set when the policy has a positive label (adapters);
zero-shot it is empty. docs/QUEUE.md documents the same columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa


@dataclass(frozen=True)
class Layout:
    """The columns of one run's output, and how a comment's per-policy results fill them."""

    policies: tuple[str, ...]  # the set's policy names, in order
    labels: tuple[str, ...] = ()  # one policy: its output names (`p_<label>` columns)
    positive: dict[str, str] = field(default_factory=dict)  # a set: policy -> positive label (p_<policy>)
    versions: dict[str, str] = field(default_factory=dict)  # a set: policy -> adapter version
    name: str = ""  # one policy: its `policy` column (the adapter's own name; the set may key it by path)

    @property
    def single(self) -> bool:
        return bool(self.labels)

    def row(self, row_id: str, result: dict | None, model: str = "", error: str = "") -> dict:
        """One output row; `result` is {policy: fields or None}, None when the row failed."""
        out: dict = {"id": row_id}
        if self.single:
            (name,) = self.policies
            fields = (result or {}).get(name) or {}
            for label in self.labels:
                out[f"p_{label}"] = fields.get(f"p_{label}")
            out["prediction"] = fields.get("prediction", "")
            out["flagged"] = fields.get("flagged")
            out["truncated"] = fields.get("truncated")
            out["model"], out["policy"], out["error"] = model, self.name, error
            return out
        cut = False
        for name in self.policies:
            fields = (result or {}).get(name)
            out[f"p_{name}"] = fields.get(f"p_{self.positive[name]}") if fields else None
            out[f"flagged_{name}"] = fields.get("flagged") if fields else None
            out[f"version_{name}"] = self.versions.get(name, "") if fields else ""
            cut = cut or bool(fields and fields.get("truncated"))
        out["truncated"] = None if result is None else cut
        out["model"], out["error"] = model, error
        return out

    def counted(self, result: dict | None) -> list[str]:
        """What a progress summary counts for this comment: its prediction, or each policy that flagged it."""
        if result is None:
            return []
        if self.single:
            return [(result.get(self.policies[0]) or {}).get("prediction", "")]
        return [f"{name} flagged" for name in self.policies if (result.get(name) or {}).get("flagged")]

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
