"""What a worker process keeps loaded: one model, and a few policies (adapters) to swap into it.

The model loads once per process. Adapter weights are small, so several policies
stay cached (least recently used goes first) and switching between them is a
weight copy, not a reload. Adapters resolve by name inside the configured
adapter directories only: a task cannot point a worker at any other path.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from agile.adapters import Adapter, adapter_dirs, apply_adapter, clear_adapter, load_adapter, resolve_adapter
from agile.models import load_model, model_info
from agile.prompt import DEFAULT_INSTRUCTIONS, DEFAULT_LABELS, PromptTemplate
from agile.scoring import LabelScorer, Scores, ScoringSettings
from agile.settings import QueueSettings
from agile.wire import PayloadError

log = logging.getLogger("agile.worker")

ZERO_SHOT_MAX_LENGTH = 128


@dataclass
class LoadedPolicy:
    """A scorer ready to run: the template, its adapter (None for zero-shot), the flag rule."""

    name: str  # adapter name, or "zero-shot"
    scorer: LabelScorer
    adapter: Adapter | None
    version: str  # adapter content hash (12 hex), or "none"

    @property
    def labels(self) -> list[str]:
        return list(self.scorer.template.labels)

    @property
    def positive_label(self) -> str | None:
        return self.adapter.meta.positive_label if self.adapter else None

    @property
    def threshold(self) -> float:
        return self.adapter.meta.threshold if self.adapter else 0.5


def adapter_version(path: Path) -> str:
    """A short content hash of the adapter's files: which exact policy scored a comment."""
    digest = hashlib.sha256()
    for name in ("adapter.json", "lora.safetensors"):
        digest.update((path / name).read_bytes())
    return digest.hexdigest()[:12]


class Runtime:
    def __init__(self, settings: QueueSettings):
        self.settings = settings
        self.dirs = adapter_dirs(settings.adapter_path)
        log.info("loading model %s", settings.model)
        self.model = load_model(settings.model)
        self.info = model_info(self.model)
        self._policies: OrderedDict[tuple, LoadedPolicy] = OrderedDict()
        self._applied: str | None = None  # name of the policy whose LoRA weights are in the model

    def check_model(self, requested: str | None) -> None:
        if requested is not None and requested not in (self.settings.model, self.info.spec):
            raise PayloadError(
                f"this worker serves model {self.settings.model!r}, the task asks for {requested!r}; "
                "send it to a queue whose workers run that model"
            )

    def policy(self, adapter: str | None, labels: list[str] | None, instructions: str | None) -> LoadedPolicy:
        key = (adapter,) if adapter else ("zero-shot", tuple(labels or DEFAULT_LABELS), instructions)
        policy = self._policies.get(key)
        if policy is None:
            policy = self._build(adapter, labels, instructions)
            self._policies[key] = policy
            while len(self._policies) > self.settings.adapter_cache:
                self._policies.popitem(last=False)
        self._policies.move_to_end(key)
        return policy

    def _build(self, adapter: str | None, labels: list[str] | None, instructions: str | None) -> LoadedPolicy:
        if adapter:
            found = load_adapter(resolve_adapter(adapter, self.dirs))
            scorer = LabelScorer(
                self.model, found.meta.template,
                ScoringSettings(max_length=found.meta.max_length, batch_size=self.settings.scoring_batch),
            )
            log.info("loaded adapter %s from %s", adapter, found.path)
            return LoadedPolicy(adapter, scorer, found, adapter_version(found.path))
        template = PromptTemplate(tuple(labels or DEFAULT_LABELS), instructions or DEFAULT_INSTRUCTIONS)
        settings = ScoringSettings(max_length=ZERO_SHOT_MAX_LENGTH, batch_size=self.settings.scoring_batch)
        return LoadedPolicy("zero-shot", LabelScorer(self.model, template, settings), None, "none")

    def score(self, policy: LoadedPolicy, texts: list[str]) -> Scores:
        """Score with `policy`'s weights in the model (swapping them in when another policy was last)."""
        if self._applied != policy.name:
            self._applied = None  # a swap that fails half-way leaves no policy in place
            if policy.adapter is not None:
                apply_adapter(self.model, policy.adapter)
            else:
                clear_adapter(self.model)
            self._applied = policy.name
        return policy.scorer.score(texts)


_runtime: Runtime | None = None


def get_runtime(settings: QueueSettings) -> Runtime:
    """This process's runtime, built on first use (or at worker start, see worker.app)."""
    global _runtime
    if _runtime is None:
        _runtime = Runtime(settings)
    return _runtime
