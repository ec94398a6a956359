"""The training loop on a tiny random Gemma 3: loss falls, adapters round-trip, metadata is checked."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from agile.adapters import AdapterError, AdapterMeta, apply_adapter, load_adapter, save_adapter
from agile.models import load_model
from agile.prompt import PromptTemplate
from agile.scoring import LabelScorer, pad_batch
from agile.testing import make_tiny_preset
from agile.tokens import PromptTokenizer
from agile.trainer.data import ethos_split
from agile.trainer.settings import TrainSettings
from agile.trainer.train import autocast_bfloat16, causal_lm_loss, encode_rows, label_loss, train

TEMPLATE = PromptTemplate()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(make_tiny_preset(tmp_path_factory.mktemp("tiny") / "preset"))


@pytest.fixture(scope="module")
def examples():
    train_rows, _ = ethos_split()
    return train_rows.head(8)


def mean_loss(model, examples, settings) -> float:
    """The objective's loss over all rows, without gradients."""
    tokenizer = PromptTokenizer.from_model(model)
    rows = encode_rows(model, TEMPLATE, examples, settings)
    label_ids = tokenizer.label_ids(TEMPLATE.labels)
    ids, mask = pad_batch(rows, tokenizer.pad_id)
    with torch.no_grad():
        if settings.objective == "label":
            return float(label_loss(model, ids, mask, torch.as_tensor(examples.labels), label_ids))
        return float(causal_lm_loss(model, ids, mask))


@pytest.mark.parametrize("objective,lr", [("label", 3e-2), ("causal-lm", 1e-1)])
def test_a_few_steps_lower_the_loss(tiny, examples, objective, lr):
    settings = TrainSettings(objective=objective, learning_rate=lr, epochs=5, batch_size=4, rank=4)
    model = load_model(tiny)
    result = train(model, TEMPLATE, examples, settings)
    after = mean_loss(model, examples, settings)
    reference = load_model(tiny)
    reference.backbone.enable_lora(4, target_layer_names=["query", "value"])  # LoRA B starts at zero
    before = mean_loss(reference, examples, settings)
    assert after < before - 0.05, (before, after)
    assert [r.epoch for r in result.history] == [1, 2, 3, 4, 5]
    assert all(r.steps == 2 for r in result.history)
    losses = [r.loss for r in result.history]
    assert losses == sorted(losses, reverse=True)  # falls every epoch


def test_best_validation_epoch_is_the_one_kept(tiny, examples):
    model = load_model(tiny)
    aucs = iter([0.6, 0.9, 0.7])
    snapshots = []

    def validate(m):
        snapshots.append([w.numpy().copy() for w in m.backbone.trainable_weights])
        return next(aucs)

    result = train(model, TEMPLATE, examples, TrainSettings(epochs=3, learning_rate=1e-2), validate=validate)
    assert result.best_epoch == 2
    kept = [w.numpy() for w in model.backbone.trainable_weights]
    assert all(np.array_equal(a, b) for a, b in zip(kept, snapshots[1], strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(kept, snapshots[2], strict=True))


def _meta(model, **changes) -> AdapterMeta:
    fields = dict(
        name="tiny", base_model=model.agile_info.spec, base_checksum=model.agile_info.checksum,
        labels=list(TEMPLATE.labels), instructions=TEMPLATE.instructions, separator=TEMPLATE.separator,
        eos=TEMPLATE.eos, rank=4, target_layers=["query", "value"], objective="label", max_length=128,
        positive_label="Negative", threshold=0.42,
    )
    fields.update(changes)
    return AdapterMeta(**fields)


def test_save_then_load_gives_identical_scores(tiny, examples, tmp_path):
    model = load_model(tiny)
    train(model, TEMPLATE, examples, TrainSettings(epochs=1, learning_rate=1e-2))
    before = LabelScorer(model, TEMPLATE).score(examples.texts).probs
    save_adapter(model, _meta(model), tmp_path / "adapter")

    fresh = load_model(tiny)
    untrained = LabelScorer(fresh, TEMPLATE).score(examples.texts).probs
    adapter = load_adapter(tmp_path / "adapter")
    apply_adapter(fresh, adapter)
    after = LabelScorer(fresh, adapter.meta.template).score(examples.texts).probs
    np.testing.assert_array_equal(before, after)
    assert not np.allclose(untrained, after)  # the weights did change something
    assert adapter.meta.threshold == 0.42 and adapter.meta.positive_label == "Negative"
    # readable by a worker running as another user (safetensors alone writes 0600)
    umask = os.umask(0)
    os.umask(umask)
    modes = {f.name: f.stat().st_mode & 0o777 for f in (tmp_path / "adapter").iterdir()}
    assert modes and all(mode == 0o666 & ~umask for mode in modes.values()), modes


def test_adapter_metadata_is_validated(tiny, examples, tmp_path):
    model = load_model(tiny)
    train(model, TEMPLATE, examples, TrainSettings(epochs=1, max_steps=2))
    path = save_adapter(model, _meta(model), tmp_path / "adapter")
    meta = json.loads((path / "adapter.json").read_text())

    (path / "adapter.json").write_text(json.dumps({**meta, "surprise": 1}))
    with pytest.raises(AdapterError, match=r"unknown keys \['surprise'\]"):
        load_adapter(path)
    (path / "adapter.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "rank"}))
    with pytest.raises(AdapterError, match=r"missing \['rank'\]"):
        load_adapter(path)

    (path / "adapter.json").write_text(json.dumps(meta))
    other = load_model(str(make_tiny_preset(tmp_path / "other", seed=1)))
    with pytest.raises(AdapterError, match="adapter was trained on"):
        apply_adapter(other, load_adapter(path))


def test_auto_compute_dtype_uses_bfloat16_only_where_the_hardware_has_it(monkeypatch, tmp_path):
    from agile.trainer import train as train_module

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert autocast_bfloat16("bfloat16", cpu) and not autocast_bfloat16("float32", gpu)
    assert autocast_bfloat16("auto", gpu)
    for flags, native in (("fpu avx avx2 fma", False), ("avx2 avx512f avx512_bf16", True), ("avx2 amx_bf16", True)):
        cpuinfo = tmp_path / f"cpuinfo-{native}-{len(flags)}"
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(train_module, "Path", lambda _, f=cpuinfo: f)
        assert autocast_bfloat16("auto", cpu) is native
