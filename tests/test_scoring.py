"""Batched, padding-aware label scoring on a tiny random Gemma 3 (real model code, random weights)."""

import numpy as np
import pytest

from agile.prompt import PromptTemplate
from agile.reference import predict_proba_one_at_a_time
from agile.scoring import LabelScorer, ScoringSettings, pad_batch
from agile.tokens import LabelError

TEMPLATE = PromptTemplate()
TINY_MAX_LENGTH = 512  # the tiny_model fixture's sequence length


def mixed_texts(ethos_comments, n=12):
    by_len = sorted(ethos_comments[:200], key=len)
    picks = [by_len[i] for i in np.linspace(0, 150, n).astype(int)]  # short to long, all fit 128 tokens
    return picks[::2] + picks[1::2]  # interleave so each batch mixes lengths


@pytest.mark.parametrize("batch_size", [1, 3, 5, 16])
def test_batched_equals_one_at_a_time_full_vocabulary(tiny_model, ethos_comments, batch_size):
    texts = mixed_texts(ethos_comments)
    scorer = LabelScorer(tiny_model, TEMPLATE, ScoringSettings(TINY_MAX_LENGTH, batch_size))
    ref = predict_proba_one_at_a_time(tiny_model, TEMPLATE, texts, scorer.label_ids)
    got = scorer.score(texts).probs
    assert got.shape == (len(texts), 2)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_order_of_inputs_does_not_change_scores(tiny_model, ethos_comments):
    texts = mixed_texts(ethos_comments)
    scorer = LabelScorer(tiny_model, TEMPLATE, ScoringSettings(batch_size=4))
    base = scorer.score(texts).probs
    perm = np.random.default_rng(0).permutation(len(texts))
    np.testing.assert_allclose(scorer.score([texts[i] for i in perm]).probs, base[perm], atol=1e-6)


def test_each_row_uses_its_own_offset(tiny_model):
    """A short row padded beside a long one must score as it does alone (first-row-offset bug)."""
    scorer = LabelScorer(tiny_model, TEMPLATE, ScoringSettings(batch_size=2))
    short, long = "ok", "this one is a good deal longer than the other comment " * 3
    alone = [scorer.score([t]).probs[0] for t in (short, long)]
    together = scorer.score([long, short]).probs
    np.testing.assert_allclose(together[1], alone[0], atol=1e-6)
    np.testing.assert_allclose(together[0], alone[1], atol=1e-6)


def test_long_comment_is_cut_but_prompt_tail_kept(tiny_model):
    scorer = LabelScorer(tiny_model, TEMPLATE, ScoringSettings(max_length=160))
    texts = ["short", "word " * 500, "x" * 1_000_000]
    rows, truncated = scorer.encode(texts)
    assert truncated.tolist() == [False, True, True]
    tail = scorer.tokenizer.encode([TEMPLATE.tail])[0]
    for row in rows:
        assert len(row) <= 160
        assert row[-len(tail):] == tail, "the prompt must end with 'Prediction:' even when cut"
    scores = scorer.score(texts)
    assert scores.truncated.tolist() == [False, True, True]
    assert scores.n_tokens.max() <= 160


@pytest.mark.parametrize("text", ["", "   ", "\n\t", "🙂" * 10, "<separator>"])
def test_odd_texts_are_scorable(tiny_model, text):
    probs = LabelScorer(tiny_model, TEMPLATE).score([text]).probs
    assert np.isfinite(probs).all() and abs(probs.sum() - 1) < 1e-6


def test_label_that_is_not_one_token_is_a_clear_error(tiny_model):
    with pytest.raises(LabelError, match="'Definitely not a token' is not a single token"):
        LabelScorer(tiny_model, PromptTemplate(labels=("Positive", "Definitely not a token")))


def test_other_single_token_labels_work(tiny_model):
    """Other labels read other tokens' logits: the scores are the reference's for those tokens, not the default's."""
    template = PromptTemplate(labels=("Toxic", "Safe"))
    scorer = LabelScorer(tiny_model, template, ScoringSettings(TINY_MAX_LENGTH))
    texts = ["hi", "you are all awful people"]
    got = scorer.score(texts).probs
    assert scorer.label_ids != LabelScorer(tiny_model, TEMPLATE).label_ids
    np.testing.assert_allclose(got, predict_proba_one_at_a_time(tiny_model, template, texts, scorer.label_ids),
                               atol=1e-5)
    assert np.abs(got - LabelScorer(tiny_model, TEMPLATE).score(texts).probs).max() > 1e-4


@pytest.mark.parametrize("max_length", [8, 2049])
def test_unsupported_lengths_are_refused(max_length):
    with pytest.raises(ValueError, match="max_length"):
        ScoringSettings(max_length=max_length)


def test_template_longer_than_max_length_is_refused(tiny_model):
    long_instructions = PromptTemplate(instructions="classify " * 100)
    scorer = LabelScorer(tiny_model, long_instructions, ScoringSettings(max_length=32))
    with pytest.raises(ValueError, match="template alone"):
        scorer.score(["hi"])


