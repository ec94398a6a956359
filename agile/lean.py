"""A lean forward over keras-hub's own Gemma weights: the same tensors, plain torch ops.

keras-hub's decoder blocks stay the definition of the model, the source of every
weight and the path training differentiates through (`agile.forward`). On a
forward of a few hundred tokens its per-layer Python (Keras' call machinery,
einsum plans, RoPE tables and sliding masks rebuilt in every layer) costs more
than the matmuls; this module reads the blocks' variables in place (a merged
adapter is seen at once, nothing is copied) and runs the same arithmetic:
RMSNorm in float32 with `1 + scale`, RoPE from each layer's own RotaryEmbedding
frequencies, grouped-query attention with the layer's scale, soft cap and window,
the tanh-GELU gate, post-norms where the block has them, the tied label head.
Tests hold it to keras-hub's forward to 1e-5 on tiny Gemma 1, 2 and 3 configs.

Only each row's label position is read at the end, so the last layer runs its queries,
output projection and FFN there alone; its keys and values still cover every position.

It is differentiable, and runs a layer with LoRA enabled (training) as its base kernel plus
the low-rank path, `x @ W + (x @ A) @ B * alpha / rank`: the same function as keras-hub's
merged kernel, but autograd then never forms the gradient of a whole kernel (keras-hub's
`W + A @ B` does, one full matmul per LoRA'd kernel per step), only the LoRA weights'. The
trainer runs this forward too, shared prefix included (its keys and values depend on the
LoRA weights, so they are computed once a step).

Gemma 1/2 blocks interleave the two RoPE halves of queries and keys after rotating;
the same permutation on both leaves every query-key product unchanged, so it is skipped.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def lean_unsupported(backbone) -> str | None:
    """Why the lean forward cannot run this backbone (keras-hub's forward is used then), or None."""
    dtypes = {v.dtype for v in backbone.weights}
    if len(dtypes) != 1 or backbone.compute_dtype not in dtypes or backbone.compute_dtype == "float16":
        return f"weights {sorted(dtypes)} / compute {backbone.compute_dtype} (needs one dtype, not float16)"
    for block in backbone.transformer_layers:
        attention = block.attention
        if getattr(attention.rope_layer, "rope_type", "linear") == "yarn":
            return "YaRN RoPE scaling"
        if getattr(block, "use_bidirectional_attention", False) or getattr(block, "dropout", 0):
            return "bidirectional attention or dropout"
    return None


def linear_flops(backbone, positions: int, rows: int, lean: bool = True) -> int:
    """FLOPs of the linear layers (2 per kernel weight per position) over `positions` positions,
    `rows` of them the scored rows' last positions. The lean forward runs the last layer's query,
    output and FFN kernels at those only; keras-hub's forward (lean=False) runs every kernel at all."""
    def size(*layers) -> int:
        return sum(int(math.prod(layer.kernel.shape)) for layer in layers)

    total = at_rows = 0
    for block in backbone.transformer_layers:
        a = block.attention
        at_rows = size(a.query_dense, a.output_dense, block.gating_ffw, block.gating_ffw_2, block.ffw_linear)
        total += at_rows + size(a.key_dense, a.value_dense)
    return 2 * (total * positions - (at_rows * (positions - rows) if lean else 0))


def _kernel(layer) -> torch.Tensor:
    """A layer's own kernel, read in place (with LoRA enabled, without its update: `_lora`)."""
    return (layer._kernel if getattr(layer, "lora_enabled", False) else layer.kernel).value


def _lora(layer) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """(A, B, alpha / rank) of a layer with LoRA enabled, else None."""
    if not getattr(layer, "lora_enabled", False):
        return None
    return layer.lora_kernel_a.value, layer.lora_kernel_b.value, layer.lora_alpha / layer.lora_rank


def _dense(x: torch.Tensor, layer) -> torch.Tensor:
    """x @ the layer's kernel as a matrix ([..., in] -> [..., out]; a [heads, h, d] kernel is [heads*h, d])."""
    kernel = _kernel(layer)
    y = x @ kernel.reshape(-1, kernel.shape[-1])
    lora = _lora(layer)
    if lora is not None:
        a, b, scale = lora
        y = y + (x @ a.reshape(-1, a.shape[-1])) @ b * scale
    return y


def _rms_norm(layer, x: torch.Tensor) -> torch.Tensor:
    y = x.float()
    y = y * torch.rsqrt(y.square().mean(-1, keepdim=True) + layer.epsilon)
    return (y * (1 + layer.scale.value.float())).to(x.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, with rotate_half = roll by half and the sign folded into the table."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), signed_sin)


_GELU_C = 2 * math.sqrt(2 / math.pi)


def _gelu_gate(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """tanh-GELU(gate) * up. On CPU as gate * sigmoid(2z), the same function: torch's tanh-GELU
    kernel there is unvectorised (9.5 vs 6.6 ms on 16 x 64 x 2048); on a GPU its fused kernel wins."""
    if gate.device.type != "cpu":
        return F.gelu(gate, approximate="tanh") * up
    if torch.is_grad_enabled():  # training: out of place, so autograd keeps what its backward reads
        return torch.sigmoid(gate * (gate * gate * (0.044715 * _GELU_C) + _GELU_C)) * gate * up
    z = (gate * gate).mul_(0.044715 * _GELU_C).add_(_GELU_C).mul_(gate)
    return torch.sigmoid_(z).mul_(gate).mul_(up)


def _project_heads(x: torch.Tensor, layer) -> torch.Tensor:
    """[b, t, d] @ a [heads, d, h] kernel -> [b, heads, t, h], the kernel read in place."""
    b, t, d = x.shape
    kernel, flat = _kernel(layer), x.reshape(1, b * t, d)
    out = torch.matmul(flat, kernel)  # [heads, b*t, h]
    lora = _lora(layer)
    if lora is not None:  # A: [heads, d, r], B: [r, h]
        a, b_, scale = lora
        out = out + torch.matmul(torch.matmul(flat, a), b_) * scale
    return out.reshape(kernel.shape[0], b, t, -1).transpose(0, 1)


def _keys_values(attention, x: torch.Tensor, table) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer's rotated keys and its values, [b, kv_heads, t, head_dim], from its normed input."""
    k = _project_heads(x, attention.key_dense)
    if getattr(attention, "use_query_key_norm", False):
        k = _rms_norm(attention.key_norm, k)
    return _rope(k, *table), _project_heads(x, attention.value_dense)


class LeanForward:
    """Label logits for rows (optionally after a cached shared prefix) from a Gemma backbone's weights."""

    def __init__(self, backbone):
        self.backbone = backbone
        self.blocks = backbone.transformer_layers
        self.dtype = getattr(torch, backbone.compute_dtype)
        # Each block's RoPE frequencies, as its own RotaryEmbedding computes them (one entry per distinct set).
        self._freqs: list[torch.Tensor] = []
        self._freq_of: list[int] = []
        for block in self.blocks:
            inv = torch.as_tensor(block.attention.rope_layer._get_inverse_freq(block.attention.head_dim)).float().cpu()
            found = next((j for j, f in enumerate(self._freqs) if torch.equal(f, inv)), None)
            if found is None:
                self._freqs.append(inv)
                found = len(self._freqs) - 1
            self._freq_of.append(found)
        self._on_device: dict = {}  # device -> frequencies there (copied once, not per call)
        self._label_index: dict = {}

    def _embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        x = F.embedding(token_ids.long(), self.backbone.token_embedding.embeddings.value)
        return x * torch.tensor(math.sqrt(self.backbone.hidden_dim), dtype=torch.float32).to(x.dtype)

    def _tables(self, start: int, length: int, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(cos, signed sin) per block, positions start .. start+length-1 (once per frequency set)."""
        if device not in self._on_device:
            self._on_device[device] = [f.to(device) for f in self._freqs]
        positions = torch.arange(start, start + length, dtype=torch.float32, device=device)
        by_freq = []
        for inv in self._on_device[device]:
            emb = torch.outer(positions, inv)
            sin = emb.sin()
            by_freq.append((emb.cos().repeat(1, 2).to(self.dtype), torch.cat((-sin, sin), dim=1).to(self.dtype)))
        return [by_freq[j] for j in self._freq_of]

    def _masks(self, key_valid: torch.Tensor, start: int, length: int) -> dict:
        """[b, 1, t, s] boolean masks, global and per window size: causal, padding, window.

        Each query may also see itself, so a padded query never has an empty row
        (its output is discarded; valid queries already see themselves).
        """
        device = key_valid.device
        q = torch.arange(start, start + length, device=device)[:, None]
        k = torch.arange(key_valid.shape[1], device=device)[None, :]
        base = (k <= q) & key_valid[:, None, :]
        masks = {}
        for block in self.blocks:
            attention = block.attention
            w = attention.sliding_window_size if attention.use_sliding_window_attention else None
            if w not in masks:
                m = base & (q - k < w) if w else base
                masks[w] = (m | (k == q))[:, None]
        return masks

    def _attention(self, block, i, x, tables, masks, cache, pick=None):
        """Attention of every position, or with `pick` ((rows, last) indices) of each row's last position only:
        keys and values always come from every position (they are the cache and what is attended to)."""
        attention = block.attention
        b = x.shape[0]
        new = k, v = _keys_values(attention, x, tables[i])
        cos, signed_sin = tables[i]
        if pick is None:
            q, q_cos, q_sin = _project_heads(x, attention.query_dense), cos, signed_sin
        else:
            q = _project_heads(x[pick][:, None], attention.query_dense)
            q_cos, q_sin = cos[pick[1]][:, None, None], signed_sin[pick[1]][:, None, None]
        if getattr(attention, "use_query_key_norm", False):
            q = _rms_norm(attention.query_norm, q)
        q = _rope(q, q_cos, q_sin)
        if cache is not None:
            pk, pv = cache
            k = torch.cat((pk.expand(b, -1, -1, -1), k), dim=2)
            v = torch.cat((pv.expand(b, -1, -1, -1), v), dim=2)
        if attention.query_head_dim_normalize:
            scale = 1 / math.sqrt(attention.head_dim)
        else:
            scale = 1 / math.sqrt(attention.hidden_dim // attention.num_query_heads)
        w = attention.sliding_window_size if attention.use_sliding_window_attention else None
        mask, cap = masks[w], attention.logit_soft_cap
        if pick is not None:
            mask = mask[pick[0], :, pick[1]][:, :, None]  # [b, 1, 1, keys]
        t = q.shape[2]
        heads, groups = attention.num_query_heads, attention.num_query_heads // attention.num_key_value_heads
        if cap is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=groups > 1)
        else:
            qg = (q * torch.tensor(scale, dtype=q.dtype)).view(b, -1, groups, t, q.shape[-1])
            logits = torch.matmul(qg, k[:, :, None].transpose(-1, -2))
            logits = torch.tanh(logits / cap) * cap
            logits = logits.float().masked_fill(~mask[:, :, None], torch.finfo(torch.float32).min)
            out = torch.matmul(logits.softmax(-1).to(v.dtype), v[:, :, None]).view(b, heads, t, -1)
        out = out.transpose(1, 2).reshape(b, t, -1)
        return _dense(out, attention.output_dense), new

    def _block(self, block, i, x, tables, masks, cache, pick=None):
        """One decoder block; with `pick` ((rows, last)), its output at each row's last position only ([b, 1, d])."""
        attn, new = self._attention(block, i, _rms_norm(block.pre_attention_norm, x), tables, masks, cache, pick)
        if block.use_post_attention_norm:
            attn = _rms_norm(block.post_attention_norm, attn)
        if pick is not None:
            x = x[pick][:, None]
        x = x + attn
        h = _rms_norm(block.pre_ffw_norm, x)
        h = _gelu_gate(_dense(h, block.gating_ffw), _dense(h, block.gating_ffw_2))
        h = _dense(h, block.ffw_linear)
        if block.use_post_ffw_norm:
            h = _rms_norm(block.post_ffw_norm, h)
        return x + h, new

    def _run(self, x, padding_mask, caches=None, last=None, first=0, stop=None):
        """Blocks `first` .. `stop` - 1 (default: to the end) over hidden states `x` ([b, t, d]), after a
        cached prefix (`caches`: its keys and values for those blocks, in order). Returns the hidden
        states and each block's (keys, values) of these tokens: with `stop`, the hidden states after
        block stop - 1 at every position; with `last`, the last block's output at each row's `last`
        position before the final norm ([b, d]); with neither (the prefix pass), None.

        Only keys and values of the last layer are needed at other positions, so its queries,
        output projection and FFN run at one position a row (18 layers: about 5% of the FLOPs).
        """
        b, t = x.shape[:2]
        start = 0 if caches is None else caches[0][0].shape[2]
        key_valid = padding_mask.bool()
        if start:
            key_valid = torch.cat((key_valid.new_ones(b, start), key_valid), dim=1)
        tables = self._tables(start, t, x.device)
        masks = self._masks(key_valid, start, t)
        final, kv = len(self.blocks) - 1, []
        for i in range(first, final if stop is None else stop):
            x, new = self._block(self.blocks[i], i, x, tables, masks, None if caches is None else caches[i - first])
            kv.append(new)
        if stop is not None:
            return x, kv
        block, cache = self.blocks[final], None if caches is None else caches[final - first]
        if last is None:  # the prefix pass: the last layer's keys and values are all that is kept
            kv.append(_keys_values(block.attention, _rms_norm(block.pre_attention_norm, x), tables[final]))
            return None, kv
        x, new = self._block(block, final, x, tables, masks, cache, (torch.arange(b, device=x.device), last))
        kv.append(new)
        return x[:, 0], kv

    def prefix_cache(self, prefix: list[int], device=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's rotated keys and values of the shared prefix, [1, kv_heads, length, head_dim]."""
        ids = torch.tensor([prefix], dtype=torch.int32, device=device)
        return self._run(self._embed(ids), torch.ones_like(ids, dtype=torch.bool))[1]

    def hidden_states(self, token_ids, padding_mask, stop: int, caches=None):
        """The hidden states after the first `stop` blocks ([b, t, d]) and those blocks' keys and values:
        what a trainer that leaves the blocks below `stop` frozen computes once, not every step."""
        return self._run(self._embed(token_ids), padding_mask, caches, stop=stop)

    def prefix_cache_from(self, hidden: torch.Tensor, first: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`prefix_cache` for blocks `first` .. the last, from the prefix's hidden states there ([1, t, d])."""
        return self._run(hidden, torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device),
                         first=first)[1]

    def label_logits(self, token_ids, padding_mask, label_ids, caches=None, hidden=None, first=0) -> torch.Tensor:
        """[batch, n_labels] float32 logits at each row's last real token (rows follow `caches` if given).
        With `hidden` (the rows' hidden states after block first - 1) the blocks below `first` are skipped."""
        x = self._embed(token_ids) if hidden is None else hidden
        x, _ = self._run(x, padding_mask, caches, last=padding_mask.sum(dim=1) - 1, first=first)
        rows = _rms_norm(self.backbone.layer_norm, x)
        key = (tuple(label_ids), x.device)
        if key not in self._label_index:  # copied to the device once, not per call
            self._label_index[key] = torch.as_tensor(label_ids, device=x.device)
        weights = self.backbone.token_embedding.embeddings.value[self._label_index[key]]
        logits = rows.float() @ weights.float().T
        cap = self.backbone.final_logit_soft_cap
        return torch.tanh(logits / cap) * cap if cap else logits
