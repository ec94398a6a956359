"""What one reading of a job's Redis state says: counts, state, rate and time left, for progress and `agile status`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class JobStatus:
    job_id: str
    meta: dict[str, str]
    done_batches: int
    versions: list[dict] = field(default_factory=list)
    in_flight: int = 0

    def _int(self, key: str) -> int:
        return int(self.meta.get(key) or 0)

    @property
    def exists(self) -> bool:
        return bool(self.meta)

    total_rows = property(lambda self: self._int("total_rows"))
    total_batches = property(lambda self: self._int("total_batches"))
    next_batch = property(lambda self: self._int("next_batch"))
    scored = property(lambda self: self._int("scored"))
    failed = property(lambda self: self._int("failed"))
    duplicates = property(lambda self: self._int("duplicate_ids"))

    @property
    def state(self) -> str:
        state = self.meta.get("status", "")
        if state in ("submitting", "submitted") and self.total_batches and self.done_batches >= self.total_batches:
            return "complete"
        return state

    @property
    def complete(self) -> bool:
        return self.state in ("complete", "delivered")

    @property
    def rows_done(self) -> int:
        return min(self.scored + self.failed, self.total_rows)

    @property
    def rate(self) -> float | None:
        """Comments per second since the job was created."""
        last = float(self.meta.get("last_done_at") or 0)
        span = last - float(self.meta.get("created") or last)
        return self.rows_done / span if span > 0 else None

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far; None once the job is done, delivered or cancelled."""
        if self.state not in ("submitting", "submitted") or not self.rate:
            return None
        return max(0.0, (self.total_rows - self.rows_done) / self.rate)
