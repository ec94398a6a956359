"""The training loop: LoRA on a Gemma backbone, one of two objectives, read top to bottom.

- `label` (default): the loss is a softmax over the label tokens' logits at each
  row's next-token position, exactly what scoring computes later; no 262k-word
  vocabulary head, so a step costs a fraction. It runs the lean forward
  (`agile.lean`: a LoRA'd layer as x @ W + (x @ A) @ B, so only the LoRA weights'
  gradients are formed) with the prompt head every row shares computed once a
  step, not once a row; keras-hub's layers (`agile.forward.label_logits`) where the
  lean forward cannot run the model, or with `engine="keras"`.
- `causal-lm`: the codelab's objective. The training text is prompt + label +
  <eos>, and the loss is next-token cross-entropy over the whole sequence, as
  keras-hub's `CausalLM.fit` computes it.

Only the LoRA matrices train (float32, updated by torch's Adam); the forward pass
may run under bfloat16 autocast. Batches are shuffled with a fixed seed and padded
to their longest row. With a validation set, every epoch is scored on it and the
epoch with the best validation ROC-AUC is the one kept (early stopping).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agile.backend import use_torch

use_torch()

import keras  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from agile import adapters  # noqa: E402
from agile.lean import LeanForward, lean_unsupported  # noqa: E402
from agile.prompt import PromptTemplate  # noqa: E402
from agile.scoring import label_logits, pad_batch  # noqa: E402
from agile.tokens import PromptTokenizer  # noqa: E402
from agile.trainer.data import Examples  # noqa: E402
from agile.trainer.frozen_store import POOL, FrozenStore, row_key  # noqa: E402
from agile.trainer.settings import TrainSettings  # noqa: E402


@dataclass
class EpochRecord:
    epoch: int
    loss: float  # mean training loss over the epoch's steps
    seconds: float
    steps: int
    validation_roc_auc: float | None = None


@dataclass
class TrainResult:
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0  # the epoch whose weights the model holds now
    seconds_per_step: float = 0.0
    compute_dtype: str = ""  # what the forward pass ran in ("auto" resolved)


def autocast_bfloat16(setting: str, device: torch.device) -> bool:
    """Whether the forward pass runs under bfloat16 autocast.

    "auto" says yes on a GPU and on CPUs with native bfloat16 (AVX512-BF16, AMX), where it
    measured faster than float32; an AVX2-only CPU emulates it: a 256x640 @ 640x2048 matmul
    took 1.9 s in bfloat16 against 12 ms in float32 on this project's 2-core AMD EPYC.
    """
    if setting != "auto":
        return setting == "bfloat16"
    if device.type != "cpu":
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def enable_lora(model, rank: int, target_layers: tuple[str, ...], blocks: int = 0) -> list[torch.nn.Parameter]:
    """Freeze the backbone, add LoRA to the named layers (of the last `blocks` blocks), return the trainable tensors."""
    backbone = model.backbone
    present = {layer.name for layer in backbone._flatten_layers(include_self=False)}
    unknown = sorted(set(target_layers) - present)
    if unknown:
        raise ValueError(f"no layers named {unknown} in this backbone; LoRA targets: {sorted(present)}")
    adapters.enable_lora(backbone, rank, target_layers, blocks)
    params = [v.value for v in backbone.trainable_weights]
    assert params and all("lora_kernel" in v.path for v in backbone.trainable_weights)
    return params


def lora_state(model) -> list[np.ndarray]:
    return [np.array(v.numpy()) for v in model.backbone.trainable_weights]


def set_lora_state(model, state: list[np.ndarray]) -> None:
    for variable, value in zip(model.backbone.trainable_weights, state, strict=True):
        variable.assign(value)


# --- the two objectives: token rows in, scalar loss out ------------------------------------------


def encode_rows(model, template: PromptTemplate, examples: Examples, settings: TrainSettings) -> list[list[int]]:
    """Token rows that fit `max_length`: prompts (label objective) or prompt+label+<eos> (causal-lm).

    For causal-lm the comment is cut to leave room for the label and the end token
    (keras-hub's packer would cut the label off instead).
    """
    tokenizer = PromptTokenizer.from_model(model)
    if settings.objective == "label":
        rows, _ = tokenizer.encode_prompts(template, examples.texts, settings.max_length)
        return rows
    label_ids = tokenizer.label_ids(template.labels)
    eos_id = model.preprocessor.tokenizer.end_token_id
    rows, _ = tokenizer.encode_prompts(template, examples.texts, settings.max_length - 2)
    return [[*r, label_ids[y], eos_id] for r, y in zip(rows, examples.labels, strict=True)]


def label_loss(model, ids, mask, targets, label_ids) -> torch.Tensor:
    logits = label_logits(model, ids, mask, label_ids)
    targets = torch.as_tensor(targets, device=logits.device)  # callers need not know where the model runs
    return torch.nn.functional.cross_entropy(logits.float(), targets)


class LeanLabelLoss:
    """The label objective on the lean forward, over a training run's token rows (a batch is given by
    their indices). Rows that all start with the template's shared prefix run after it, its keys and
    values computed once a step (they depend on the LoRA weights, so with gradients), not once a row.

    With `frozen` blocks (LoRA on the blocks above them only) the rows' and the prefix's hidden states
    after those blocks do not change in training: they are computed once, on the first step, and each
    step runs the LoRA'd blocks alone. They cost rows x tokens x hidden size floats of memory (ETHOS's
    800 rows on the 270M: 23,818 tokens, 58 MiB in float32); with a `store`, rows it holds are read from it
    and the others added to it (kept on disk for the next round). The same loss as `label_loss`."""

    def __init__(self, model, tokenizer: PromptTokenizer, template: PromptTemplate, label_ids: list[int],
                 rows: list[list[int]], frozen: int = 0, share_prefix: bool = True, store: FrozenStore | None = None):
        self.lean = LeanForward(model.backbone)
        prefix = tokenizer.shared_prefix(template) if share_prefix else []
        self.prefix = prefix if prefix and all(r[: len(prefix)] == prefix for r in rows) else []
        self.rows = [r[len(self.prefix) :] for r in rows]
        self.pad_id, self.label_ids, self.frozen, self.store = tokenizer.pad_id, label_ids, frozen, store
        self._below: tuple | None = None  # (prefix hidden states, each row's hidden states) after `frozen`

    def __call__(self, batch, targets, device) -> torch.Tensor:
        logits = self._logits(batch, device)
        targets = torch.as_tensor(targets, device=logits.device)
        return torch.nn.functional.cross_entropy(logits.float(), targets)

    def _logits(self, batch, device) -> torch.Tensor:
        """The label logits of the rows `batch` indexes: from the frozen blocks' output, or the whole model."""
        if self.frozen:
            return self._from_frozen(batch, device)
        caches = self.lean.prefix_cache(self.prefix, device) if self.prefix else None
        ids, mask = self._padded([self.rows[i] for i in batch], device)
        return self.lean.label_logits(ids, mask, self.label_ids, caches)

    @torch.no_grad()
    def probs(self, device, batch: int = 16) -> np.ndarray:
        """Every row's label probabilities (softmax over the label logits: what the scorer gives), rows of
        like length batched together; the frozen blocks' output is reused, so a call runs the LoRA'd blocks."""
        order = np.argsort([len(r) for r in self.rows], kind="stable")
        found = np.zeros((len(self.rows), len(self.label_ids)), dtype=np.float64)
        for start in range(0, len(order), batch):
            part = order[start : start + batch].tolist()
            found[part] = torch.softmax(self._logits(part, device).float(), dim=-1).cpu().numpy()
        return found

    def _padded(self, rows: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(torch.from_numpy(a).to(device) for a in pad_batch(rows, self.pad_id))

    def _from_frozen(self, batch, device) -> torch.Tensor:
        if self._below is None:
            self._below = self._hidden_below(device)
        prefix, hidden = self._below
        caches = self.lean.prefix_cache_from(prefix, self.frozen) if prefix is not None else None
        chosen = [hidden[i] for i in batch]
        x = torch.nn.utils.rnn.pad_sequence(chosen, batch_first=True)
        lengths = torch.tensor([len(h) for h in chosen], device=x.device)
        mask = torch.arange(x.shape[1], device=x.device) < lengths[:, None]
        return self.lean.label_logits(None, mask, self.label_ids, caches, hidden=x, first=self.frozen)

    @torch.no_grad()
    def _hidden_below(self, device, batch: int = 16) -> tuple:
        """The frozen blocks' output for the prefix and for every row (real positions only): from the store
        where it holds the row well enough, else computed, rows of like length batched together.

        A row's name in the store says how it was computed: in the model's dtype (as scoring, validation and
        `agile suggest` compute it), or under bfloat16 autocast (training, where the hardware has it). A run
        under autocast takes either; a run without takes the exact rows only (validation feeds calibration)."""
        kind = torch.device(device).type
        exact = str(self.lean.dtype)
        names = [exact, f"autocast-{torch.get_autocast_dtype(kind)}"] if torch.is_autocast_enabled(kind) else [exact]
        prefix, caches = None, None
        if self.prefix:
            ids = torch.tensor([self.prefix], dtype=torch.int32, device=device)
            prefix, caches = self.lean.hidden_states(ids, torch.ones_like(ids, dtype=torch.bool), self.frozen)
        keys = None
        if self.store is not None:
            keys = [row_key(self.prefix + r) for r in self.rows]
        hidden: list = [None] * len(self.rows)
        if keys is not None:
            for i, key in enumerate(keys):
                found = next((f for f in (self.store.get(f"{key}/{name}") for name in names) if f is not None), None)
                hidden[i] = None if found is None else found.to(device=device, dtype=self.lean.dtype)
        missing = [i for i, h in enumerate(hidden) if h is None]
        order = [missing[j] for j in np.argsort([len(self.rows[i]) for i in missing], kind="stable")]
        for start in range(0, len(order), batch):
            part = order[start : start + batch]
            ids, mask = self._padded([self.rows[i] for i in part], device)
            x, _ = self.lean.hidden_states(ids, mask, self.frozen, caches)
            for j, i in enumerate(part):
                hidden[i] = x[j, : len(self.rows[i])].clone()
                if keys is not None:
                    self.store.put(f"{keys[i]}/{names[-1]}", hidden[i])
        return prefix, hidden


def frozen_blocks(model, settings: TrainSettings) -> int | None:
    """How many blocks below the LoRA'd ones the lean trainer runs once (0: LoRA on every block), or None
    where the lean label path does not run this model and settings."""
    if settings.objective != "label" or settings.engine != "lean" or lean_unsupported(model.backbone) is not None:
        return None
    return blocks_below(model, settings.lora_blocks)


def blocks_below(model, lora_blocks: int) -> int:
    """The blocks under LoRA on the last `lora_blocks` (0: LoRA on every block, so none)."""
    blocks = len(model.backbone.transformer_layers)
    return blocks - lora_blocks if 0 < lora_blocks < blocks else 0


def frozen_store(model, template: PromptTemplate, settings: TrainSettings, home: Path) -> FrozenStore | None:
    """The on-disk store of the frozen blocks' output for this model and prompt (under `home`), or None where
    no blocks are frozen. It reads `agile suggest`'s pool rows too: a round's new rows came from there."""
    frozen = frozen_blocks(model, settings)
    return model_store(model, template, frozen, home, also=POOL) if frozen else None


def model_store(model, template: PromptTemplate, frozen: int, home: Path, **options) -> FrozenStore:
    """The store of this model's `frozen` blocks' output under this prompt head, in `home`/frozen/."""
    prefix = PromptTokenizer.from_model(model).shared_prefix(template)
    return FrozenStore(home / "frozen", model.agile_info.checksum, frozen, prefix, **options)


def frozen_validation(model, template: PromptTemplate, examples: Examples, settings: TrainSettings,
                      store: FrozenStore | None = None) -> Callable[[], np.ndarray] | None:
    """Label probabilities of `examples` on each call, the frozen blocks' output computed on the first
    (with LoRA on the last blocks only, validation every epoch then costs those blocks alone); None where
    there are no frozen blocks. Call it after `train` has added LoRA (from its `validate`)."""
    frozen = frozen_blocks(model, settings)
    if not frozen:
        return None
    held: list[LeanLabelLoss] = []

    def probs() -> np.ndarray:
        if not held:
            tokenizer = PromptTokenizer.from_model(model)
            held.append(LeanLabelLoss(model, tokenizer, template, tokenizer.label_ids(template.labels),
                                      encode_rows(model, template, examples, settings), frozen, store=store))
        return held[0].probs(model.backbone.trainable_weights[0].value.device)

    return probs


def causal_lm_loss(model, ids, mask) -> torch.Tensor:
    """Mean next-token cross-entropy over every real (non-padding) position."""
    logits = model.score(token_ids=ids[:, :-1], padding_mask=mask[:, :-1])
    targets = torch.as_tensor(ids[:, 1:], dtype=torch.long, device=logits.device)
    weights = torch.as_tensor(mask[:, 1:], device=logits.device)
    losses = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
    )
    return (losses * weights.reshape(-1)).sum() / weights.sum()


