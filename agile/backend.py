"""Keras runs on the PyTorch backend here; every entry point calls `use_torch()` first."""

from __future__ import annotations

import os
import sys


class BackendError(RuntimeError):
    """Keras was already imported with a backend other than torch."""


def use_torch() -> None:
    """Select the torch backend before Keras is first imported, or fail clearly."""
    wanted = os.environ.setdefault("KERAS_BACKEND", "torch")
    if wanted != "torch":
        raise BackendError(
            f"KERAS_BACKEND={wanted!r} is set, but this tool runs Keras on the PyTorch backend: "
            "unset KERAS_BACKEND or set it to 'torch'."
        )
    if "keras" in sys.modules:
        import keras

        active = keras.backend.backend()
        if active != "torch":
            raise BackendError(
                f"Keras was already imported with the {active!r} backend; import agile "
                "before keras, or set KERAS_BACKEND=torch."
            )
