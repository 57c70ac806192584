"""Attention capture and knockout, as one attention function of transformers' registry.

``toolattn_attention`` is registered under the name ``"toolattn"`` (``AttentionInterface``) and a
model is switched to it only inside ``use_toolattn(model)``. It computes each layer's usual output
(transformers' sdpa function; the same math written out when a knockout or a logit softcap is
active) and reads two optional requests from the keyword arguments of the decoder call, which
transformers hands to the attention function of every layer:

* capture -- ``capture=<Capture>``, ``capture_rows=LongTensor [batch, q_sel]`` (query indices
  within the current input): the post-softmax attention of every head for just those query rows,
  over all keys (cached prefix included), ``[batch, heads, q_sel, keys]`` per layer.
* knockout -- ``knockout_heads=BoolTensor [layers, heads]`` (or ``[batch, layers, heads]``: a
  different set per row), ``knockout_keys=BoolTensor [batch, n]`` (key positions, ``n <= keys``; keys
  past ``n`` are never knocked out) and ``knockout_from=LongTensor [batch]`` (first query index of the
  current input that is affected): -1e9 is added to the pre-softmax logits of the chosen heads at
  those keys, for affected queries.
* attribution -- ``atp_alpha=FloatTensor [layers, heads]`` (a leaf that requires grad) with
  ``knockout_keys`` / ``knockout_from``: every head's pattern becomes ``A + alpha * (A_ko - A)``,
  where ``A_ko`` is its exact knocked-out pattern; at ``alpha = 0`` the output is the clean one and
  ``d output / d alpha[l, h]`` is the attribution-patching estimate of knocking out head ``h``.

Both work through ``ToolChoiceEngine.score(..., forward_kwargs=...)``::

    with capture_attention(model) as cap:
        engine.score(requests, tools, forward_kwargs=cap.kwargs_for(decision_rows))
    cap.weights  # per batch: [layers, batch, heads, keys]

    with use_toolattn(model):
        engine.score(requests, tools, forward_kwargs=knockout_kwargs(heads, description_keys))
"""

from __future__ import annotations

import contextlib

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

from .prompts import Formatted

NAME = "toolattn"
KNOCKOUT_BIAS = -1e9


def toolattn_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                       softcap=None, capture=None, capture_rows=None, knockout_heads=None, knockout_keys=None,
                       knockout_from=None, atp_alpha=None, shared_kv=None, **kwargs):
    """One layer's attention: ``query [batch, heads, q, d]``, ``key/value [batch, kv_heads, n, d]``,
    ``attention_mask`` bool (True = may attend) or additive float ``[batch, 1, q, keys]`` or None (causal).

    ``shared_kv``: per layer ``(keys, values) [batch', kv_heads, P, d]`` that come before the rows' own keys
    (a prefix that ``batch' `` divides the batch into: row r reads entry ``r // (batch / batch')``); the
    layer then attends over ``keys = P + n`` keys without copying the shared ones per row (``shared_attention``),
    and masks, knockout keys and captured attention index that whole ``[shared | own]`` key axis.
    Returns ``(output [batch, q, heads, d], None)`` like transformers' own functions.
    """
    layer = module.layer_idx
    shared = None if shared_kv is None else shared_kv[layer]
    q, k = query.shape[2], key.shape[2] + (0 if shared is None else shared[0].shape[2])
    bias = None
    if atp_alpha is not None:
        mask = _causal(attention_mask, q, k, query.device)
        clean = attention_probs(module, query, key, mask, scaling, softcap, shared=shared)  # [batch, heads, q, keys]
        every = torch.ones(query.shape[1], dtype=torch.bool, device=query.device)
        knocked = attention_probs(module, query, key, mask, scaling, softcap,
                                  knockout_bias(every, knockout_keys, knockout_from, q, k, device=query.device),
                                  shared=shared)
        probs = clean + atp_alpha[layer].to(query.device)[None, :, None, None] * (knocked - clean)
        return _weighted(module, probs, value, shared), None
    if knockout_heads is not None:
        heads = knockout_heads[layer] if knockout_heads.dim() == 2 else knockout_heads[:, layer]
        if bool(heads.any()):
            bias = knockout_bias(heads, knockout_keys, knockout_from, q, k, device=query.device)
    if bias is None and softcap is None and shared is not None:
        out = shared_attention(module, query, key, value, shared, _causal(attention_mask, q, k, query.device), scaling)
    elif bias is None and softcap is None:
        out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                        scaling=scaling, **kwargs)
    else:
        probs = attention_probs(module, query, key, _causal(attention_mask, q, k, query.device), scaling, softcap,
                                bias, shared=shared)
        out = _weighted(module, probs, value, shared)
    if capture is not None and capture_rows is not None:
        rows = capture_rows.to(query.device)  # [batch, q_sel]
        mask = _rows(_causal(attention_mask, q, k, query.device), rows)
        capture.record(layer, attention_probs(module, _rows(query, rows), key, mask, scaling, softcap,
                                              None if bias is None else _rows(bias, rows), shared=shared))
    return out, None


