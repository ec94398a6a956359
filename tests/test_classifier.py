"""`AgileClassifier` (the codelab's interface) and LoRA adapter directories, on the tiny model."""

import json
import re

import numpy as np
import pytest

from agile.adapters import (
    META_FILE,
    AdapterError,
    AdapterMeta,
    apply_adapter,
    load_adapter,
    resolve_adapter,
    save_adapter,
)
from agile.classifier import AgileClassifier
from agile.models import load_model
from agile.scoring import ScoringSettings

SETTINGS = ScoringSettings(max_length=512)


def test_codelab_interface_shapes(tiny_model):
    clf = AgileClassifier(labels=("Positive", "Negative"), settings=SETTINGS)
    one = clf.predict_score(tiny_model, "you look nice today")
    assert isinstance(one, list) and len(one) == 2 and abs(sum(one) - 1) < 1e-6
    assert clf.predict(tiny_model, "you look nice today") == int(np.argmax(one))
    many = clf.predict_proba(tiny_model, ["a", "you look nice today"])
    assert many.shape == (2, 2)
    np.testing.assert_allclose(many[1], one, atol=1e-6)
    assert clf.predict(tiny_model, ["a", "b"]).shape == (2,)
    assert clf.encode_for_training("x", 1).endswith("Prediction:Negative<eos>")
    with pytest.raises(TypeError):
        clf.predict_proba(tiny_model, "not a list")


def _meta(model, **kw):
    info = model.agile_info
    base = dict(name="test", base_model=info.spec, base_checksum=info.checksum,
                labels=["Positive", "Negative"], instructions="Classify the following text into one of "
                "the following classes", separator="<separator>", eos="<eos>", rank=2,
                target_layers=["query", "value"], objective="label", max_length=512,
                positive_label="Negative", threshold=0.4)
    base.update(kw)
    return AdapterMeta(**base)


@pytest.fixture
def saved_adapter(tiny_preset, tmp_path):
    model = load_model(str(tiny_preset))
    model.backbone.enable_lora(2, target_layer_names=["query", "value"])
    rng = np.random.default_rng(0)
    for v in model.backbone.weights:
        if "lora_kernel" in v.path:
            v.assign(rng.normal(0, 0.5, size=tuple(v.shape)).astype("float32"))
    path = save_adapter(model, _meta(model), tmp_path / "adapters" / "test")
    return path, model


def test_save_then_load_gives_identical_scores(saved_adapter, tiny_preset):
    path, trained = saved_adapter
    texts = ["you look nice", "go away", ""]
    expected = AgileClassifier(("Positive", "Negative"), settings=SETTINGS).predict_proba(trained, texts)
    clf = AgileClassifier.from_adapter(path, model=load_model(str(tiny_preset)))
    np.testing.assert_allclose(clf.predict_proba(None, texts), expected, atol=1e-6)
    plain = AgileClassifier(("Positive", "Negative"), settings=SETTINGS).predict_proba(
        load_model(str(tiny_preset)), texts)
    assert np.abs(plain - expected).max() > 1e-4, "the adapter must change the scores"
    assert sorted(p.name for p in path.iterdir()) == ["adapter.json", "lora.safetensors"]


def test_from_adapter_answers_calibrated_probabilities(saved_adapter, tiny_preset):
    """The codelab's interface serves what the workers serve: the adapter's calibration applied."""
    from agile.calibration import Calibration

    path, _ = saved_adapter
    cal = Calibration("platt", a=0.5, b=1.0, fitted_on="a test", rows=10)
    meta = json.loads((path / META_FILE).read_text())
    meta["calibration"] = cal.to_json()
    (path / META_FILE).write_text(json.dumps(meta))
    texts = ["you look nice", "go away", "a b c"]
    clf = AgileClassifier.from_adapter(path, model=load_model(str(tiny_preset)))
    raw = clf.predict_proba(None, texts, calibrated=False)
    served = clf.predict_proba(None, texts)
    np.testing.assert_allclose(served[:, 1], cal.positive(raw[:, 1]), atol=1e-9)
    np.testing.assert_allclose(served.sum(axis=1), 1.0, atol=1e-9)
    assert np.abs(served - raw).max() > 0.01
    np.testing.assert_allclose(clf.predict_score(None, texts[0]), served[0], atol=1e-9)


