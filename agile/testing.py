"""Tiny random Gemma 1, 2 and 3 presets for tests and queue benchmarks (as keras-hub tests its models).

Real code paths, a vocabulary of a few thousand pieces trained on ETHOS text, a
hidden size of 16: it loads and scores in milliseconds. Its scores mean nothing.
Gemma 2's config has soft caps small enough to bend the random logits and a sliding
window shorter than a prompt, so a path that skips either one scores differently.
"""

from __future__ import annotations

import functools
import io
import random
from pathlib import Path

from agile.backend import use_torch

use_torch()

import keras  # noqa: E402
import keras_hub  # noqa: E402
import sentencepiece as spm  # noqa: E402

from agile.models import CHECKSUM_FILE, preset_checksum  # noqa: E402
from agile.prompt import DEFAULT_INSTRUCTIONS, DEFAULT_LABELS  # noqa: E402
from agile.settings import HomeSettings  # noqa: E402

CAPS_FINAL, CAPS_ATTENTION = 0.2, 0.5
SHAPE = dict(num_layers=2, num_query_heads=2, num_key_value_heads=1, hidden_dim=16, intermediate_dim=32, head_dim=8)
FAMILIES = {
    "gemma": (keras_hub.models.GemmaBackbone, keras_hub.models.GemmaTokenizer, SHAPE),
    "gemma2": (keras_hub.models.GemmaBackbone, keras_hub.models.GemmaTokenizer, dict(
        SHAPE, query_head_dim_normalize=False, use_post_ffw_norm=True, use_post_attention_norm=True,
        final_logit_soft_cap=CAPS_FINAL, attention_logit_soft_cap=CAPS_ATTENTION,
        use_sliding_window_attention=True, sliding_window_size=40)),
}
TINY_CONFIG = dict(
    image_size=None,
    num_layers=2,
    num_query_heads=2,
    num_key_value_heads=1,
    hidden_dim=16,
    intermediate_dim=32,
    head_dim=8,
    sliding_window_size=512,
    use_sliding_window_attention=True,
    vision_encoder=None,
)
FAMILIES["gemma3"] = (keras_hub.models.Gemma3Backbone, keras_hub.models.Gemma3Tokenizer, TINY_CONFIG)


@functools.lru_cache(maxsize=4)
def tiny_proto(vocab_size: int = 4000) -> bytes:
    """A BPE SentencePiece model with Gemma's special-token ids and normalizer settings.

    Trained once per process and size: a test session makes dozens of presets from one vocabulary.
    """
    lines = HomeSettings().data_file("ethos/Ethos_Dataset_Binary.csv").read_text(encoding="utf-8").splitlines()[1:]
    lines += [DEFAULT_INSTRUCTIONS, "Text:Prediction:", "Toxic Safe Spam Ham"]
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=out,
        model_type="bpe",
        vocab_size=vocab_size,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        user_defined_symbols=[*DEFAULT_LABELS, "Toxic", "Safe"],
        minloglevel=2,
    )
    return out.getvalue()


def make_tiny_preset(path: str | Path, seed: int = 0, family: str = "gemma3", num_layers: int = 2) -> Path:
    """Write a tiny random preset of `family` ('gemma', 'gemma2', 'gemma3') at `path` and return it."""
    path = Path(path)
    keras.utils.set_random_seed(seed)
    random.seed(seed)
    backbone_cls, tokenizer_cls, config = FAMILIES[family]
    extra = {"has_vision_tokens": False} if family == "gemma3" else {}
    tokenizer = tokenizer_cls(proto=tiny_proto(), **extra)
    backbone = backbone_cls(vocabulary_size=tokenizer.vocabulary_size(), **{**config, "num_layers": num_layers})
    backbone.save_to_preset(str(path))
    tokenizer.save_to_preset(str(path))
    (path / CHECKSUM_FILE).write_text(f'{{"sha256": "{preset_checksum(path)}"}}')
    return path