def shared_attention(module, query, key, value, shared, mask, scaling=None) -> torch.Tensor:
    """Softmax attention over ``[shared | own]`` keys, the shared keys read once for all rows.

    ``query [B, H, q, d]``; own ``key/value [B, kvh, n, d]``; ``shared = (keys, values) [B', kvh, P, d]``
    (``B' `` divides ``B``: R = B / B' rows per entry); ``mask [B or 1, 1, q, P + n]`` bool or additive.
    Grouped-query heads stay grouped (G = H / kvh query heads per key head): the shared part is one
    attention of ``[B', kvh, R*G*q, d]`` queries on ``[B', kvh, P, d]`` keys -- torch's fused kernel,
    which also gives its log-sum-exp, when every query sees every shared key (``_fused``), else written
    out with the mask -- and the own part is written out; the two are merged by their log-sum-exps
    (the softmax over the concatenation), in float32. Returns ``[B, q, H, d]``.
    """
    if scaling is None:
        scaling = module.head_dim ** -0.5
    ks, vs = shared
    B, H, q, d = query.shape
    Bs, kvh, P, _ = ks.shape
    R, G, n = B // Bs, H // kvh, key.shape[2]
    mask = mask.expand(B, 1, q, P + n)
    ms = mask[..., :P].reshape(Bs, R, 1, q, P).transpose(1, 2)[:, :, :, None]  # [B', 1, R, 1, q, P]
    mo = mask[..., P:][:, :, None]  # [B, 1, 1, q, n]
    boolean = mask.dtype == torch.bool
    fused = _fused(query) if boolean and bool(ms.all()) else None
    if fused is not None:  # normalised output and log-sum-exp of the shared part
        qs = query.reshape(Bs, R, kvh, G * q, d).transpose(1, 2).reshape(Bs, kvh, R * G * q, d)
        out_s, lse_s = fused(qs, ks, vs, scaling)
        out_s, lse_s = out_s.float().view(Bs, kvh, R, G, q, d), lse_s.float().view(Bs, kvh, R, G, q)
    query = query * scaling  # scaled once, before the matmuls (cheaper than scaling logits)
    if fused is None:
        qs = query.reshape(Bs, R, kvh, G * q, d).transpose(1, 2).reshape(Bs, kvh, R * G * q, d)
        ls = torch.matmul(qs, ks.transpose(2, 3)).float().view(Bs, kvh, R, G, q, P)
        if not boolean:
            ls = ls + ms.float()
        elif not bool(ms.all()):
            ls = ls.masked_fill(~ms, float("-inf"))
    lo = torch.matmul(query.reshape(B, kvh, G * q, d), key.transpose(2, 3)).float().view(B, kvh, G, q, n)
    lo = lo.masked_fill(~mo, float("-inf")) if boolean else lo + mo.float()
    lo = lo.view(Bs, R, kvh, G, q, n).transpose(1, 2)  # [B', kvh, R, G, q, n]
    top = torch.maximum(lse_s if fused is not None else ls.amax(-1), lo.amax(-1))
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # a row that sees no key: 0
    eo = (lo - top[..., None]).exp_()
    if fused is not None:
        ws = (lse_s - top).exp_()
        total, out = ws + eo.sum(-1), out_s * ws[..., None]
    else:
        es = ls.sub_(top[..., None]).exp_()  # ls is a fresh tensor: in place
        total = es.sum(-1) + eo.sum(-1)
        out = torch.matmul(es.view(Bs, kvh, R * G * q, P).to(vs.dtype), vs).view(Bs, kvh, R, G, q, d).float()
    own = torch.matmul(eo.transpose(1, 2).reshape(B, kvh, G * q, n).to(value.dtype), value)
    out = (out + own.view(Bs, R, kvh, G, q, d).transpose(1, 2).float())
    out = out / total.clamp_min(torch.finfo(torch.float32).tiny)[..., None]  # [B', kvh, R, G, q, d]
    return out.permute(0, 2, 4, 1, 3, 5).reshape(B, q, H, d).to(query.dtype)


