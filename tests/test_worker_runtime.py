"""A worker's loaded state, in-process on the tiny model: policies, adapter swaps, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from agile.adapters import AdapterError
from agile.settings import QueueSettings
from agile.wire import PayloadError
from agile.worker.runtime import Runtime

TEXTS = ["you are lovely", "I will hurt you", "the weather is fine today, thanks for asking"]


@pytest.fixture(scope="module")
def runtime(tiny_preset, adapter_dir):
    return Runtime(QueueSettings(model=str(tiny_preset), adapter_path=str(adapter_dir), adapter_cache=2))


def test_swapping_policies_gives_each_its_own_scores(runtime):
    zero = runtime.policy(None, None, None)
    base = runtime.score(zero, TEXTS).probs
    tuned = runtime.policy("tiny-toxic", None, None)
    assert tuned.labels == ["Toxic", "Safe"] and tuned.positive_label == "Toxic"
    assert len(tuned.version) == 12
    adapted = runtime.score(tuned, TEXTS).probs
    back = runtime.score(zero, TEXTS).probs  # the base kernels restored: the base model again
    np.testing.assert_allclose(back, base, rtol=0, atol=1e-6)
    again = runtime.score(tuned, TEXTS).probs
    np.testing.assert_allclose(again, adapted, rtol=0, atol=1e-6)
    assert np.allclose(adapted.sum(axis=1), 1, atol=1e-5)
    # the same prompt on the base weights: what the adapter's LoRA changes, and must change
    plain = runtime.policy(None, tuned.labels, tuned.template.instructions)
    assert np.abs(adapted - runtime.score(plain, TEXTS).probs).max() > 1e-3


def test_policies_are_cached_least_recently_used_first_out(runtime):
    first = runtime.policy(None, ["Toxic", "Safe"], None)
    assert runtime.policy(None, ["Toxic", "Safe"], None) is first
    runtime.policy("tiny-toxic", None, None)
    runtime.policy(None, ["Positive", "Negative"], "other instructions")
    assert len(runtime._policies) == 2
    assert runtime.policy(None, ["Toxic", "Safe"], None) is not first


@pytest.mark.parametrize("name, says", [
    ("../tiny-toxic", "not a plain name"),
    ("/etc", "not a plain name"),
    ("no-such-adapter", "unknown adapter 'no-such-adapter'"),
])
def test_a_task_cannot_reach_outside_the_adapter_directories(runtime, name, says):
    with pytest.raises(AdapterError, match=says):
        runtime.policy(name, None, None)


def test_another_model_is_refused_clearly(runtime):
    runtime.check_model(None)
    runtime.check_model(runtime.settings.model)
    with pytest.raises(PayloadError, match=r"this worker serves model .* the task asks for 'gemma3_1b'"):
        runtime.check_model("gemma3_1b")


def test_an_adapter_retrained_under_the_same_name_is_picked_up(tiny_preset, adapter_dir, tmp_path):
    import shutil

    from safetensors.numpy import load_file, save_file

    from agile.adapters import WEIGHTS_FILE

    dirs = tmp_path / "adapters"
    shutil.copytree(adapter_dir / "tiny-toxic", dirs / "tiny-toxic")
    runtime = Runtime(QueueSettings(model=str(tiny_preset), adapter_path=str(dirs)))
    before = runtime.policy("tiny-toxic", None, None)
    first = runtime.score(before, TEXTS).probs
    weights = {k: v * 3 for k, v in load_file(str(dirs / "tiny-toxic" / WEIGHTS_FILE)).items()}
    save_file(weights, str(dirs / "tiny-toxic" / WEIGHTS_FILE))  # retrained, same name
    after = runtime.policy("tiny-toxic", None, None)
    assert after.version != before.version
    assert np.abs(runtime.score(after, TEXTS).probs - first).max() > 1e-4