def test_pad_batch_right_pads_with_mask():
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.sum(axis=1).tolist() == [3, 1]


def test_shared_prefix_reuse_gives_the_same_scores(tiny_model, ethos_comments):
    texts = [*mixed_texts(ethos_comments), ":)", "Text: again", ""]
    reuse = LabelScorer(tiny_model, TEMPLATE, ScoringSettings(TINY_MAX_LENGTH, 4, reuse_prefix=True))
    full = LabelScorer(tiny_model, TEMPLATE, ScoringSettings(TINY_MAX_LENGTH, 4, reuse_prefix=False))
    prefix = reuse.shared_prefix()
    rows, _ = reuse.encode(texts)
    assert len(prefix) > 10 and sum(r[: len(prefix)] == prefix for r in rows) == len(rows)
    np.testing.assert_allclose(reuse.score(texts).probs, full.score(texts).probs, atol=1e-6)


def test_micro_batches_keep_to_rows_and_token_budget():
    from agile.scoring import micro_batches

    widths = np.array([30, 5, 12, 12, 40, 7, 100])
    batches = micro_batches(widths, max_rows=3, token_budget=40)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(widths)))  # every row once
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or len(b) * widths[b].max() <= 40  # a row wider than the budget goes alone
        assert widths[b].max() == widths[b[-1]]  # sorted: the last row is the widest
    assert [widths[b].tolist() for b in batches] == [[5, 7, 12], [12], [30], [40], [100]]
    assert [len(b) for b in micro_batches(widths, max_rows=4)] == [4, 3]  # no budget: rows decide


def test_rows_per_pass_default_to_the_devices(tiny_model):
    """Unset, rows per pass follow the model's device (16 on a CPU); set, the setting wins."""
    from agile.scoring import DEFAULT_BATCH_ROWS

    texts = [f"comment {i}" for i in range(40)]
    default = LabelScorer(tiny_model, TEMPLATE, ScoringSettings(TINY_MAX_LENGTH))
    rows, _ = default.encode(texts)
    sizes = [len(idx) for _, idx in default.plan(rows)[1]]
    assert max(sizes) == DEFAULT_BATCH_ROWS["cpu"] == 16 and sum(sizes) == 40
    five = LabelScorer(tiny_model, TEMPLATE, ScoringSettings(TINY_MAX_LENGTH, 5))
    assert max(len(idx) for _, idx in five.plan(rows)[1]) == 5
    np.testing.assert_allclose(default.score(texts).probs, five.score(texts).probs, atol=1e-6)


def test_threaded_tokenizing_gives_the_same_rows(tiny_model, ethos_comments):
    from agile.tokens import PromptTokenizer

    texts = list(ethos_comments[:150])  # over the threaded threshold
    one = PromptTokenizer.from_model(tiny_model, threads=1).encode_prompts(TEMPLATE, texts, TINY_MAX_LENGTH)
    many = PromptTokenizer.from_model(tiny_model, threads=2).encode_prompts(TEMPLATE, texts, TINY_MAX_LENGTH)
    assert one[0] == many[0] and (one[1] == many[1]).all()


@pytest.mark.parametrize("engine", ["lean", "keras"])
@pytest.mark.parametrize("group", [1, 5, 7])
def test_texts_in_pipeline_groups_score_as_one_call(tiny_model, ethos_comments, engine, group):
    """Tokenized and launched group by group (the CUDA default), every row still comes back in place."""
    texts = [*mixed_texts(ethos_comments), "", "word " * 600, ":)"]  # one empty, one cut to max_length
    whole = LabelScorer(tiny_model, TEMPLATE, ScoringSettings(128, 4, engine=engine, pipeline_rows=0))
    grouped = LabelScorer(tiny_model, TEMPLATE, ScoringSettings(128, 4, engine=engine, pipeline_rows=group))
    seen = []
    encode = grouped.encode
    grouped.encode = lambda chunk: seen.append(len(chunk)) or encode(chunk)
    got, base = grouped.score(texts), whole.score(texts)
    assert seen == [group] * (len(texts) // group) + ([len(texts) % group] if len(texts) % group else [])
    assert got.truncated.tolist() == base.truncated.tolist() and got.truncated[-2]
    assert got.n_tokens.tolist() == base.n_tokens.tolist()
    np.testing.assert_allclose(got.probs, base.probs, atol=1e-6)
    ref = predict_proba_one_at_a_time(tiny_model, TEMPLATE, texts[:-2], grouped.label_ids)  # rows before the cut one
    np.testing.assert_allclose(got.probs[:-2], ref, atol=1e-5)


def test_no_texts_score_to_no_rows(tiny_model):
    scores = LabelScorer(tiny_model, TEMPLATE, ScoringSettings(pipeline_rows=3)).score([])
    assert scores.probs.shape == (0, 2) and len(scores.truncated) == len(scores.n_tokens) == 0


def test_negative_pipeline_rows_are_refused():
    with pytest.raises(ValueError, match="pipeline_rows"):
        ScoringSettings(pipeline_rows=-1)
