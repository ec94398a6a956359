"""The one output row of `agile score` and of a queue job, one per input row, in input order.

    id, p_<label>..., prediction, flagged, truncated, model, policy, error

`id` is the input's id exactly as written (empty when the row had none). A row
that could not be scored keeps its id and says why in `error`, with the score
columns empty. `flagged` is set when the policy has a positive label (adapters);
zero-shot it is empty. docs/QUEUE.md documents the same columns.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

TAIL = ("prediction", "flagged", "truncated", "model", "policy", "error")


def columns(labels: Sequence[str]) -> list[str]:
    return ["id", *(f"p_{label}" for label in labels), *TAIL]


def row(labels: Sequence[str], row_id: str, fields: dict | None, model: str = "", policy: str = "",
        error: str = "") -> dict:
    """One output row; `fields` are a scored comment's result fields, None when it failed."""
    fields = fields or {}
    out: dict = {"id": row_id}
    for label in labels:
        out[f"p_{label}"] = fields.get(f"p_{label}")
    out["prediction"] = fields.get("prediction", "")
    out["flagged"] = fields.get("flagged")
    out["truncated"] = fields.get("truncated")
    out["model"], out["policy"], out["error"] = model, policy, error
    return out


def arrow_schema(labels: Sequence[str]) -> pa.Schema:
    """Column types for Parquet, fixed up front so a first page of failed rows types nothing wrong."""
    return pa.schema([("id", pa.string()), *((f"p_{label}", pa.float64()) for label in labels),
                      ("prediction", pa.string()), ("flagged", pa.bool_()), ("truncated", pa.bool_()),
                      ("model", pa.string()), ("policy", pa.string()), ("error", pa.string())])
