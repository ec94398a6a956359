"""A simulated model for bench_scale.py: bench-only, like vLLM's dummy weights.

Imported into a real worker by `agile worker -- --include sim_model` with
PYTHONPATH=bench (nothing in agile/ or worker/ names it, and no setting reaches
it), it replaces `agile.worker.runtime.Runtime.score` at import: a batch of n
comments sleeps n / BENCH_SIM_RATE seconds (a GPU's time for it; 0: no sleep, an
infinitely fast model) and returns well-formed Scores (rows summing to 1, no
truncation, a token count per comment). Everything around the model stays real:
Celery, Redis, the payload, the policy and its calibration, the result fields, the
write-back. Tokenisation is part of what the sleep stands for: the model's time.
"""

from __future__ import annotations

import os
import time

import numpy as np

from agile.policy import Policy
from agile.scoring import Scores
from agile.worker.runtime import Runtime

RATE = float(os.environ.get("BENCH_SIM_RATE", "0"))  # comments per second; 0: no sleep
TOKENS = 64  # prompt tokens per comment it reports (the metrics count them)
_rng = np.random.default_rng(0)


def simulated_score(self: Runtime, policy: Policy, texts: list[str]) -> Scores:
    """Sleep for the batch as a `RATE` comments/s model would, then return random, valid scores."""
    n = len(texts)
    if RATE > 0:
        time.sleep(n / RATE)
    p = _rng.random((n, len(policy.labels)), dtype=np.float32)
    return Scores(p / p.sum(axis=1, keepdims=True), np.zeros(n, dtype=bool), np.full(n, TOKENS, dtype=np.int64))


Runtime.score = simulated_score
