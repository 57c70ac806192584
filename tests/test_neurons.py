"""MLP neurons at the decision position (tiny models): reading equals a plain forward hook; editing every
neuron of a layer equals the whole-MLP edits of ``Intervener``; gradients equal finite differences;
attribution finds a planted neuron and no consistent neuron in noise."""

import numpy as np
import pytest
import torch

from toolattn.interventions import Intervener
from toolattn.models import load_model
from toolattn.neurons import (NeuronIntervener, ablate_neurons, attribution, attribution_pvalues, blocking_value,
                              class_means, decision_runs, find_kill_switch, kill_switch_candidates, neuron_gradients,
                              patch_neurons, readout_margin, replaced, top_neurons)

REQUESTS = [
    "What's the weather in Paris today?",
    "Why do cats purr?",
    "Look up the history of the Eiffel tower on the web, I need it for homework and a lot more detail",
    "Tell me a joke about penguins.",
    "Send an email to Priya saying the report is ready.",
    "What is the capital of Australia?",
    "Remind me at 6pm to call the plumber.",
    "How does gravity work?",
]
NEEDS = np.array([True, False, True, False, True, False, True, False])
_SETUP: dict = {}


@pytest.fixture
def setup(tiny, tools):
    """``(lm, neuron intervener, plain intervener, formatted, neuron clean run, plain clean run)``."""
    if tiny.name not in _SETUP:
        niv, iv = NeuronIntervener(tiny, tools, batch_size=3), Intervener(tiny, tools, batch_size=3)
        fs = niv.format(REQUESTS)
        iv.format(REQUESTS)
        _SETUP[tiny.name] = (tiny, niv, iv, fs, niv.clean(fs), iv.clean(fs))
    return _SETUP[tiny.name]


def close(a, b, atol=1e-6):
    return torch.allclose(torch.as_tensor(a), torch.as_tensor(b), rtol=1e-4, atol=atol)


def hook_forward(lm, niv, f, layer, pre_hook=None):
    """Plain forward of one prompt (no cache, no nnsight) with an optional forward pre-hook on
    ``down_proj`` of ``layer``: ``(down_proj inputs [prompt_len, d_mlp], (p_tool, p_other))``."""
    seen = []

    def hook(module, args):
        if pre_hook is not None:
            args = (pre_hook(args[0].clone()),)
        seen.append(args[0][0].clone())
        return args
    handle = niv.decoder.layers[layer].mlp.down_proj.register_forward_pre_hook(hook)
    try:
        with torch.inference_mode():
            logits = lm.model(input_ids=torch.tensor([f.input_ids[: f.prompt_len]], device=niv.device)
                              ).logits[0, f.reply_position].float().cpu()
    finally:
        handle.remove()
    probs = torch.softmax(logits, -1)
    p_tool = probs[niv.open_ids].sum()
    probs[niv.open_ids] = 0
    return seen[0].float().cpu(), torch.stack([p_tool, probs.max()])


def test_neuron_reading_equals_a_forward_hook_on_down_proj(setup):
    lm, niv, iv, fs, clean, plain = setup
    assert clean.mlp.shape == (niv.layers, len(REQUESTS), niv.d_mlp)
    assert close(clean.p_tool, plain.p_tool) and close(clean.resid, plain.resid, 1e-5)
    for layer in range(niv.layers):
        for i, f in enumerate(fs):
            acts, _ = hook_forward(lm, niv, f, layer)
            assert close(clean.mlp[layer, i], acts[f.reply_position], 1e-4), (layer, i)  # a full forward vs cached keys


def test_zero_ablating_every_neuron_equals_zero_ablating_the_mlp_output(setup):
    """down_proj has no bias and Gemma's post-feedforward norm maps zero to zero, so both give the same
    readout, at the reply position and at every position after the tool block."""
    lm, niv, iv, fs, clean, plain = setup
    every = torch.arange(niv.d_mlp)
    for layer in (0, niv.layers - 1):
        got = ablate_neurons(niv, fs, clean, layer, every, "zero", "decision")
        ref = iv.patch_decision(fs, plain, layer, "mlp", torch.zeros_like(plain.mlp[layer]))
        assert close(got.p_tool, ref.p_tool) and close(got.p_other, ref.p_other), layer
        got = ablate_neurons(niv, fs, clean, layer, every, "zero", "after_block")
        ref = iv.ablate_mlp(fs, plain, layer, "zero", "after_block", nll=False)
        assert close(got.p_tool, ref.p_tool) and close(got.p_other, ref.p_other), layer


def test_mean_ablating_every_neuron_equals_mlp_mean_ablation_only_without_a_post_norm(setup):
    """With the mean over every prompt token: down_proj is linear, so the two agree on Qwen; Gemma's
    post-feedforward norm is not, so they differ there."""
    lm, niv, iv, fs, clean, plain = setup
    layer = 1
    got = ablate_neurons(niv, fs, clean, layer, torch.arange(niv.d_mlp), "mean", "after_block", mean=clean.mlp_mean[layer])
    ref = iv.ablate_mlp(fs, plain, layer, "mean", "after_block", nll=False)
    gemma = hasattr(niv.decoder.layers[layer], "post_feedforward_layernorm")
    assert close(got.p_tool, ref.p_tool, 1e-5) != gemma


