"""A simulated model for bench_scale.py: bench-only, like vLLM's dummy weights.

Imported into a real worker by `agile worker -- --include sim_model` with
PYTHONPATH=bench (nothing in agile/ or worker/ names it, and no setting reaches
it), it replaces the scorer's device work at import: a batch of n comments holds
the device for n / BENCH_SIM_RATE seconds (a GPU's time for it; 0: no wait, an
infinitely fast model) and returns well-formed Scores (rows summing to 1, no
truncation, a token count per comment). Everything around the model stays real:
Celery, Redis, the payload, the policy and its calibration, the result fields, the
write-back, and the worker's device lock (`Runtime.score`), so a worker holding two
batches overlaps one's CPU work with the other's simulated device time as it would
a GPU's. Tokenizing is left out (no tokens are made): on a GPU host it runs beside
the device on cores of its own (~40-50 µs a prompt on one core here), which this
2-core machine cannot spare for four simulated GPUs.
"""

from __future__ import annotations

import os
import time

import numpy as np

from agile.scoring import LabelScorer, Scores

RATE = float(os.environ.get("BENCH_SIM_RATE", "0"))  # comments per second; 0: no wait
TOKENS = 64  # prompt tokens per comment it reports (the metrics count them)
_rng = np.random.default_rng(0)


def simulated_groups(self: LabelScorer, texts: list[str]) -> list[int]:
    """No tokenizing: one 'group' per call, its size."""
    return [len(texts)]


def simulated_run(self: LabelScorer, groups: list[int]) -> Scores:
    """Hold the device as a `RATE` comments/s model would, then return random, valid scores."""
    n = sum(groups)
    if RATE > 0:
        time.sleep(n / RATE)
    p = _rng.random((n, len(self.label_ids)), dtype=np.float32)
    return Scores(p / p.sum(axis=1, keepdims=True), np.zeros(n, dtype=bool), np.full(n, TOKENS, dtype=np.int64))


LabelScorer.groups = simulated_groups
LabelScorer.run = simulated_run
