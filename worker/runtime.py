"""What a worker process keeps loaded: one model, and a few policies (adapters) to swap into it.

The model loads once per process. Adapter weights are small, so several policies
stay cached (least recently used goes first) and switching between them is a
weight copy, not a reload: the active one is merged into the base kernels (any rank
and targets may follow any other), the base kernels are restored exactly between.
Adapters resolve by name inside the configured adapter directories only: a task
cannot point a worker at any other path.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

from agile.adapters import adapter_dirs, load_adapter, merge_adapter, resolve_adapter, unmerge_adapter
from agile.models import load_model, model_info
from agile.policy import Policy
from agile.prompt import DEFAULT_INSTRUCTIONS, DEFAULT_LABELS, PromptTemplate
from agile.scoring import LabelScorer, Scores, ScoringSettings
from agile.settings import QueueSettings
from agile.wire import PayloadError

log = logging.getLogger("agile.worker")


class Runtime:
    def __init__(self, settings: QueueSettings):
        self.settings = settings
        self.dirs = adapter_dirs(settings.adapter_path)
        log.info("loading model %s", settings.model)
        self.model = load_model(settings.model)
        self.info = model_info(self.model)
        self._policies: OrderedDict[tuple, Policy] = OrderedDict()
        self._scorers: dict[Policy, LabelScorer] = {}  # one per cached policy
        self._applied: str | None = None  # version of the adapter whose LoRA weights are in the model

    @property
    def device(self) -> str:
        """Where the model's weights are: 'cpu' or 'cuda' (what producers size their tasks by)."""
        return self.model.backbone.token_embedding.embeddings.value.device.type

    def check_model(self, requested: str | None) -> None:
        if requested is not None and requested not in (self.settings.model, self.info.spec):
            raise PayloadError(
                f"this worker serves model {self.settings.model!r}, the task asks for {requested!r}; "
                "send it to a queue whose workers run that model"
            )

    def policy(self, adapter: str | None, labels: list[str] | None, instructions: str | None) -> Policy:
        # An adapter's key holds its files' stamps: one retrained under the same name is loaded afresh.
        key = (adapter, _stamp(resolve_adapter(adapter, self.dirs))) if adapter else (
            "zero-shot", tuple(labels or DEFAULT_LABELS), instructions)
        policy = self._policies.get(key)
        if policy is None:
            policy = self._build(adapter, labels, instructions)
            scorer = LabelScorer(  # may refuse the labels: then nothing half-made stays cached
                self.model, policy.template,
                ScoringSettings(max_length=policy.max_length, batch_size=self.settings.scoring_batch or None),
            )
            self._policies[key] = policy
            self._scorers[policy] = scorer
            while len(self._policies) > self.settings.adapter_cache:
                self._scorers.pop(self._policies.popitem(last=False)[1], None)
        self._policies.move_to_end(key)
        return policy

    def _build(self, adapter: str | None, labels: list[str] | None, instructions: str | None) -> Policy:
        if adapter:
            found = load_adapter(resolve_adapter(adapter, self.dirs))
            log.info("loaded adapter %s from %s", adapter, found.path)
            return Policy.from_adapter(found)
        return Policy(PromptTemplate(tuple(labels or DEFAULT_LABELS), instructions or DEFAULT_INSTRUCTIONS))

    def score(self, policy: Policy, texts: list[str]) -> Scores:
        """Score with `policy`'s weights in the model (swapping them in when another policy was last)."""
        if self._applied != policy.version:
            self._applied = None  # a swap that fails half-way leaves no policy in place
            if policy.adapter is not None:
                merge_adapter(self.model, policy.adapter)  # base kernels + its LoRA: no extra matmuls
            else:
                unmerge_adapter(self.model)
            self._applied = policy.version
        return self._scorers[policy].score(texts)


def _stamp(path: Path) -> tuple:
    return tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in sorted(path.iterdir()) if f.is_file())


_runtime: Runtime | None = None


def get_runtime(settings: QueueSettings) -> Runtime:
    """This process's runtime, built on first use (or at worker start, see agile.worker.app)."""
    global _runtime
    if _runtime is None:
        _runtime = Runtime(settings)
    return _runtime
