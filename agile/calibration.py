"""Calibration: a monotone map from an adapter's raw p(positive label) to a probability that means it.

A LoRA adapter trained to low loss on a few hundred rows says 1.0 or 0.0 for many
comments, so a threshold like 0.8 means little. A calibration fitted on the
adapter's validation rows (`agile calibrate`, or `agile train` itself) is stored in
`adapter.json` and applied in one place, `Policy.fields`, so `agile score`, the
workers and reports serve the same numbers. An adapter without one is served as it
is (identity). Light on purpose (numpy only): the workers import it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

METHODS = ("identity", "temperature", "platt", "isotonic")
AUTO = "auto"  # never stored: the trainer picks one of METHODS on the validation rows (trainer/calibrate.py)
# Probabilities are clipped this far from 0 and 1 before taking their logit:
# float32 softmax returns exactly 1.0 for confident rows.
EPS = 1e-7


class CalibrationError(ValueError):
    """A stored calibration is malformed."""


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))  # no overflow at large |z|


@dataclass(frozen=True)
class Calibration:
    """p' = sigmoid(a * logit(p) + b) (temperature: b = 0, a = 1/T), or isotonic knots.

    `a` > 0 and increasing knots keep it monotone: the ranking of comments (ROC-AUC)
    never changes, only what the numbers mean.
    """

    method: str = "identity"
    a: float = 1.0
    b: float = 0.0
    knots_x: tuple[float, ...] = ()  # isotonic: p' is the piecewise-linear curve through these
    knots_y: tuple[float, ...] = ()
    fitted_on: str = ""  # which rows it was fitted on, e.g. "ethos-train validation (20%, seed 1234)"
    rows: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "knots_x", tuple(float(x) for x in self.knots_x))
        object.__setattr__(self, "knots_y", tuple(float(y) for y in self.knots_y))
        if self.method not in METHODS:
            raise CalibrationError(f"calibration method must be one of {METHODS}, got {self.method!r}")
        if not (np.isfinite(self.a) and np.isfinite(self.b)) or self.a <= 0:
            raise CalibrationError(f"calibration needs a finite slope a > 0 and a finite b, got {self.a}, {self.b}")
        if self.method == "temperature" and self.b != 0:
            raise CalibrationError("temperature scaling has no intercept (b must be 0)")
        if self.method == "isotonic":
            x, y = np.array(self.knots_x), np.array(self.knots_y)
            if len(x) < 2 or len(x) != len(y):
                raise CalibrationError("isotonic calibration needs at least two (x, y) knots of equal count")
            if np.any(np.diff(x) <= 0) or np.any(np.diff(y) < 0) or y.min() < 0 or y.max() > 1:
                raise CalibrationError("isotonic knots must rise in x, not fall in y, and lie in [0, 1]")

    @property
    def is_identity(self) -> bool:
        return self.method == "identity"

    def positive(self, p) -> np.ndarray:
        """Calibrated p(positive) for raw p(positive), elementwise."""
        p = np.asarray(p, dtype=np.float64)
        if self.method == "identity":
            return p
        if self.method == "isotonic":
            return np.interp(p, self.knots_x, self.knots_y)
        return sigmoid(self.a * logit(p) + self.b)

    def apply(self, probs, positive: int) -> np.ndarray:
        """Label probabilities (`[k]` or `[n, k]`) with p(positive) calibrated and the rest
        rescaled to keep their proportions and sum to 1 with it."""
        probs = np.asarray(probs, dtype=np.float64)
        if self.is_identity:
            return probs
        raw = probs[..., positive]
        calibrated = self.positive(raw)
        rest = 1.0 - raw
        scale = np.divide(1.0 - calibrated, rest, out=np.zeros_like(rest), where=rest > 0)
        shared = (1.0 - calibrated) / (probs.shape[-1] - 1)  # the other labels had no mass to rescale
        out = np.where((rest > 0)[..., None], probs * scale[..., None], shared[..., None])
        out[..., positive] = calibrated
        return out

    def to_json(self) -> dict:
        """The dict stored as `calibration` in adapter.json ({} for identity)."""
        if self.is_identity:
            return {}
        found = asdict(self)
        found["knots_x"], found["knots_y"] = list(self.knots_x), list(self.knots_y)
        return found

    @classmethod
    def from_json(cls, data: dict | None, where: str) -> Calibration:
        if not data:
            return IDENTITY
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise CalibrationError(f"{where}: unknown calibration keys {unknown}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise CalibrationError(f"{where}: bad calibration: {exc}") from exc


IDENTITY = Calibration()


def expected_calibration_error(y_true, p, bins: int = 10) -> float:
    """ECE of p(positive): |share positive - mean p| per equal-width bin, weighted by the bin's rows."""
    y_true, p = np.asarray(y_true, dtype=np.float64), np.asarray(p, dtype=np.float64)
    if len(p) == 0:
        raise ValueError("no rows to measure calibration on")
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.sum() * abs(y_true[inside].mean() - p[inside].mean())
    return float(total / len(p))
