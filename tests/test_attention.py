"""Attention capture equals eager attention; knockout equals masking keys out (tiny models)."""


import pytest
import torch


from toolattn.attention import (capture_attention, combine, decision_rows, description_keys, knockout_kwargs,
                                use_toolattn)
from toolattn.models import model_dims
from toolattn.layout import Layout
from toolattn.scoring import ToolChoiceEngine, layer_types

# Prompts exceed the tiny Gemma3 sliding window (32 tokens) many times over, so sliding layers matter.
REQUESTS = [
    "What's the weather in Paris today?",
    "Look up the history of the Eiffel tower on the web, I need it for homework and a lot more detail",
    "Translate 'good night' into Spanish",
]


_EAGER: dict = {}  # (model, prompt) -> reference attention, shared by the tests


def eager_decision_attention(lm, f) -> torch.Tensor:
    """Reference: ``output_attentions`` of a full eager forward, at the decision position, ``[layers, heads, keys]``."""
    key = (lm.name, f.text)
    if key not in _EAGER:
        _EAGER[key] = _eager(lm, f)
    return _EAGER[key]


def _eager(lm, f) -> torch.Tensor:
    before = lm.model.config._attn_implementation
    lm.model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            out = lm.model(input_ids=torch.tensor([f.input_ids], device=lm.model.device), output_attentions=True)
    finally:
        lm.model.set_attn_implementation(before)
    return torch.stack([a[0, :, f.decision_position] for a in out.attentions]).float().cpu()


def full_masks(lm, f, knocked: torch.Tensor | None = None) -> dict:
    """Boolean masks of a full forward; ``knocked [keys]`` removes those keys for queries after the tool block."""
    n = len(f.input_ids)
    masks = Layout.span(0, length=n, device=lm.model.device).masks(lm.model)
    if knocked is not None:
        for m in masks.values():
            m[0, 0, f.tool_block_end:, : len(knocked)] &= ~knocked.to(m.device)
    return masks


def forward_logits(lm, ids, masks=None, **kwargs) -> torch.Tensor:
    n = len(ids)
    with torch.inference_mode():
        dev = lm.model.device
        return lm.model(input_ids=torch.tensor([ids], device=dev), attention_mask=masks,
                        position_ids=torch.arange(n, device=dev)[None], **kwargs).logits[0].float().cpu()


def heads_mask(lm, value: bool) -> torch.Tensor:
    d = model_dims(lm.model)
    return torch.full((d["layers"], d["heads"]), value)


def one_head(lm) -> torch.Tensor:
    """Head 2 of the last full-attention layer (a sliding layer cannot see the tool block from the decision)."""
    heads = heads_mask(lm, False)
    heads[max(i for i, t in enumerate(layer_types(lm.model)) if t == "full_attention"), 2] = True
    return heads


def test_capture_equals_eager_full_forward(tiny, tools):
    engine = ToolChoiceEngine(tiny, progress=False)
    f = engine.formatter.format(REQUESTS[1], tools)
    assert len(f.input_ids) > 4 * 32
    with capture_attention(tiny.model) as cap:
        kw = cap.kwargs_for(decision_rows)([f], 0)
        forward_logits(tiny, f.input_ids, **kw)
    got = cap.weights[0][:, 0]  # [layers, heads, keys]
    ref = eager_decision_attention(tiny, f)
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=1e-5), (tiny.name, (got - ref).abs().max())
    assert torch.allclose(got.sum(-1), torch.ones(()), atol=1e-5)
    assert tiny.model.config._attn_implementation == "sdpa"  # restored


@pytest.mark.parametrize("prefix_end", ["shared", "tool_block"])
def test_capture_through_engine(tiny, tools, prefix_end):
    engine = ToolChoiceEngine(tiny, batch_size=2, progress=False, prefix_end=prefix_end)
    plain = engine.score(REQUESTS, tools)
    with capture_attention(tiny.model) as cap:
        captured = engine.score(REQUESTS, tools, forward_kwargs=cap.kwargs_for(decision_rows))
    for a, b in zip(plain, captured):  # a plain score batches by length, a captured one in request order:
        assert a.logprobs == pytest.approx(b.logprobs, rel=1e-6, abs=1e-6)  # float32 noise of other shapes
    weights = [w[:, b] for w in cap.weights for b in range(w.shape[1])]  # each [layers, heads, keys]
    assert len(weights) == len(REQUESTS)
    assert cap.nbytes == sum(w.numel() * 4 for w in cap.weights)
    for r, w in zip(REQUESTS, weights):
        f = engine.formatter.format(r, tools)
        n = len(f.input_ids)
        ref = eager_decision_attention(tiny, f)
        # keys: [prefix | request suffix, right-padded | packed candidates]; only the prompt is visible
        assert torch.allclose(w[..., :n], ref, atol=1e-5), (tiny.name, r, (w[..., :n] - ref).abs().max())
        assert float(w[..., n:].abs().max()) == 0.0


