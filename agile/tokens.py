"""Prompt tokenization: label token ids, and prompts that fit `max_length` without losing their tail.

keras-hub's packer cuts a long prompt from the end, which drops `Prediction:`
and scores garbage. We cut the comment text instead, keep the template whole,
and report which rows were cut. SentencePiece runs natively (no TensorFlow).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import sentencepiece as spm

from agile.prompt import PromptTemplate

# A token covers at most a few dozen characters; longer text cannot fit anyway,
# and cutting it first keeps a 1 MB comment from costing a 1 MB tokenization.
_CHARS_PER_TOKEN_BOUND = 64


class LabelError(ValueError):
    """A label does not map to exactly one vocabulary token."""


# Below this many texts a batch is encoded on one thread: starting threads costs more than it saves.
_THREADED_FROM = 64


class PromptTokenizer:
    def __init__(self, proto: bytes, bos_id: int | None, pad_id: int, threads: int = 1):
        self.sp = spm.SentencePieceProcessor(model_proto=proto)
        self.bos = [bos_id] if bos_id is not None else []
        self.pad_id = pad_id
        # SentencePiece encodes a batch on this many threads (its C++ pool, outside the GIL). At GPU
        # speed tokenizing is a large share of a task (~40-50 us a prompt on one core here).
        self.threads = max(1, threads)

    @classmethod
    def from_model(cls, model, threads: int = 1) -> PromptTokenizer:
        tokenizer = model.preprocessor.tokenizer
        proto = getattr(tokenizer, "proto", None)
        if not proto:
            raise TypeError(
                f"{type(tokenizer).__name__} is not a SentencePiece tokenizer; "
                "agile scores SentencePiece (Gemma) models"
            )
        # The keras-hub tokenizer knows the special ids (the packer adds BOS with them).
        return cls(proto, getattr(tokenizer, "start_token_id", None), tokenizer.pad_token_id or 0, threads)

    def label_ids(self, labels: Sequence[str]) -> list[int]:
        """One token id per label, or a clear error naming the label that is not one token."""
        ids = []
        for label in labels:
            pieces = self.sp.encode(label)
            token = self.sp.piece_to_id(label)
            if token == self.sp.unk_id() or len(pieces) != 1:
                shown = [self.sp.id_to_piece(p) for p in pieces]
                raise LabelError(
                    f"label {label!r} is not a single token of this model's vocabulary "
                    f"(it splits into {shown}); choose a label word that is one token"
                )
            ids.append(token)
        return ids

    def shared_prefix(self, template: PromptTemplate) -> list[int]:
        """Tokens every prompt of `template` starts with: BOS and the head (instructions, labels, "Text:")
        minus its last token, which may merge with the comment's first characters."""
        return (self.bos + self.encode([template.head])[0])[:-1]

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        threads = self.threads if len(texts) >= _THREADED_FROM else 1
        return self.sp.encode(list(texts), num_threads=threads)

    def encode_prompts(
        self, template: PromptTemplate, texts: Sequence[str], max_length: int
    ) -> tuple[list[list[int]], np.ndarray]:
        """Token rows (BOS first) for each text's prompt, and which rows had their text cut."""
        limit = max_length * _CHARS_PER_TOKEN_BOUND
        clipped = [t[:limit] for t in texts]
        rows = [self.bos + r for r in self.encode([template.prompt(t) for t in clipped])]
        truncated = np.array([len(c) < len(t) for c, t in zip(clipped, texts, strict=True)], dtype=bool)
        for i, row in enumerate(rows):
            if len(row) > max_length:
                rows[i] = self._fit(template, clipped[i], max_length)
                truncated[i] = True
        return rows, truncated

    def _fit(self, template: PromptTemplate, text: str, max_length: int) -> list[int]:
        """Cut the text's tokens until the whole prompt fits (re-encoding merges at the seams)."""
        empty = self.bos + self.sp.encode(template.prompt(""))
        if len(empty) > max_length:
            raise ValueError(
                f"the prompt template alone is {len(empty)} tokens, more than max_length={max_length}; "
                "shorten the instructions or raise max_length"
            )
        text_ids = self.sp.encode(text)
        keep = max_length - len(empty)
        while True:
            row = self.bos + self.sp.encode(template.prompt(self.sp.decode(text_ids[:keep])))
            if len(row) <= max_length:
                return row
            keep = max(keep - (len(row) - max_length), 0)
