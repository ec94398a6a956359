"""Merged LoRA for inference: W + A @ B in the base kernels, the base restored bit for bit.

Two adapters of different rank and targets on the tiny Gemma 3; merged scores equal the
unmerged LoRA model's, the base weights come back with the same checksum, a worker runtime
swaps between both layouts and zero-shot on one model.
"""

import hashlib

import numpy as np
import pytest

from agile.adapters import (
    AdapterError,
    AdapterMeta,
    apply_adapter,
    load_adapter,
    merge_adapter,
    save_adapter,
    unmerge_adapter,
)
from agile.models import load_model
from agile.prompt import PromptTemplate
from agile.scoring import LabelScorer, ScoringSettings
from agile.settings import QueueSettings
from agile.worker.runtime import Runtime

TEXTS = ["you look nice", "go away, nobody wants you here", "", "the weather is fine today"]
SETTINGS = ScoringSettings(max_length=512, batch_size=3)
LAYOUTS = {"qv2": (2, ["query", "value"]),
           "all4": (4, ["query", "key", "value", "attention_output", "ffw_gating", "ffw_gating_2", "ffw_linear"])}


def checksum(model) -> str:
    digest = hashlib.sha256()
    for v in model.backbone.weights:
        digest.update(v.path.encode())
        digest.update(np.ascontiguousarray(v.numpy()).tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def adapters(tiny_preset, tmp_path_factory):
    """{name: (adapter directory, scores of the unmerged LoRA model it came from)}."""
    root = tmp_path_factory.mktemp("merge-adapters")
    found = {}
    for seed, (name, (rank, targets)) in enumerate(LAYOUTS.items()):
        model = load_model(str(tiny_preset), sequence_length=512)
        model.backbone.enable_lora(rank, target_layer_names=targets)
        rng = np.random.default_rng(seed)
        for v in model.backbone.weights:
            if "lora_kernel" in v.path:
                v.assign(rng.normal(0, 0.5, size=tuple(v.shape)).astype("float32"))
        info = model.agile_info
        meta = AdapterMeta(name=name, base_model=info.spec, base_checksum=info.checksum,
                           labels=["Positive", "Negative"], instructions=PromptTemplate().instructions,
                           separator="<separator>", eos="<eos>",
                           rank=rank, target_layers=targets, objective="label", max_length=512)
        path = save_adapter(model, meta, root / name)
        found[name] = (path, LabelScorer(model, PromptTemplate(), SETTINGS).score(TEXTS).probs)
    return found


def test_merged_scores_equal_the_lora_model_and_unmerge_restores_the_base(tiny_preset, adapters):
    model = load_model(str(tiny_preset), sequence_length=512)
    scorer = LabelScorer(model, PromptTemplate(), SETTINGS)
    base_sum, base = checksum(model), scorer.score(TEXTS).probs
    n_weights = len(model.backbone.weights)
    for name in ["qv2", "all4", "qv2"]:  # any rank and targets after any other, on one model
        path, expected = adapters[name]
        merge_adapter(model, load_adapter(path))
        assert len(model.backbone.weights) == n_weights, "merged: no LoRA layers, no extra matmuls"
        np.testing.assert_allclose(scorer.score(TEXTS).probs, expected, atol=1e-6)
        assert checksum(model) != base_sum
    unmerge_adapter(model)
    assert checksum(model) == base_sum
    np.testing.assert_array_equal(scorer.score(TEXTS).probs, base)
    unmerge_adapter(model)  # nothing merged: a no-op
    assert checksum(model) == base_sum


def test_a_bad_adapter_leaves_the_merged_one_in_place(tiny_preset, adapters, tmp_path):
    model = load_model(str(tiny_preset), sequence_length=512)
    merge_adapter(model, load_adapter(adapters["qv2"][0]))
    merged = checksum(model)
    bad = load_adapter(adapters["all4"][0])
    key = next(k for k in bad.weights if k.endswith("lora_kernel_b"))
    bad.weights[key] = bad.weights[key][:, :-1]
    with pytest.raises(AdapterError, match="update has shape"):
        merge_adapter(model, bad)
    assert checksum(model) == merged


def test_a_model_with_lora_layers_is_not_merged_into(tiny_preset, adapters):
    model = load_model(str(tiny_preset), sequence_length=512)
    adapter = load_adapter(adapters["qv2"][0])
    apply_adapter(model, adapter)  # training's way: LoRA layers enabled, kept unmerged
    with pytest.raises(AdapterError, match="LoRA layers enabled"):
        merge_adapter(model, adapter)


def test_a_worker_swaps_adapters_of_any_layout(tiny_preset, adapters):
    runtime = Runtime(QueueSettings(model=str(tiny_preset), adapter_path=str(adapters["qv2"][0].parent)))
    base_sum = checksum(runtime.model)
    zero = runtime.score(runtime.policy(None, ["Positive", "Negative"], None), TEXTS).probs
    for name in ["all4", "qv2", "all4"]:
        got = runtime.score(runtime.policy(name, None, None), TEXTS).probs
        np.testing.assert_allclose(got, adapters[name][1], atol=1e-6)
    again = runtime.score(runtime.policy(None, ["Positive", "Negative"], None), TEXTS).probs
    np.testing.assert_array_equal(again, zero)
    assert checksum(runtime.model) == base_sum
