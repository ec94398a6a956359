"""Every Gemma family scores through `LabelScorer` exactly as the one-at-a-time full-vocabulary reference.

Tiny random Gemma 1, Gemma 2 (soft caps that bend the logits, a sliding window shorter than
the prompts, post-norms) and Gemma 3 backbones; with and without the shared-prefix cache,
several batch sizes, token budgets and input orders, through keras-hub's forward and the
lean one (`agile.lean`). Models the scorer cannot handle are
refused with one line.
"""

import keras_hub
import numpy as np
import pytest

from agile.forward import UnsupportedModelError, check_scorable
from agile.models import ModelLoadError, load_model
from agile.prompt import PromptTemplate
from agile.reference import predict_proba_one_at_a_time
from agile.scoring import LabelScorer, ScoringSettings
from agile.testing import tiny_proto

TEMPLATE = PromptTemplate()


@pytest.fixture(scope="module")
def texts(ethos_comments):
    by_len = sorted(ethos_comments[:200], key=len)
    picks = [by_len[i] for i in np.linspace(0, 150, 11).astype(int)]
    return [*picks[::2], *picks[1::2], "", "Text: again"]  # mixed lengths in every batch


@pytest.fixture(scope="module")
def reference(family_model, texts):
    ids = LabelScorer(family_model, TEMPLATE).label_ids
    return predict_proba_one_at_a_time(family_model, TEMPLATE, texts, ids)


@pytest.mark.parametrize("engine", ["lean", "keras"])
@pytest.mark.parametrize("reuse_prefix", [True, False])
@pytest.mark.parametrize("batch_size,token_budget,seed", [(1, 0, 0), (3, 0, 1), (16, 0, 3), (16, 90, 4)])
def test_every_family_equals_the_reference(family_model, texts, reference, reuse_prefix, batch_size,
                                           token_budget, seed, engine):
    order = np.random.default_rng(seed).permutation(len(texts))
    settings = ScoringSettings(512, batch_size, reuse_prefix=reuse_prefix, token_budget=token_budget,
                               engine=engine)
    got = LabelScorer(family_model, TEMPLATE, settings).score([texts[i] for i in order]).probs
    np.testing.assert_allclose(got, reference[order], atol=1e-5)


@pytest.mark.parametrize("family_model", ["gemma2"], indirect=True)
def test_gemma2_soft_caps_and_window_take_effect(family_model, texts, reference):
    """The Gemma 2 config is one where skipping its final soft cap would change the scores."""
    backbone = family_model.backbone
    assert backbone.sliding_window_size < min(len(r) for r in LabelScorer(family_model, TEMPLATE).encode(texts)[0][:-2])
    cap = backbone.final_logit_soft_cap
    backbone.final_logit_soft_cap = None
    try:
        uncapped = LabelScorer(family_model, TEMPLATE).score(texts).probs
    finally:
        backbone.final_logit_soft_cap = cap
    assert np.abs(uncapped - reference).max() > 1e-3


def _llama(vocabulary_size):
    return keras_hub.models.LlamaBackbone(vocabulary_size=vocabulary_size, num_layers=1, num_query_heads=2,
                                          num_key_value_heads=1, hidden_dim=16, intermediate_dim=32)


def test_a_model_that_is_not_a_gemma_is_refused_at_load(tmp_path):
    tokenizer = keras_hub.models.GemmaTokenizer(proto=tiny_proto())
    _llama(tokenizer.vocabulary_size()).save_to_preset(str(tmp_path))
    tokenizer.save_to_preset(str(tmp_path))
    with pytest.raises(ModelLoadError, match="LlamaBackbone is not a Gemma backbone"):
        load_model(str(tmp_path))


def test_an_untied_head_is_refused(family_model):
    embedding = family_model.backbone.token_embedding
    embedding.tie_weights = False
    try:
        with pytest.raises(UnsupportedModelError, match="untied output head"):
            LabelScorer(family_model, TEMPLATE)
    finally:
        embedding.tie_weights = True
    check_scorable(family_model.backbone)  # restored: accepted again
