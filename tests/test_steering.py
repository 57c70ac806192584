"""Steering (tiny models and synthetic activations): a planted direction is recovered; alpha = 0 changes
nothing; a real direction raises P(tool) beyond a random one of the same norm; the hook route of
``Steerer.predict`` equals the nnsight route; a steerer survives a save/load round trip."""

from collections import namedtuple

import numpy as np
import pytest
import torch

from toolattn.datasets import load_prompts, select
from toolattn.interventions import Intervener
from toolattn.models import load_model
from toolattn.neurons import NeuronIntervener, decision_runs, replaced
from toolattn.steering import (Steerer, difference_of_means, per_tool_directions, random_direction,
                               steer_after_block, steer_decisions, steering_vector, unit)

Req = namedtuple("Req", "text needs_tool")
_SETUP: dict = {}


def cos(a, b):
    return float(unit(a) @ unit(b))


def test_planted_directions_are_recovered_from_synthetic_activations():
    g = torch.Generator().manual_seed(0)
    layers, n, hidden = 3, 200, 48
    u = torch.randn(hidden, generator=g)
    needs = np.arange(n) % 2 == 0
    resid = torch.randn(layers, n, hidden, generator=g)
    resid[1] += torch.as_tensor(needs, dtype=torch.float32)[:, None] * 4.0 * unit(u)
    d = difference_of_means(resid, needs)
    assert cos(d[1], u) > 0.9 and abs(cos(d[0], u)) < 0.5
    # per-tool: each tool's requests shifted along their own direction
    names = ["a", "b", "c"]
    offsets = torch.randn(3, hidden, generator=g) * 3
    labels = [names[i % 3] if needs[i] else None for i in range(n)]
    for i, x in enumerate(labels):
        if x is not None:
            resid[2, i] += offsets[names.index(x)]
    dirs, counts = per_tool_directions(resid, labels + [], names + ["d"])
    assert counts.tolist() == [34, 33, 33, 0] and torch.isnan(dirs[:, 3]).all()
    assert cos(dirs[2, 1] - dirs[2, 0], offsets[1] - offsets[0]) > 0.9


def test_random_direction_has_the_same_norm_and_no_preferred_direction():
    like = torch.randn(4, 64)
    r = random_direction(like, seed=3)
    assert torch.allclose(r.norm(dim=-1), like.norm(dim=-1)) and torch.equal(r, random_direction(like, seed=3))
    assert abs(cos(r[0], like[0])) < 0.5 and not torch.equal(r, random_direction(like, seed=4))
    assert torch.allclose(steering_vector(like[0], 2.0, 3.0).norm(), torch.tensor(6.0))


@pytest.fixture
def setup(tiny, tools):
    """``(lm, intervener, texts, formatted, clean run, steerer)``; the steerer's classes are the model's own
    (P(tool) above its median), so its tool direction is one the model reads."""
    if tiny.name not in _SETUP:
        texts = [r.text for r in select(load_prompts(), split="train", n_per_tool=2, n_no_tool=20, seed=0)]
        iv = Intervener(tiny, tools, batch_size=8)
        fs = iv.format(texts)
        clean = iv.clean(fs)
        own = (clean.p_tool > clean.p_tool.median()).tolist()
        reqs = [Req(t, n) for t, n in zip(texts, own)]
        steerer = Steerer.fit(tiny, tools, reqs, layer=iv.layers - 1, candidates=1, batch_size=8)
        _SETUP[tiny.name] = (tiny, iv, texts, fs, clean, steerer)
    return _SETUP[tiny.name]


def test_alpha_zero_changes_nothing(setup):
    lm, iv, texts, fs, clean, steerer = setup
    prompt = "Why do cats purr?"
    normal = steerer.predict(prompt, max_new_tokens=4)
    for mode in ("force_tool", "prevent_tool"):
        assert steerer.predict(prompt, mode=mode, alpha=0.0, max_new_tokens=4) == normal.__class__(
            prompt, mode, normal.p_tool, normal.decides_tool, normal.tool, normal.call, normal.called)
    zero = steer_decisions(iv, fs, clean, 1, [torch.zeros(clean.resid.shape[-1])])[0]
    assert torch.allclose(zero.p_tool, clean.p_tool, rtol=1e-4, atol=1e-7)


def test_a_real_direction_raises_p_tool_beyond_a_random_one(setup):
    lm, iv, texts, fs, clean, steerer = setup
    layer = steerer.layer
    v = steerer.vector("force_tool", alpha=1.0)
    steered, control = steer_decisions(iv, fs, clean, layer, [v, random_direction(v, seed=1)])
    base = float(clean.p_tool.mean())
    assert float(steered.p_tool.mean()) > 2 * base
    assert float(steered.p_tool.mean()) > 2 * float(control.p_tool.mean())
    prevented = steer_decisions(iv, fs, clean, layer, [steerer.vector("prevent_tool", alpha=1.0)])[0]
    assert float(prevented.p_tool.mean()) < base


