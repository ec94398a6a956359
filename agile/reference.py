"""The codelab's way of scoring, kept as the parity oracle for tests and the baseline for benchmarks.

One prompt at a time, padded to the preprocessor's fixed sequence length, the
full-vocabulary logits at every position from `model.score`, then a softmax
over the label tokens at the row's next-token position. Correct but slow.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from agile.backend import use_torch

use_torch()

import torch  # noqa: E402
from keras import ops  # noqa: E402

from agile.prompt import PromptTemplate  # noqa: E402


def compute_output_probability(model, prompt: str, label_ids: Sequence[int]) -> np.ndarray:
    """Label probabilities for one prompt, computed over the full vocabulary."""
    batch = model.preprocessor.generate_preprocess([prompt])
    mask = batch["padding_mask"]
    offset = int(ops.convert_to_numpy(ops.sum(ops.cast(mask, "int32")))) - 1
    with torch.inference_mode():
        logits = model.score(token_ids=batch["token_ids"], padding_mask=mask)[0][offset]
    chosen = ops.take(ops.cast(logits, "float32"), ops.convert_to_tensor(list(label_ids), "int32"))
    return ops.convert_to_numpy(ops.softmax(chosen))


def predict_proba_one_at_a_time(model, template: PromptTemplate, texts: Sequence[str],
                                label_ids: Sequence[int]) -> np.ndarray:
    return np.stack([compute_output_probability(model, template.prompt(t), label_ids) for t in texts])
