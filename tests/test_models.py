"""Model loading: specs, clear errors, checksums, and the PyTorch backend without TensorFlow."""

import json
import shutil
import subprocess
import sys
import time

import pytest

from agile.models import CHECKSUM_FILE, ModelLoadError, _verified, load_model, resolve


def test_unknown_model_name_is_one_clear_error():
    with pytest.raises(ModelLoadError, match=r"unknown model 'gemma-9000'.*embedded"):
        resolve("gemma-9000")


def test_directory_that_is_not_a_preset(tmp_path):
    with pytest.raises(ModelLoadError, match="not a keras-hub preset"):
        resolve(str(tmp_path))


def test_kaggle_preset_offline_fails_with_the_fix(monkeypatch):
    # No network here (as for most users' CI); it must fail fast and say what to do.
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    start = time.monotonic()
    with pytest.raises(ModelLoadError, match="KAGGLE_USERNAME/KAGGLE_KEY") as err:
        load_model("gemma3_1b")
    assert "\n" not in str(err.value)
    assert time.monotonic() - start < 120


def test_local_preset_loads_and_records_checksum(tiny_model, tiny_preset):
    info = tiny_model.agile_info
    assert info.spec == str(tiny_preset)
    assert info.checksum == json.loads((tiny_preset / CHECKSUM_FILE).read_text())["sha256"]
    assert hasattr(tiny_model, "score") and tiny_model.preprocessor is not None


def test_checksum_catches_a_corrupted_preset(tiny_preset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_preset, copy)
    assert _verified(copy)
    with (copy / "config.json").open("a") as f:
        f.write(" ")
    assert not _verified(copy)


def test_score_returns_full_vocabulary_logits(tiny_model):
    import numpy as np

    batch = tiny_model.preprocessor.generate_preprocess(["hello"])
    logits = tiny_model.score(token_ids=batch["token_ids"], padding_mask=batch["padding_mask"])
    vocab = tiny_model.backbone.vocabulary_size
    assert tuple(logits.shape) == (1, batch["token_ids"].shape[1], vocab)
    assert np.isfinite(np.asarray(logits.detach().cpu())).all()


@pytest.mark.redis  # a fresh interpreter
def test_other_keras_backend_is_refused(tiny_preset):
    code = "import agile.models"
    proc = subprocess.run([sys.executable, "-c", code], env={"KERAS_BACKEND": "jax", "PATH": "/usr/bin"},
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "runs Keras on the PyTorch backend" in proc.stderr


@pytest.mark.redis  # a fresh interpreter
def test_nothing_imports_tensorflow(tiny_preset):
    code = (
        "import sys; from agile.models import load_model; from agile.scoring import LabelScorer;"
        "from agile.prompt import PromptTemplate;"
        f"m = load_model({str(tiny_preset)!r}); LabelScorer(m, PromptTemplate()).score(['hi']);"
        "print('tensorflow' in sys.modules, 'tensorflow_text' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "False False"


def test_checksum_ignores_the_save_date(tiny_preset, tmp_path):
    """Adapters name their base by checksum: two conversions of the same GGUF must agree."""
    from agile.models import preset_checksum

    copy = tmp_path / "copy"
    shutil.copytree(tiny_preset, copy)
    meta = json.loads((copy / "metadata.json").read_text())
    meta["date_saved"] = "1999-01-01@00:00:00"
    (copy / "metadata.json").write_text(json.dumps(meta))
    assert preset_checksum(copy) == preset_checksum(tiny_preset)


def test_older_conversions_of_the_embedded_model_are_removed_and_nothing_else(tmp_path, caplog):
    from agile.models import prune_outdated

    presets = tmp_path / "presets"
    names = ("gemma3_270m-a5fd3b62230a-v1", "gemma3_270m-a5fd3b62230a-v2", "gemma3_270m-a5fd3b62230a-v3",
             "gemma3_270m-a5fd3b62230a-v12", "gemma3_270m-mine", "my-finetune-v1")
    for name in names:
        (presets / name).mkdir(parents=True)
        (presets / name / "model.weights.h5").write_bytes(b"x" * 1000)
    removed = prune_outdated(presets, version=3)
    assert sorted(p.name for p in removed) == ["gemma3_270m-a5fd3b62230a-v1", "gemma3_270m-a5fd3b62230a-v2"]
    assert sorted(p.name for p in presets.iterdir()) == sorted(names[2:])  # v12 is newer, not older
    assert "older conversion of the embedded model" in caplog.text
