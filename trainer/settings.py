"""Training settings: the codelab's values are the defaults, each one a flag of `agile train`.

Light on purpose (no torch or keras), so building the `agile` command line costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from agile.prompt import DEFAULT_MAX_LENGTH

OBJECTIVES = ("label", "causal-lm")
CODELAB_TARGETS = ("query", "value")  # keras-hub's default LoRA layers for Gemma 3
ALL_TARGETS = ("query", "key", "value", "attention_output", "ffw_gating", "ffw_gating_2", "ffw_linear")
COMPUTE_DTYPES = ("auto", "bfloat16", "float32")


@dataclass(frozen=True)
class TrainSettings:
    """The codelab's settings are the defaults; each is a flag of `agile train`."""

    objective: str = "label"
    rank: int = 4
    learning_rate: float = 5e-4
    batch_size: int = 2
    max_length: int = DEFAULT_MAX_LENGTH
    epochs: int = 4
    seed: int = 1234  # the codelab's keras.utils.set_random_seed(1234)
    target_layers: tuple[str, ...] = CODELAB_TARGETS
    # The forward pass's dtype; LoRA weights stay float32. "auto": bfloat16 autocast where the hardware
    # has it (a GPU, or a CPU with AVX512-BF16 / AMX), float32 elsewhere (see train.autocast_bfloat16).
    compute_dtype: str = "auto"
    patience: int = 0  # with validation: stop after this many epochs without a better ROC-AUC (0 = off)
    max_steps: int = 0  # stop after this many steps in all (0 = no limit); for timing runs
    # The label objective's forward: "lean" (agile.lean with its low-rank LoRA path, the shared prompt head
    # run once a step; keras-hub's layers where it cannot run the model) or "keras" (keras-hub's layers).
    engine: str = "lean"
    sort_batches: bool = True  # rows of like length batched together (False: random batches, as before)
    # LoRA on the last N decoder blocks only (0: every block). The blocks below are the base model's, so the
    # lean trainer runs them once a row a training run, not once a step (see train.LeanLabelLoss).
    lora_blocks: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_layers", tuple(self.target_layers))
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.engine not in ("lean", "keras"):
            raise ValueError(f"engine must be 'lean' or 'keras', got {self.engine!r}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute dtype must be one of {COMPUTE_DTYPES}, got {self.compute_dtype!r}")
        for name in ("rank", "batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lora_blocks < 0:
            raise ValueError(f"lora_blocks must be 0 (every block) or more, got {self.lora_blocks}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning rate must be positive, got {self.learning_rate}")
        if not self.target_layers:
            raise ValueError("name at least one LoRA target layer")


# `agile train --quick`: a round of the agile loop in about a minute on a 2-core CPU (docs/TRAINING.md, "How
# long a round takes"). LoRA on every projection of the last 6 blocks (the 12 below run once a training);
# batches of 4, which match batch 2 on ethos-hate's validation rows (0.876 against 0.873; batch 16: 0.862)
# at an epoch's cost a row between the two; Adam 4e-4, chosen on those rows (0.874 at 2e-4); at most 3
# epochs, stopping after one without a better validation ROC-AUC.
QUICK = TrainSettings(learning_rate=4e-4, batch_size=4, epochs=3, patience=1, target_layers=ALL_TARGETS,
                      lora_blocks=6)