def test_predict_equals_the_intervener_route(setup, tools):
    """The hooks of ``predict`` and the nnsight edits of the batched route give the same P(tool), at the
    reply position and after the tool block; the kill switch equals setting the neuron at the reply."""
    lm, iv, texts, fs, clean, steerer = setup
    i = 3
    text = texts[i]
    v = steerer.vector("force_tool", alpha=0.5)
    dec = steer_decisions(iv, fs, clean, steerer.layer, [v])[0]
    got = steerer.predict(text, mode="force_tool", alpha=0.5, max_new_tokens=0)
    assert np.isclose(got.p_tool, float(dec.p_tool[i]), rtol=1e-4, atol=1e-7)
    after = steer_after_block(iv, fs, clean, 1, steerer.vector("force_tool", alpha=0.5, layer=1))
    got = steerer.predict(text, mode="force_tool", alpha=0.5, layer=1, scope="after_block", max_new_tokens=0)
    assert np.isclose(got.p_tool, float(after.p_tool[i]), rtol=1e-4, atol=1e-7)
    k = steerer.kill
    assert k is not None and {"layer", "neuron", "value"} <= set(k)
    niv = NeuronIntervener(lm, tools, batch_size=8)
    nfs = niv.format(texts)
    nclean = niv.clean(nfs)
    ref = decision_runs(niv, nfs, nclean, k["layer"], [replaced(nclean.mlp[k["layer"]], [k["neuron"]],
                                                                torch.full((niv.d_mlp,), k["value"]))])[0]
    got = steerer.predict(text, kill_switch=True, max_new_tokens=0)
    assert np.isclose(got.p_tool, float(ref.p_tool[i]), rtol=1e-4, atol=1e-7)


def test_steering_to_a_tool_and_generation(setup):
    lm, iv, texts, fs, clean, steerer = setup
    picked = [n for n, c in zip(steerer.tool_names, steerer.tool_counts.tolist()) if c > 0]
    assert picked and int(steerer.tool_counts.sum()) == int((clean.p_tool > clean.p_tool.median()).sum())
    out = steerer.predict("Send an email to Priya.", steer_to=picked[0], alpha=2.0, max_new_tokens=6)
    assert out.tool in steerer.tool_names and isinstance(out.call, str) and 0.0 <= out.p_tool <= 1.0
    with pytest.raises(ValueError, match="unknown tool"):
        steerer.vector(steer_to="no_such_tool")
    with pytest.raises(ValueError, match="unknown mode"):
        steerer.vector("sideways")


def test_save_load_round_trip(setup, tmp_path):
    lm, iv, texts, fs, clean, steerer = setup
    steerer.save(tmp_path)
    back = Steerer.load(tmp_path, lm)
    for name in ("direction", "scale", "tool_directions", "tool_counts"):
        assert torch.allclose(getattr(back, name), getattr(steerer, name), rtol=0, atol=0, equal_nan=True), name
    assert (back.layer, back.alpha, back.scope, back.kill, back.tool_names) == (
        steerer.layer, steerer.alpha, steerer.scope, steerer.kill, steerer.tool_names)
    a = steerer.predict("Why do cats purr?", mode="force_tool", kill_switch=True, max_new_tokens=3)
    assert back.predict("Why do cats purr?", mode="force_tool", kill_switch=True, max_new_tokens=3) == a
    other = load_model("tiny-qwen2" if lm.name != "tiny-qwen2" else "tiny-qwen3")
    with pytest.raises(ValueError, match="was fitted on"):
        Steerer.load(tmp_path, other)
    with pytest.raises(FileNotFoundError):
        Steerer.load(tmp_path / "nothing")



def test_command_line_steer(setup, tmp_path, capsys, monkeypatch):
    """``python -m toolattn steer`` prints what ``Steerer.predict`` reads; a missing steerer is one clear error."""
    from toolattn import cli

    lm, iv, texts, fs, clean, steerer = setup
    steerer.save(tmp_path / "s")
    monkeypatch.setattr("toolattn.models.load_model", lambda name, **kw: lm)
    cli.main(["steer", "Why do cats purr?", "--model", lm.name, "--steerer", str(tmp_path / "s"),
              "--mode", "force_tool", "--alpha", "0.5", "--max-new-tokens", "3"])
    want = steerer.predict("Why do cats purr?", mode="force_tool", alpha=0.5, max_new_tokens=3)
    out = capsys.readouterr().out
    assert f"P(tool)    {want.p_tool:.3f}" in out and f"choice     {want.tool}" in out and repr(want.call) in out
    with pytest.raises(SystemExit):
        cli.main(["steer", "hi", "--model", lm.name, "--steerer", str(tmp_path / "none")])
    assert "no steerer" in capsys.readouterr().err