def _fused(query):
    """torch's fused flash-attention kernel, which also returns the log-sum-exp, where it serves
    ``query``'s device and dtype: ``fn(q, k, v, scale) -> (output, logsumexp)`` on ``[batch, heads, n, d]``
    tensors with as many query as key heads. CUDA in bf16/fp16 only; None elsewhere (the written-out
    path: on the CPU it is the one the pinned fast numbers come from)."""
    if query.device.type == "cuda" and query.dtype in (torch.float16, torch.bfloat16) and query.shape[-1] <= 256:
        op = torch.ops.aten._scaled_dot_product_flash_attention
        return lambda q, k, v, scale: op(q, k.contiguous(), v.contiguous(), 0.0, False, False, scale=scale)[:2]
    return None


def _weighted(module, probs, value, shared) -> torch.Tensor:
    """``probs [B, H, q, keys]`` applied to the values (``[shared | own]`` when ``shared``) -> ``[B, q, H, d]``."""
    G = module.num_key_value_groups
    if shared is None:
        out = torch.matmul(probs.to(value.dtype), repeat_kv(value, G))
        return out.transpose(1, 2).contiguous()
    vs = shared[1]
    P, B, Bs = vs.shape[2], probs.shape[0], vs.shape[0]
    own = torch.matmul(probs[..., P:].to(value.dtype), repeat_kv(value, G))  # [B, H, q, d]
    R, H, q = B // Bs, probs.shape[1], probs.shape[2]
    ps = probs[..., :P].reshape(Bs, R, H, q, P).transpose(1, 2).reshape(Bs, H, R * q, P)
    out = torch.matmul(ps.to(vs.dtype), repeat_kv(vs, G)).view(Bs, H, R, q, -1).transpose(1, 2)
    return (out.reshape(B, H, q, -1) + own).transpose(1, 2).contiguous()


