"""A tiny random Gemma 3 preset for tests and queue benchmarks (as keras-hub tests its models).

Real code paths, a vocabulary of a few hundred pieces trained on ETHOS text, a
hidden size of 16: it loads and scores in milliseconds. Its scores mean nothing.
"""

from __future__ import annotations

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

ETHOS_CSV = Path(__file__).resolve().parent.parent / "data" / "ethos" / "Ethos_Dataset_Binary.csv"
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


def tiny_proto(vocab_size: int = 4000) -> bytes:
    """A BPE SentencePiece model with Gemma's special-token ids and normalizer settings."""
    lines = ETHOS_CSV.read_text(encoding="utf-8").splitlines()[1:]
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


def make_tiny_preset(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny random Gemma 3 preset directory at `path` and return it."""
    path = Path(path)
    keras.utils.set_random_seed(seed)
    random.seed(seed)
    proto = tiny_proto()
    tokenizer = keras_hub.models.Gemma3Tokenizer(proto=proto, has_vision_tokens=False)
    backbone = keras_hub.models.Gemma3Backbone(
        vocabulary_size=tokenizer.vocabulary_size(), **TINY_CONFIG
    )
    backbone.save_to_preset(str(path))
    tokenizer.save_to_preset(str(path))
    (path / CHECKSUM_FILE).write_text(f'{{"sha256": "{preset_checksum(path)}"}}')
    return path