def test_knockout_every_head_equals_masking_keys(tiny, tools):
    engine = ToolChoiceEngine(tiny, progress=False)
    f = engine.formatter.format(REQUESTS[0], tools)
    keys = description_keys([f])
    with use_toolattn(tiny.model):
        got = forward_logits(tiny, f.input_ids, full_masks(tiny, f),
                             **knockout_kwargs(heads_mask(tiny, True))([f], 0))
    ref = forward_logits(tiny, f.input_ids, full_masks(tiny, f, keys[0]))
    plain = forward_logits(tiny, f.input_ids, full_masks(tiny, f))
    assert torch.allclose(got, ref, atol=1e-4), (tiny.name, (got - ref).abs().max())
    assert (got - plain)[f.tool_block_end:].abs().max() > 1e-2  # the knockout does something
    assert torch.allclose(got[: f.tool_block_end], plain[: f.tool_block_end], atol=1e-4)  # not before the block end


def test_knockout_through_engine_equals_masking_keys(tiny, tools):
    """Forced choice with every head knocked out equals a full forward per candidate with the keys masked."""
    engine = ToolChoiceEngine(tiny, batch_size=2, progress=False, prefix_end="tool_block")
    with use_toolattn(tiny.model):
        got = engine.score(REQUESTS[:2], tools, forward_kwargs=knockout_kwargs(heads_mask(tiny, True)))
    for r, choice in zip(REQUESTS[:1], got[:1]):  # the shorter, right-padded row of the batch
        f = engine.formatter.format(r, tools)
        keys = description_keys([f])[0]
        for t in tools[:3]:
            ids = f.input_ids + engine.formatter.candidate_ids(f, t.name)
            f_full = type(f)(f.text, ids, f.prompt_len, f.prefix_len, f.tool_block_end, f.tools)
            logp = torch.log_softmax(forward_logits(tiny, ids, full_masks(tiny, f_full, keys)), -1)
            n = len(f.input_ids)
            ref = float(sum(logp[i - 1, ids[i]] for i in range(n, len(ids))))
            assert choice.logprobs[t.name] == pytest.approx(ref, abs=1e-3), (tiny.name, r, t.name)


def test_knockout_zero_heads_changes_nothing_one_head_changes(tiny, tools):
    engine = ToolChoiceEngine(tiny, batch_size=3, progress=False)
    plain = engine.score(REQUESTS, tools)
    one = one_head(tiny)
    with use_toolattn(tiny.model):
        none_out = engine.score(REQUESTS, tools, forward_kwargs=knockout_kwargs(heads_mask(tiny, False)))
        one_out = engine.score(REQUESTS, tools, forward_kwargs=knockout_kwargs(one))
    for a, b in zip(plain, none_out):
        assert a.logprobs == b.logprobs
    assert max(abs(a.logprobs[t.name] - c.logprobs[t.name]) for a, c in zip(plain, one_out) for t in tools) > 1e-3


def test_capture_under_knockout_sees_no_description(tiny, tools):
    engine = ToolChoiceEngine(tiny, batch_size=3, progress=False)
    one = one_head(tiny)
    with capture_attention(tiny.model) as cap:
        engine.score(REQUESTS, tools, forward_kwargs=combine(cap.kwargs_for(decision_rows), knockout_kwargs(one)))
    f = engine.formatter.format(REQUESTS[0], tools)
    keys = description_keys([f])[0]
    w = cap.weights[0][:, 0, :, : len(keys)]  # [layers, heads, tool-block keys]
    layer = int(one.any(1).nonzero()[0])
    assert float(w[layer, 2][keys].sum()) < 1e-6
    assert float(w[layer, 1][keys].sum()) > 1e-3