def test_adapter_for_another_base_is_refused(saved_adapter, tiny_preset):
    path, _ = saved_adapter
    meta = json.loads((path / META_FILE).read_text())
    meta["base_checksum"] = "0" * 64
    (path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(AdapterError, match="adapter was trained on"):
        apply_adapter(load_model(str(tiny_preset)), load_adapter(path))


def test_metadata_is_validated(saved_adapter):
    path, _ = saved_adapter
    meta = json.loads((path / META_FILE).read_text())
    meta["surprise"] = 1
    del meta["rank"]
    (path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(AdapterError, match=r"unknown keys \['surprise'\], missing \['rank'\]"):
        load_adapter(path)


def test_names_resolve_only_inside_adapter_dirs(saved_adapter, tmp_path):
    path, _ = saved_adapter
    dirs = [path.parent]
    assert resolve_adapter("test", dirs) == path.resolve()
    for bad in ["../adapters/test", "/etc", "..", ".hidden", "te/st"]:
        with pytest.raises(AdapterError, match="not a plain name"):
            resolve_adapter(bad, dirs)
    with pytest.raises(AdapterError, match="unknown adapter 'nope'"):
        resolve_adapter("nope", dirs)


@pytest.mark.parametrize("linked", [META_FILE, "lora.safetensors"])
def test_adapter_files_are_never_read_through_a_symlink(saved_adapter, tmp_path, linked):
    """A policy directory whose file links elsewhere (another policy's weights, any host file) is refused."""
    path, _ = saved_adapter
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / linked).write_bytes((path / linked).read_bytes())
    (path / linked).unlink()
    (path / linked).symlink_to(other / linked)
    assert resolve_adapter("test", [path.parent]) == path.resolve()  # the name still resolves ...
    with pytest.raises(AdapterError, match=re.escape(f"{linked}: is a symlink; adapter files must be regular files")):
        load_adapter(path)  # ... but nothing is read through the link


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_an_adapter_file_that_is_not_a_regular_file_is_refused(saved_adapter, kind):
    """Refused at once: a FIFO in place of the weights must not hang the worker that loads it."""
    import os

    path, _ = saved_adapter
    (path / "lora.safetensors").unlink()
    if kind == "fifo":
        os.mkfifo(path / "lora.safetensors")
    else:
        (path / "lora.safetensors").mkdir()
    with pytest.raises(AdapterError, match=r"lora\.safetensors: not a regular file"):
        load_adapter(path)


def test_failed_save_leaves_nothing_half_written(saved_adapter, monkeypatch):
    """The write fails inside the atomic writer, after the weights file was started: the old adapter stays."""
    import safetensors.numpy

    path, model = saved_adapter
    before = {f.name: f.read_bytes() for f in path.iterdir()}

    def disk_full(arrays, filename):
        with open(filename, "wb") as f:
            f.write(b"half a safetensors file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.numpy, "save_file", disk_full)
    with pytest.raises(AdapterError, match="No space left on device"):
        save_adapter(model, _meta(model, threshold=0.6), path)
    assert {f.name: f.read_bytes() for f in path.iterdir()} == before  # the previous version, untouched
    assert sorted(p.name for p in path.parent.iterdir()) == ["test"]  # no work directory left behind
    with pytest.raises(AdapterError, match="No space left on device"):
        save_adapter(model, _meta(model), path.parent / "new")
    assert not (path.parent / "new").exists()


def test_a_scorer_follows_adapter_swaps(saved_adapter, tiny_preset):
    """The worker keeps one scorer per policy and merges adapters into the weights under it."""
    from agile.adapters import merge_adapter, unmerge_adapter
    from agile.prompt import PromptTemplate
    from agile.scoring import LabelScorer

    path, _ = saved_adapter
    model = load_model(str(tiny_preset))
    scorer = LabelScorer(model, PromptTemplate(), SETTINGS)
    texts = ["you look nice", "go away"]
    base = scorer.score(texts).probs
    merge_adapter(model, load_adapter(path))
    adapted = scorer.score(texts).probs
    assert np.abs(adapted - base).max() > 1e-4
    np.testing.assert_allclose(adapted, LabelScorer(model, PromptTemplate(), SETTINGS).score(texts).probs, atol=1e-6)
    unmerge_adapter(model)
    np.testing.assert_allclose(scorer.score(texts).probs, base, atol=1e-6)