# --- the loop --------------------------------------------------------------------------------------

BUCKET_BATCHES = 8  # batches of rows drawn together and cut by length


def shuffled_batches(rng: np.random.Generator, widths: np.ndarray, size: int,
                     by_length: bool = True) -> list[np.ndarray]:
    """An epoch's batches: rows in a random order, each run of BUCKET_BATCHES batches' rows sorted by
    length before it is cut, and the batches in a random order. A batch is padded to its longest row,
    so rows of like length together compute about the tokens they have: on ETHOS's 800 training rows
    (the 270M's tokens), positions computed over tokens held are 1.20 / 1.76 / 2.07 for random batches
    of 2 / 8 / 16 and 1.05 / 1.13 / 1.15 sorted (mean of 5 seeds)."""
    order = rng.permutation(len(widths))
    if not by_length:
        return [order[i : i + size] for i in range(0, len(order), size)]
    pool = size * BUCKET_BATCHES
    batches = []
    for start in range(0, len(order), pool):
        part = order[start : start + pool]
        part = part[np.argsort(widths[part], kind="stable")]
        batches += [part[i : i + size] for i in range(0, len(part), size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def train(
    model,
    template: PromptTemplate,
    examples: Examples,
    settings: TrainSettings,
    validate: Callable[[object], float] | None = None,
    on_epoch: Callable[[EpochRecord, object], None] | None = None,
    start=None,
    store: FrozenStore | None = None,
) -> TrainResult:
    """Train LoRA weights on `examples`; returns the per-epoch history.

    `validate(model) -> ROC-AUC` runs after each epoch; with it, the model ends up
    holding the weights of the best epoch. `on_epoch(record, model)` runs after each
    epoch too (the sweep evaluates there instead of retraining per epoch count).
    Runs on whatever device Keras placed the model on (a GPU when torch sees one).
    `start` (an Adapter of the same rank and targets) gives the LoRA weights to continue from;
    `store` keeps the frozen blocks' output for the rows between runs (`frozen_store`).
    """
    examples.check_trainable(settings.batch_size)
    keras.utils.set_random_seed(settings.seed)  # seeds python, numpy, torch: LoRA init + shuffling
    params = enable_lora(model, settings.rank, settings.target_layers, settings.lora_blocks)
    if start is not None:
        from agile.adapters import apply_adapter

        apply_adapter(model, start)
    optimizer = torch.optim.Adam(params, lr=settings.learning_rate)
    tokenizer = PromptTokenizer.from_model(model)
    label_ids = tokenizer.label_ids(template.labels)
    rows = encode_rows(model, template, examples, settings)
    widths = np.array([len(r) for r in rows])
    rng = np.random.default_rng(settings.seed)
    device = params[0].device  # cpu, or cuda where Keras put the model
    autocast = autocast_bfloat16(settings.compute_dtype, device)
    frozen = frozen_blocks(model, settings)
    lean = None if frozen is None else LeanLabelLoss(model, tokenizer, template, label_ids, rows, frozen,
                                                     store=store)

    result = TrainResult(compute_dtype="bfloat16" if autocast else "float32")
    best_auc, best_state, steps_done, step_seconds = -1.0, None, 0, []
    for epoch in range(1, settings.epochs + 1):
        batches = shuffled_batches(rng, widths, settings.batch_size, settings.sort_batches)
        started, losses = time.perf_counter(), []
        bar = tqdm(batches, desc=f"epoch {epoch}/{settings.epochs}", unit="step", leave=False)
        for batch in bar:
            t0 = time.perf_counter()
            chosen = [rows[i] for i in batch]
            targets = torch.as_tensor(examples.labels[batch], dtype=torch.long)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                if lean is not None:
                    loss = lean(batch, targets, device)
                elif settings.objective == "label":
                    loss = label_loss(model, *pad_batch(chosen, tokenizer.pad_id), targets, label_ids)
                else:
                    loss = causal_lm_loss(model, *pad_batch(chosen, tokenizer.pad_id))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            step_seconds.append(time.perf_counter() - t0)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", refresh=False)
            steps_done += 1
            if settings.max_steps and steps_done >= settings.max_steps:
                break
        bar.close()
        record = EpochRecord(epoch, float(np.mean(losses)), time.perf_counter() - started, len(losses))
        if validate is not None:
            record.validation_roc_auc = float(validate(model))
            if record.validation_roc_auc > best_auc:
                best_auc, best_state, result.best_epoch = record.validation_roc_auc, lora_state(model), epoch
        else:
            result.best_epoch = epoch
        result.history.append(record)
        shown = "" if validate is None else f", validation ROC-AUC {record.validation_roc_auc:.4f}"
        print(f"epoch {epoch}: loss {record.loss:.4f}, {record.seconds:.0f} s ({record.steps} steps){shown}")
        if on_epoch is not None:
            on_epoch(record, model)
        if settings.max_steps and steps_done >= settings.max_steps:
            break
        waited = epoch - result.best_epoch
        if validate is not None and settings.patience and waited >= settings.patience and epoch < settings.epochs:
            print(f"stopping: no better validation ROC-AUC for {settings.patience} epoch(s)")
            break

    # Skip the first steps (warm-up: first-call compilation and allocation) when timing.
    warm = step_seconds[min(5, len(step_seconds) - 1) :]
    result.seconds_per_step = float(np.mean(warm))
    if best_state is not None and result.best_epoch != result.history[-1].epoch:
        set_lora_state(model, best_state)
        print(f"kept epoch {result.best_epoch} (best validation ROC-AUC {best_auc:.4f})")
    return result