# --- shared keys: the prefix read once for all rows ---------------------------------------------------

class _Module:
    """What an attention function reads from its layer module."""

    def __init__(self, heads: int, kv_heads: int, head_dim: int):
        self.layer_idx, self.head_dim = 0, head_dim
        self.num_key_value_groups = heads // kv_heads
        self.is_causal = True


@pytest.mark.parametrize("entries", [1, 3])
@pytest.mark.parametrize("additive", [False, True])
@pytest.mark.parametrize("prefix_visible", [False, True])
def test_shared_keys_equal_keys_copied_per_row(entries, additive, prefix_visible):
    """Attention over ``[shared | own]`` keys, the shared ones passed once per entry (``shared_kv``), equals
    transformers' sdpa on the same keys copied into every row: GQA, entries shared by several rows, prefix
    keys masked out for some rows (padding, sliding windows), a query that sees no key at all, knockout
    (probs path) and captured attention; shared keys given as a slice of a longer cache, as the knockout
    does. (The fused-kernel path of CUDA bf16 is tested in test_device.)"""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from toolattn.attention import Capture, attention_probs, toolattn_attention

    g = torch.Generator().manual_seed(0)
    H, kvh, d, P, n, q = 6, 2, 8, 11, 5, 4
    B = 2 * entries
    mod = _Module(H, kvh, d)
    query = torch.randn(B, H, q, d, generator=g)
    ks, vs = torch.randn(entries, kvh, P + 3, d, generator=g), torch.randn(entries, kvh, P + 3, d, generator=g)
    ks, vs = ks[:, :, :P], vs[:, :, :P]  # not contiguous
    key, value = torch.randn(B, kvh, n, d, generator=g), torch.randn(B, kvh, n, d, generator=g)
    full_k = torch.cat([ks.repeat_interleave(B // entries, 0), key], 2)
    full_v = torch.cat([vs.repeat_interleave(B // entries, 0), value], 2)
    mask = torch.rand(B, 1, q, P + n, generator=g) > 0.3
    mask[..., 0] = True  # every query sees a key ...
    mask[0, 0, 1] = False  # ... but this one (its output is defined as zero here; sdpa's is not compared)
    if prefix_visible:
        mask[..., :P] = True
    seen = mask.any(-1)[:, 0]  # [B, q]
    m = torch.where(mask, 0.0, -1e30) if additive else mask
    want, _ = sdpa_attention_forward(mod, query, full_k, full_v, m, scaling=d ** -0.5)
    got, _ = toolattn_attention(mod, query, key, value, m, shared_kv=[(ks, vs)])
    assert got.shape == want.shape == (B, q, H, d)
    assert torch.allclose(got[seen], want[seen], atol=1e-5)  # [B, q] rows of [B, q, H, d]
    if not additive and not prefix_visible:  # a query that sees no key: zero, not NaN (additive: uniform)
        assert torch.equal(got[0, 1], torch.zeros(H, d))
    probs = attention_probs(mod, query, full_k, mask)
    shared_probs = attention_probs(mod, query, key, mask, shared=(ks, vs))
    ok = seen[:, None, :, None].expand_as(probs)
    assert torch.allclose(shared_probs[ok], probs[ok], atol=1e-6)
    # knockout (the probs path) and capture index the whole [shared | own] key axis
    heads = torch.zeros(1, H, dtype=torch.bool)
    heads[0, 1] = True
    ko = dict(knockout_heads=heads, knockout_keys=torch.ones(B, 3, dtype=torch.bool),
              knockout_from=torch.zeros(B, dtype=torch.long))
    cap_a, cap_b = Capture(), Capture()
    rows = torch.full((B, 1), q - 1)
    want, _ = toolattn_attention(mod, query, full_k, full_v, mask, capture=cap_a, capture_rows=rows, **ko)
    got, _ = toolattn_attention(mod, query, key, value, mask, shared_kv=[(ks, vs)], capture=cap_b, capture_rows=rows, **ko)
    cap_a.flush(), cap_b.flush()
    assert torch.allclose(got[seen], want[seen], atol=1e-5)
    assert torch.allclose(cap_b.weights[0], cap_a.weights[0], atol=1e-6)
    assert float(cap_b.weights[0][0, :, 1, 0, :3].sum()) < 1e-6  # [layers, B, H, rows, keys]: head 1 sees none of those keys