def test_ablating_chosen_neurons_after_the_tool_block_equals_a_forward_hook(setup):
    lm, niv, iv, fs, clean, plain = setup
    layer, chosen = 1, [3, 7, 40]
    got = ablate_neurons(niv, fs, clean, layer, chosen, "zero", "after_block")
    for i, f in enumerate(fs):
        def zero(x, start=f.tool_block_end):
            x[:, start:, chosen] = 0
            return x
        _, ref = hook_forward(lm, niv, f, layer, zero)
        assert close(torch.stack([got.p_tool[i], got.p_other[i]]), ref), i
    assert not close(got.p_tool, clean.p_tool)


def test_patching_every_neuron_equals_patching_the_mlp_output(setup):
    lm, niv, iv, fs, clean, plain = setup
    source = [1, 0, 3, 2, 5, 4, 7, 6]
    for layer in range(niv.layers):
        got = patch_neurons(niv, fs, clean, layer, torch.arange(niv.d_mlp), source)
        ref = iv.patch_decision(fs, plain, layer, "mlp", plain.mlp[layer][source])
        assert close(got.p_tool, ref.p_tool, 1e-5) and close(got.p_other, ref.p_other, 1e-5), layer
    own = patch_neurons(niv, fs, clean, 1, [5, 9], list(range(len(fs))))
    assert close(own.p_tool, clean.p_tool)
    assert not close(patch_neurons(niv, fs, clean, 1, torch.arange(niv.d_mlp), source).p_tool, clean.p_tool)


def test_gradient_equals_finite_differences(setup):
    lm, niv, iv, fs, clean, plain = setup
    grads = neuron_gradients(niv, fs, clean)
    assert grads.shape == clean.mlp.shape
    eps = 1e-2
    for layer, j in ((0, 5), (niv.layers - 1, 17)):
        step = torch.zeros(niv.d_mlp)
        step[j] = eps
        up, down = decision_runs(niv, fs, clean, layer, [clean.mlp[layer] + step, clean.mlp[layer] - step])
        fd = (readout_margin(up) - readout_margin(down)) / (2 * eps)
        assert torch.allclose(fd, grads[layer, :, j], rtol=2e-2, atol=1e-4), (layer, fd, grads[layer, :, j])
    assert torch.allclose(readout_margin(clean), torch.log(clean.p_tool) - torch.log(clean.p_other))


@pytest.mark.parametrize("name", ["tiny-qwen2", "tiny-qwen3"])
def test_attribution_ranks_a_planted_neuron_first(name, tools):
    """One neuron's down_proj column scaled up 100x: its gradient, and so its attribution, dominates its layer.
    (Qwen MLPs: Gemma's post-feedforward norm would rescale the column away.)"""
    lm = load_model(name)
    niv = NeuronIntervener(lm, tools, batch_size=4)
    fs = niv.format(REQUESTS)
    clean = niv.clean(fs)
    layer = 1
    tool, no_tool = class_means(clean.mlp, NEEDS)
    j = int(top_neurons((tool - no_tool)[layer].abs(), 5)[-1])  # a neuron with a clear class difference
    before = attribution(clean.mlp, neuron_gradients(niv, fs, clean), NEEDS)[layer].abs()
    with torch.no_grad():
        niv.decoder.layers[layer].mlp.down_proj.weight[:, j] *= 100
    clean = niv.clean(fs)
    attr = attribution(clean.mlp, neuron_gradients(niv, fs, clean), NEEDS)[layer].abs()
    assert int(top_neurons(before, 1)[0]) != j and int(top_neurons(attr, 1)[0]) == j


def test_attribution_has_no_consistent_top_neuron_under_shuffled_labels(setup):
    lm, niv, iv, fs, clean, plain = setup
    grads = neuron_gradients(niv, fs, clean)
    rng = np.random.default_rng(0)
    tops = {int(top_neurons(attribution(clean.mlp, grads, rng.permutation(NEEDS))[1].abs(), 1)[0]) for _ in range(6)}
    assert len(tops) > 1
    p = attribution_pvalues(clean.mlp, grads, NEEDS, n_permutations=50)
    assert p.shape == (niv.layers, niv.d_mlp) and p.min() >= 1 / 51 and p.max() <= 1


def test_kill_switch_search_picks_the_largest_rise_and_blocking_value(setup):
    lm, niv, iv, fs, clean, plain = setup
    grads = neuron_gradients(niv, fs, clean)
    attr = attribution(clean.mlp, grads, NEEDS)
    tool, no_tool = class_means(clean.mlp, NEEDS)
    cands = kill_switch_candidates(attr, tool, no_tool, 2)
    assert cands and all(no_tool[l, j] > tool[l, j] for l, j in cands)
    found = find_kill_switch(niv, fs, clean, NEEDS, cands, clean.mlp.mean(1))
    best = max(found["scores"], key=lambda s: (s[2], s[3]))
    assert (found["layer"], found["neuron"]) == (best[0], best[1])
    r = ablate_neurons(niv, fs, clean, found["layer"], [found["neuron"]], "mean")
    assert np.isclose(float((r.p_tool - clean.p_tool)[~NEEDS].mean()), found["dp_tool"], atol=1e-5)
    v = blocking_value(clean.mlp, grads, NEEDS, found["layer"], found["neuron"])
    assert v in clean.mlp[found["layer"], ~torch.as_tensor(NEEDS), found["neuron"]].tolist()
    assert torch.equal(replaced(clean.mlp[0], [], 0.0), clean.mlp[0])