def attention_probs(module, query, key, attention_mask, scaling=None, softcap=None, bias=None, shared=None):
    """Post-softmax attention ``[batch, heads, q, keys]`` (float32), as eager attention computes it.

    ``attention_mask``: bool (True = may attend) or additive float, ``[batch or 1, 1, q, keys]``;
    ``bias [batch, heads, q, keys]`` (knockout) is added after the softcap; ``shared``: keys/values before
    the own keys (``toolattn_attention``), so ``keys = P + n``.
    """
    if scaling is None:
        scaling = module.head_dim ** -0.5
    G = module.num_key_value_groups
    logits = torch.matmul(query.float(), repeat_kv(key, G).float().transpose(2, 3)) * scaling
    if shared is not None:  # the shared keys, once per entry of shared: [B', H, R * q, P] -> [B, H, q, P]
        ks = shared[0]
        B, H, q, _ = query.shape
        Bs, P = ks.shape[0], ks.shape[2]
        qs = query.reshape(Bs, B // Bs, H, q, -1).transpose(1, 2).reshape(Bs, H, -1, query.shape[3])
        ls = torch.matmul(qs.float(), repeat_kv(ks, G).float().transpose(2, 3)) * scaling
        ls = ls.view(Bs, H, B // Bs, q, P).transpose(1, 2).reshape(B, H, q, P)
        logits = torch.cat([ls, logits], -1)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    if bias is not None:
        logits = logits + bias
    if attention_mask.dtype == torch.bool:
        logits = logits.masked_fill(~attention_mask, float("-inf"))
    else:
        logits = logits + attention_mask.float()
    return torch.softmax(logits, dim=-1)


def knockout_bias(heads, keys, start, q: int, k: int, device=None) -> torch.Tensor:
    """Additive float32 logits ``[batch, heads, q, keys]`` on ``device`` (default: that of ``keys``):
    -1e9 where the head is knocked out (``heads [heads]``, or ``[batch, heads]`` per row), the key is in
    ``keys [batch, n]`` and the query index is at or after ``start [batch]``."""
    device = keys.device if device is None else device
    keys = keys.to(device)
    batch = keys.shape[0]
    key_mask = torch.zeros(batch, k, dtype=torch.bool, device=device)
    key_mask[:, : keys.shape[1]] = keys[:, :k]
    query_mask = torch.arange(q, device=device)[None, :] >= start.to(device)[:, None]  # [batch, q]
    heads = heads.to(device)
    heads = heads[None] if heads.dim() == 1 else heads  # [batch or 1, heads]
    hit = heads[:, :, None, None] & query_mask[:, None, :, None] & key_mask[:, None, None, :]
    return hit.float() * KNOCKOUT_BIAS


def _causal(mask, q: int, k: int, device=None):
    """``mask``, or (when None) the causal mask ``[1, 1, q, keys]`` of queries that are the last q keys
    (transformers leaves the mask out only when that is all it would say: q == keys, or q == 1)."""
    if mask is not None:
        return mask
    return (torch.arange(k, device=device)[None, :] <= torch.arange(k - q, k, device=device)[:, None])[None, None]


def _rows(x, rows):
    """Rows ``rows [batch, q_sel]`` of dim 2 of ``x [batch or 1, n, q, ...]`` -> ``[batch, n, q_sel, ...]``."""
    x = x.expand(rows.shape[0], *x.shape[1:])
    return torch.gather(x, 2, rows[:, None, :, None].expand(-1, x.shape[1], -1, x.shape[3]))


# --- switching a model ------------------------------------------------------------------------

def register() -> None:
    """Make ``"toolattn"`` a known attention implementation (with eager-style full 4-D masks)."""
    AttentionInterface.register(NAME, toolattn_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, eager_mask)


def _attn_configs(model):
    cfg = model.config
    return [cfg] + [c for c in (getattr(cfg, "text_config", None),) if c is not None and c is not cfg]


@contextlib.contextmanager
def use_toolattn(model):
    """Run ``model`` on ``toolattn_attention`` inside the block; restore its implementation after."""
    register()
    configs = _attn_configs(model)
    before = [c._attn_implementation for c in configs]
    for c in configs:
        c._attn_implementation = NAME
    try:
        yield model
    finally:
        for c, b in zip(configs, before):
            c._attn_implementation = b


# --- capture ------------------------------------------------------------------------------------

class Capture:
    """Collects captured attention: ``weights`` holds one tensor per decoder call (engine batch),
    ``[layers, batch, heads, keys]`` (one row per request) or ``[layers, batch, heads, q_sel, keys]``."""

    def __init__(self):
        self.weights: list[torch.Tensor] = []
        self._layers: dict[int, torch.Tensor] = {}
        self._squeeze = False

    def record(self, layer: int, probs: torch.Tensor) -> None:
        """``probs [batch, heads, q_sel, keys]`` of one layer; a layer seen again starts the next decoder call."""
        if layer in self._layers:
            self.flush()
        self._layers[layer] = probs.detach().float().cpu()  # float32 on the CPU, whatever ran

    def flush(self) -> None:
        if self._layers:
            w = torch.stack([self._layers[i] for i in sorted(self._layers)])
            self.weights.append(w[..., 0, :] if self._squeeze else w)
            self._layers = {}

    def kwargs_for(self, rows_fn):
        """``forward_kwargs`` for the engine: ``rows_fn(batch, prefix_len)`` gives the query rows to
        capture, LongTensor ``[batch]`` (one per request) or ``[batch, q_sel]``."""

        def fn(batch: list[Formatted], prefix_len: int) -> dict:
            self.flush()
            rows = torch.as_tensor(rows_fn(batch, prefix_len), dtype=torch.long)
            self._squeeze = rows.dim() == 1
            return {"capture": self, "capture_rows": rows[:, None] if self._squeeze else rows}

        return fn

    @property
    def nbytes(self) -> int:
        """Bytes held by the captured tensors."""
        self.flush()
        return sum(w.numel() * w.element_size() for w in self.weights)


@contextlib.contextmanager
def capture_attention(model):
    """``with capture_attention(model) as cap:`` -- switch to ``toolattn_attention`` and collect into ``cap``."""
    cap = Capture()
    with use_toolattn(model):
        yield cap
    cap.flush()


def decision_rows(batch: list[Formatted], prefix_len: int) -> torch.Tensor:
    """Query index of each request's decision position in the engine's input, ``[batch]``."""
    return torch.tensor([f.decision_position - prefix_len for f in batch])


# --- knockout -------------------------------------------------------------------------------------

def description_keys(batch: list[Formatted]) -> torch.Tensor:
    """Every tool-description token, ``[batch, tool_block_end]`` bool."""
    n = max(f.tool_block_end for f in batch)
    keys = torch.zeros(len(batch), n, dtype=torch.bool)
    for b, f in enumerate(batch):
        for t in f.tools:
            keys[b, t.description_span[0] : t.description_span[1]] = True
    return keys


def span_keys(batch: list[Formatted]) -> torch.Tensor:
    """Every tool's name and description tokens, ``[batch, tool_block_end]`` bool."""
    keys = description_keys(batch)
    for b, f in enumerate(batch):
        for t in f.tools:
            keys[b, t.name_span[0] : t.name_span[1]] = True
    return keys


def block_keys(batch: list[Formatted]) -> torch.Tensor:
    """The whole tool listing, from the first tool's first token to the end of the tool block,
    ``[batch, tool_block_end]`` bool."""
    n = max(f.tool_block_end for f in batch)
    keys = torch.zeros(len(batch), n, dtype=torch.bool)
    for b, f in enumerate(batch):
        keys[b, min(t.span[0] for t in f.tools) : f.tool_block_end] = True
    return keys


KEYS = {"desc": description_keys, "span": span_keys, "block": block_keys}


def knockout_kwargs(heads: torch.Tensor, keys_fn=description_keys):
    """``forward_kwargs`` that knock out ``heads [layers, heads]`` (bool) toward ``keys_fn(batch)``
    (``[batch, n]`` bool key positions) for every query at or after the tool block end."""

    def fn(batch: list[Formatted], prefix_len: int) -> dict:
        start = torch.tensor([max(f.tool_block_end - prefix_len, 0) for f in batch])
        return {"knockout_heads": heads.bool(), "knockout_keys": keys_fn(batch), "knockout_from": start}

    return fn


def combine(*fns):
    """Merge several ``forward_kwargs`` functions (e.g. capture under a knockout)."""
    return lambda batch, prefix_len: {k: v for fn in fns for k, v in fn(batch, prefix_len).items()}


__all__ = ["toolattn_attention", "attention_probs", "use_toolattn", "capture_attention", "Capture",
           "decision_rows", "description_keys", "span_keys", "block_keys", "KEYS", "knockout_kwargs", "combine", "register"]
