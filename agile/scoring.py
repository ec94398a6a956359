"""Label probabilities for a batch of texts: the one computation the scorer, trainer and worker share.

For each row the label is the next token after `Prediction:`, at position
`sum(padding_mask[row]) - 1` of that row. We run the transformer, take the final
hidden state only at that position, and multiply it only by the label tokens'
embedding rows: two dot products per row instead of 262,144-word logits at every
position. Rows are sorted by length and cut into micro-batches by a token budget
(positions computed, padding included), padded per micro-batch, not to a fixed 128.
On a GPU a call goes in groups of texts, tokenized while the device runs the last group,
with one copy back to the host at the end.
The model-side computation, for each Gemma family, is `agile.forward`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from agile.backend import use_torch

use_torch()

import torch  # noqa: E402
from keras import ops  # noqa: E402

from agile.forward import check_scorable, label_logits, prefix_cache, suffix_label_logits  # noqa: E402
from agile.lean import LeanForward, lean_unsupported  # noqa: E402
from agile.prompt import DEFAULT_MAX_LENGTH, PromptTemplate  # noqa: E402
from agile.tokens import PromptTokenizer  # noqa: E402

# Checked past Gemma 3 270M's 512-token sliding window: keras-hub's next-token logits match HF
# transformers on the same GGUF to 6.5e-5 at 2,047 tokens (bench/bench_long.py, BENCHMARKS.md).
MAX_SUPPORTED_LENGTH = 2048

log = logging.getLogger("agile.scoring")
# Positions per forward pass by device type. CPU: rows decide (batch_size) until a quiet run picks a
# budget; the one shared-CPU run (BENCHMARKS.md section 0) leaned to 2,048 but its rounds overlapped.
# CUDA: a guess of the order a 270M needs to fill an H200, not yet measured (bench/bench_gpu.sh does).
DEFAULT_TOKEN_BUDGET = {"cpu": 0, "cuda": 16384}
# Rows per forward pass by device type. CPU: 16 (BENCHMARKS.md); CUDA: enough rows that the token
# budget, not the row count, bounds a pass (16 rows of ETHOS comments are ~800 positions).
DEFAULT_BATCH_ROWS = {"cpu": 16, "cuda": 512}
# Texts tokenized and launched together. On CUDA a launch returns at once, so the host tokenizes
# group k+1 while the device runs group k; 0 takes the whole call at once (the best length sort),
# the CPU default, where nothing runs beside the host. A group also bounds a pass (256 ETHOS-length
# rows are ~11k positions, under the 16k budget). 256 is unmeasured on a GPU (bench_gpu.sh).
DEFAULT_PIPELINE_ROWS = {"cpu": 0, "cuda": 256}
__all__ = ["LabelScorer", "Scores", "ScoringSettings", "label_logits", "micro_batches", "pad_batch"]


@dataclass(frozen=True)
class ScoringSettings:
    max_length: int = DEFAULT_MAX_LENGTH  # tokens per prompt, BOS included
    batch_size: int | None = None  # at most this many rows per forward pass; None: DEFAULT_BATCH_ROWS
    # Run the prompt head shared by every row (instructions, labels, "Text:") once and
    # reuse its keys/values: a quarter to a third fewer positions per row.
    reuse_prefix: bool = True
    # At most this many positions (rows x padded width) per forward pass; a row longer than
    # the budget goes alone. 0: rows alone decide (batch_size rows per pass); None: the
    # default for the model's device (DEFAULT_TOKEN_BUDGET).
    token_budget: int | None = None
    # "lean": agile.lean's torch forward over the model's own weights (inference only; falls
    # back to keras-hub's when it cannot run the model); "keras": keras-hub's layers.
    engine: str = "lean"
    # Texts per tokenize-and-launch group; 0: all at once; None: DEFAULT_PIPELINE_ROWS for the device.
    pipeline_rows: int | None = None

    def __post_init__(self) -> None:
        if not 16 <= self.max_length <= MAX_SUPPORTED_LENGTH:
            raise ValueError(
                f"max_length must be between 16 and {MAX_SUPPORTED_LENGTH} tokens, "
                f"got {self.max_length}"
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.engine not in ("lean", "keras"):
            raise ValueError(f"engine must be 'lean' or 'keras', got {self.engine!r}")
        if self.token_budget is not None and self.token_budget < 0:
            raise ValueError(f"token_budget must be 0 (off) or positive, got {self.token_budget}")
        if self.pipeline_rows is not None and self.pipeline_rows < 0:
            raise ValueError(f"pipeline_rows must be 0 (off) or positive, got {self.pipeline_rows}")


@dataclass
class Group:
    """Texts of one tokenize-and-launch group: their tokens and the passes that will score them."""

    start: int  # index of the group's first text in the call
    rows: list[list[int]]  # prompt tokens per text
    truncated: np.ndarray  # bool per text
    prefix: list[int]  # the shared prefix the reusing passes start after
    passes: list[tuple[bool, np.ndarray]]  # (reuses the prefix, row indices) per forward pass


@dataclass
class Scores:
    probs: np.ndarray  # float32 [n, n_labels], rows sum to 1
    truncated: np.ndarray  # bool [n]: the comment text was cut to fit max_length
    n_tokens: np.ndarray  # int [n]: prompt tokens actually scored

    def __len__(self) -> int:
        return len(self.probs)


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token rows to the longest one: (token_ids int32, padding_mask bool)."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int32)
    mask = np.zeros((len(rows), width), dtype=bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = True
    return ids, mask


def micro_batches(widths: np.ndarray, max_rows: int, token_budget: int = 0) -> list[np.ndarray]:
    """Row indices per forward pass: shortest first, each pass within `max_rows` and `token_budget`.

    A pass computes rows x its widest row positions; rows of similar width go together.
    """
    order = np.argsort(widths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        end = start + 1
        while end < len(order) and end - start < max_rows and (
            not token_budget or (end - start + 1) * int(widths[order[end]]) <= token_budget
        ):
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


def _device_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """The array on `device`, copied without making the host wait for the device."""
    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


class LabelScorer:
    """Scores texts against a prompt template with a loaded model; build once, call often."""

    def __init__(self, model, template: PromptTemplate, settings: ScoringSettings | None = None):
        check_scorable(model.backbone)
        self.model = model
        self.template = template
        self.settings = settings or ScoringSettings()
        self.tokenizer = PromptTokenizer.from_model(model, threads=torch.get_num_threads())  # as the forward
        self.label_ids = self.tokenizer.label_ids(template.labels)
        self._lean: LeanForward | None = None
        self._said_why = False
        self._prefix = self.tokenizer.shared_prefix(template)  # tokenized once: every group of every call reuses it

    def encode(self, texts: Sequence[str]) -> tuple[list[list[int]], np.ndarray]:
        return self.tokenizer.encode_prompts(self.template, texts, self.settings.max_length)

    def shared_prefix(self) -> list[int]:
        """Tokens every prompt starts with (`PromptTokenizer.shared_prefix`)."""
        return list(self._prefix)

    def plan(self, rows: Sequence[Sequence[int]]) -> tuple[list[int], list[tuple[bool, np.ndarray]]]:
        """(shared prefix, [(reuses it, row indices)] per forward pass): what `score` will compute."""
        prefix = self.shared_prefix() if self.settings.reuse_prefix else []
        cut = np.array([bool(prefix) and r[: len(prefix)] == prefix for r in rows], dtype=bool)
        widths = np.array([len(r) - len(prefix) * c for r, c in zip(rows, cut, strict=True)], dtype=np.int64)
        device = self._device().type
        budget = self.settings.token_budget
        if budget is None:
            budget = DEFAULT_TOKEN_BUDGET.get(device, 0)
        rows_per_pass = self.settings.batch_size or DEFAULT_BATCH_ROWS.get(device, DEFAULT_BATCH_ROWS["cpu"])
        passes = []
        for reuse in (True, False):
            group = np.flatnonzero(cut == reuse)
            passes += [(reuse, group[b]) for b in micro_batches(widths[group], rows_per_pass, budget)]
        return prefix, passes

    def _device(self) -> torch.device:
        return self.model.backbone.token_embedding.embeddings.value.device

    def _engine(self) -> LeanForward | None:
        """The lean forward when the settings ask for it and it can run the model as it is now."""
        if self.settings.engine != "lean":
            return None
        why = lean_unsupported(self.model.backbone)
        if why:
            if self._lean is not None or not self._said_why:
                log.info("scoring with keras-hub's forward: the lean one cannot (%s)", why)
                self._said_why = True
            self._lean = None
            return None
        if self._lean is None:
            self._lean = LeanForward(self.model.backbone)
        return self._lean

    @property
    def uses_lean(self) -> bool:
        """Whether passes run the lean forward now (the benches count its FLOPs by it)."""
        return self._engine() is not None

    def group_size(self, n: int) -> int:
        """Texts per tokenize-and-launch group in a call of `n` texts (all of them when grouping is off)."""
        step = self.settings.pipeline_rows
        if step is None:
            step = DEFAULT_PIPELINE_ROWS.get(self._device().type, 0)
        return step or max(n, 1)

    def groups(self, texts: Sequence[str]) -> Iterator[Group]:
        """`texts` tokenized and planned, group by group, lazily: `run` pulls group k+1 after launching
        group k (on CUDA the host tokenizes while the device runs); a worker that holds a second batch
        takes all of them (`list`) while another batch has the device."""
        step = self.group_size(len(texts))
        for start in range(0, max(len(texts), 1), step):
            rows, cut = self.encode(texts[start : start + step])
            prefix, passes = self.plan(rows)
            yield Group(start, rows, cut, prefix, passes)

    def run(self, groups: Iterable[Group]) -> Scores:
        """Score the groups on the device: one copy back to the host per call, not one per pass."""
        device = self._device()
        lean, backbone = self._engine(), self.model.backbone
        caches, chunks, order, truncated, lengths = None, [], [], [], []
        with torch.inference_mode():
            for group in groups:
                rows, prefix = group.rows, group.prefix
                truncated.append(group.truncated)
                lengths.append(np.array([len(r) for r in rows], dtype=np.int64))
                for reuse, idx in group.passes:
                    batch = [rows[i][len(prefix) :] if reuse else rows[i] for i in idx]
                    ids, mask = (_device_tensor(a, device) for a in pad_batch(batch, self.tokenizer.pad_id))
                    if reuse and caches is None:
                        # Built per call (one short forward pass), so it always matches the current weights.
                        caches = lean.prefix_cache(prefix, device) if lean else prefix_cache(backbone, prefix)
                    if lean:
                        chunks.append(lean.label_logits(ids, mask, self.label_ids, caches if reuse else None))
                    elif reuse:
                        chunks.append(suffix_label_logits(self.model, caches, ids, mask, self.label_ids))
                    else:
                        chunks.append(label_logits(self.model, ids, mask, self.label_ids))
                    order.append(idx + group.start)
            n = sum(len(x) for x in lengths)
            probs = np.zeros((n, len(self.label_ids)), dtype=np.float32)
            if chunks:
                probs[np.concatenate(order)] = ops.convert_to_numpy(
                    ops.softmax(ops.concatenate(chunks, axis=0), axis=-1))
        return Scores(probs=probs, truncated=np.concatenate(truncated), n_tokens=np.concatenate(lengths))

    def score(self, texts: Sequence[str]) -> Scores:
        return self.run(self.groups(texts))
