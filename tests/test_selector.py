"""The attention selector: shares are the captured attention renormalised over the tools, calibration
removes what a head pays a position whatever is asked, the combination rule keeps the model's choice
unless the selector leads by more than the margin, and ``select_tool`` is that rule on a real forward."""

import numpy as np
import pytest

from test_attention import eager_decision_attention
from toolattn.models import load_model
from toolattn.scoring import ToolChoiceEngine
from toolattn.selector import (NEUTRAL_REQUEST, combined_choice, head_columns, read_shares, select_tool,
                               selector_scores)


def test_shares_are_the_captured_attention_on_each_tool(tools):
    """Shares equal the decision row's attention summed over each tool's tokens, over the tools' total;
    captured with the engine's batched, prefix-cached pass, compared with one eager forward per request."""
    lm = load_model("tiny-qwen2")
    engine = ToolChoiceEngine(lm, batch_size=3, progress=False)
    texts = ["What's the weather in Oslo?", "Email Ana the report", NEUTRAL_REQUEST]
    _, shares, block = read_shares(engine, texts, tools[:4])
    assert shares.shape == (3, 4, lm.model.config.num_hidden_layers * lm.model.config.num_attention_heads)
    assert np.allclose(shares.sum(1), 1.0, atol=1e-5)
    for i, text in enumerate(texts):
        f = engine.formatter.format(text, tools[:4])
        w = eager_decision_attention(lm, f).numpy()  # [L, H, keys]
        mass = np.stack([w[..., a:b].sum(-1) for a, b in (t.span for t in f.tools)], 0)  # [tools, L, H]
        expect = (mass / mass.sum(0, keepdims=True)).reshape(4, -1)
        assert np.allclose(shares[i], expect, atol=1e-4)
        start = min(t.name_span[0] for t in f.tools)
        assert np.allclose(block[i], w[..., start : f.tool_block_end].sum(-1).reshape(-1), atol=1e-4)


def test_calibration_removes_a_positional_pattern():
    """A head that pays the first listed tool most whatever is asked, plus a small pull toward the gold:
    uncalibrated it picks the first tool, calibrated it picks the gold."""
    rng = np.random.default_rng(0)
    n, T = 40, 5
    position = np.array([0.6, 0.1, 0.1, 0.1, 0.1])
    gold = rng.integers(1, T, n)
    shares = np.tile(position, (n, 1))
    shares[np.arange(n), gold] += 0.2
    shares = (shares / shares.sum(1, keepdims=True))[..., None]  # [n, T, 1 head]
    neutral = position[:, None]
    assert (selector_scores(shares, [0]).argmax(1) == 0).all()
    assert (selector_scores(shares, [0], neutral).argmax(1) == gold).all()


def test_combination_keeps_the_model_unless_the_lead_is_large():
    scores = np.array([[0.5, 0.1, 0.0], [0.2, 0.25, 0.0], [0.0, 0.0, 0.9]])
    model = np.array([1, 0, 2])
    assert (combined_choice(model, scores, np.inf) == model).all()
    assert combined_choice(model, scores, 0.3).tolist() == [0, 0, 2]  # lead 0.4 > 0.3; lead 0.05 is not
    assert combined_choice(model, scores, 0.0).tolist() == [0, 1, 2]


def test_head_columns():
    assert head_columns([(0, 0), (2, 3)], 4) == [0, 11]


@pytest.mark.parametrize("name", ["tiny-qwen2", "tiny-gemma3"])
def test_select_tool_ranks_by_the_heads_calibrated_shares(name, tools):
    """``select_tool`` returns every tool once, best first, with the scores of ``selector_scores`` on the
    shares of the request and of the content-free request read in one engine pass."""
    lm = load_model(name)
    heads = [(0, 1), (1, 0)]
    ranked = select_tool(lm, "Translate 'hello' to French", tools[:5], heads)
    assert sorted(n for n, _ in ranked) == sorted(t.name for t in tools[:5])
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
    _, shares, _ = read_shares(ToolChoiceEngine(lm, progress=False), ["Translate 'hello' to French", NEUTRAL_REQUEST],
                               tools[:5])
    H = lm.model.config.num_attention_heads
    expect = selector_scores(shares[:1], head_columns(heads, H), shares[1])[0]
    assert dict(ranked) == pytest.approx({t.name: float(v) for t, v in zip(tools[:5], expect)}, abs=1e-6)
    raw = dict(select_tool(lm, "Translate 'hello' to French", tools[:5], heads, calibrate=False))
    assert raw == pytest.approx({t.name: float(v) for t, v in
                                 zip(tools[:5], selector_scores(shares[:1], head_columns(heads, H))[0])}, abs=1e-6)
    with pytest.raises(ValueError, match="at least one"):
        select_tool(lm, "x", tools[:5], [])
