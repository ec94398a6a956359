"""What a worker process keeps loaded: one model, and a few policies (adapters) to swap into it.

The model loads once per process. Adapter weights are small, so several policies
stay cached (least recently used goes first) and switching between them is a
weight copy, not a reload: the active one is merged into the base kernels (any rank
and targets may follow any other), the base kernels are restored exactly between.
Adapters resolve by name inside the configured adapter directories only: a task
cannot point a worker at any other path. A worker may hold two batches at once
(agile.worker.overlap): the model is one batch's at a time (the device lock, taken
for the swap and the forward passes), and a batch tokenizes outside it while
another has the device.
"""

from __future__ import annotations

import logging
import threading
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
        self._device = threading.Lock()  # the model's weights and forward passes: one batch at a time
        self._cache = threading.Lock()  # the policies and scorers kept

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
        with self._cache:
            policy = self._policies.get(key)
            if policy is None:
                policy = self._build(adapter, labels, instructions)
                scorer = self._scorer(policy)  # may refuse the labels: then nothing half-made stays cached
                self._policies[key] = policy
                self._scorers[policy] = scorer
                while len(self._policies) > self.settings.adapter_cache:
                    self._scorers.pop(self._policies.popitem(last=False)[1], None)
            self._policies.move_to_end(key)
            return policy

    def _scorer(self, policy: Policy) -> LabelScorer:
        settings = ScoringSettings(max_length=policy.max_length, batch_size=self.settings.scoring_batch or None)
        return LabelScorer(self.model, policy.template, settings)

    def _build(self, adapter: str | None, labels: list[str] | None, instructions: str | None) -> Policy:
        if adapter:
            found = load_adapter(resolve_adapter(adapter, self.dirs))
            log.info("loaded adapter %s from %s", adapter, found.path)
            return Policy.from_adapter(found)
        return Policy(PromptTemplate(tuple(labels or DEFAULT_LABELS), instructions or DEFAULT_INSTRUCTIONS))

    def score(self, policy: Policy, texts: list[str]) -> Scores:
        """Score with `policy`'s weights in the model (swapping them in when another policy was last).

        While another batch has the device, this one is tokenized whole before waiting for it;
        otherwise groups are tokenized as the device takes them (on CUDA, beside the last group)."""
        with self._cache:  # a policy pushed out of the cache by another batch meanwhile gets a new scorer
            scorer = self._scorers.get(policy) or self._scorer(policy)
        groups = scorer.groups(texts)
        if self._device.locked():
            groups = list(groups)
        with self._device:
            if self._applied != policy.version:
                self._applied = None  # a swap that fails half-way leaves no policy in place
                if policy.adapter is not None:
                    merge_adapter(self.model, policy.adapter)  # base kernels + its LoRA: no extra matmuls
                else:
                    unmerge_adapter(self.model)
                self._applied = policy.version
            return scorer.run(groups)


def _stamp(path: Path) -> tuple:
    return tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in sorted(path.iterdir()) if f.is_file())


_runtime: Runtime | None = None


def get_runtime(settings: QueueSettings) -> Runtime:
    """This process's runtime, built on first use (or at worker start, see agile.worker.app)."""
    global _runtime
    if _runtime is None:
        _runtime = Runtime(settings)
    return _runtime
