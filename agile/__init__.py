"""agile: moderation with agile classifiers (a LoRA-tuned Gemma scoring label tokens).

Importing `agile` is light: the model stack (Keras on PyTorch) loads only when a
name that needs it is first used, so the producer can import `agile.wire` and
`agile.tables` without torch.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "AgileClassifier": "agile.classifier",
    "PromptTemplate": "agile.prompt",
    "LabelScorer": "agile.scoring",
    "ScoringSettings": "agile.scoring",
    "load_model": "agile.models",
    "load_adapter": "agile.adapters",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'agile' has no attribute {name!r}")
