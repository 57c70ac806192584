"""Reading, ablating and patching activations through nnsight equals plain forwards (tiny models);
the probes of the circuit-zones analysis find what is there and nothing else."""

import numpy as np
import pytest
import torch

from analyses.circuit_zones import flip_rate, pairs, pc1, probe, zone_rule
from toolattn.interventions import SITES, Edit, Intervener, mlp_site, traced_forward
from toolattn.scoring import ToolChoiceEngine

# The long request makes prompts exceed the tiny Gemma3 sliding window (32 tokens) many times over.
REQUESTS = [
    "What's the weather in Paris today?",
    "Why do cats purr?",
    "Look up the history of the Eiffel tower on the web, I need it for homework and a lot more detail",
    "Tell me a joke about penguins.",
]
_SETUP: dict = {}


@pytest.fixture
def setup(tiny, tools):
    """``(lm, intervener, formatted, clean run)`` per tiny model; batches of 2 so padding is exercised."""
    if tiny.name not in _SETUP:
        iv = Intervener(tiny, tools, batch_size=2)
        fs = iv.format(REQUESTS)
        _SETUP[tiny.name] = (tiny, iv, fs, iv.clean(fs))
    return _SETUP[tiny.name]


def reply_probs(lm, iv, f, hook_layer=None, hook=None) -> torch.Tensor:
    """Reference: a full forward (no cache, the model's own masks) of one prompt, optionally with a
    plain torch forward hook on the MLP site of ``hook_layer``; ``(p_tool, p_other)`` at the reply position."""
    handle = mlp_site(iv.decoder.layers[hook_layer]).register_forward_hook(hook) if hook else None
    try:
        with torch.inference_mode():
            logits = lm.model(input_ids=torch.tensor([f.input_ids[: f.prompt_len]], device=lm.model.device)
                             ).logits[0, f.reply_position].float().cpu()
    finally:
        if handle:
            handle.remove()
    probs = torch.softmax(logits, -1)
    p_tool = probs[iv.open_ids].sum()
    probs[iv.open_ids] = 0
    return torch.stack([p_tool, probs.max()])


def close(a, b):
    return torch.allclose(torch.as_tensor(a), torch.as_tensor(b), rtol=1e-4, atol=1e-7)


def test_clean_run_matches_engine(setup, tools):
    lm, iv, fs, clean = setup
    choices = ToolChoiceEngine(lm, progress=False).score(REQUESTS, tools)
    assert close(clean.p_tool, [c.p_tool for c in choices])
    assert close(clean.p_other, [c.p_other for c in choices])
    assert clean.decides_tool.tolist() == [c.decides_tool for c in choices]
    assert clean.resid.shape == (iv.layers, len(REQUESTS), lm.model.config.hidden_size)


def test_zero_ablation_equals_manual_forward(setup):
    lm, iv, fs, clean = setup
    for layer in (1, iv.layers - 1):
        got = iv.ablate_mlp(fs, clean, layer, "zero")
        for i, f in enumerate(fs):
            def zero_after_tool_block(module, args, out, start=f.tool_block_end):
                out = out.clone()
                out[:, start:] = 0
                return out
            ref = reply_probs(lm, iv, f, layer, zero_after_tool_block)
            assert close(torch.stack([got.p_tool[i], got.p_other[i]]), ref), (layer, i)


def test_mean_ablation_of_one_request_changes_nothing(setup):
    lm, iv, fs, _ = setup
    one = fs[2:3]
    clean = iv.clean(one)  # the mean over one request is its own activation
    for layer in (0, iv.layers - 1):
        assert close(iv.ablate_mlp(one, clean, layer, "mean").p_tool, clean.p_tool)


def test_zero_ablation_changes_the_decision_probabilities(setup):
    lm, iv, fs, clean = setup
    assert not close(iv.ablate_mlp(fs, clean, 0, "zero").p_tool, clean.p_tool)


def test_self_patching_changes_nothing(setup):
    lm, iv, fs, clean = setup
    for layer in (0, 2, iv.layers - 1):
        for site in SITES:
            own = clean.resid[layer] if site == "resid" else clean.mlp[layer]
            out = iv.patch_decision(fs, clean, layer, site, own)
            assert close(out.p_tool, clean.p_tool) and close(out.p_other, clean.p_other), (layer, site)


def test_decision_patch_equals_full_recompute(setup):
    """Re-running the reply token alone on cached keys/values equals patching inside a full forward."""
    lm, iv, fs, clean = setup
    source = clean.resid[1][[1, 0, 3, 2]]  # swap within pairs
    got = iv.patch_decision(fs, clean, 1, "resid", source)
    for i, f in enumerate(fs):
        n = f.prompt_len
        where = torch.zeros(1, n, dtype=torch.bool, device=lm.model.device)
        where[0, f.reply_position] = True
        with torch.inference_mode():
            h, _ = traced_forward(iv.net, [Edit(1, "resid", source[i][None, None], where)],
                                  input_ids=torch.tensor([f.input_ids[:n]], device=lm.model.device))
        assert close(torch.stack(iv.decision(h[:, f.reply_position]))[:, 0], torch.stack([got.p_tool[i], got.p_other[i]]))


def test_patching_every_position_at_the_last_layer_gives_the_source_logits(setup):
    lm, iv, fs, _ = setup
    a, b = fs[0], fs[3]
    n = min(a.prompt_len, b.prompt_len)
    dev = lm.model.device
    ids_a, ids_b = torch.tensor([a.input_ids[:n]], device=dev), torch.tensor([b.input_ids[:n]], device=dev)
    last = iv.layers - 1
    with torch.inference_mode():
        _, reads = traced_forward(iv.net, [], "all", input_ids=ids_a)
        h, _ = traced_forward(iv.net, [Edit(last, "resid", reads["resid"][last])], input_ids=ids_b)
        logits_a = lm.model(input_ids=ids_a).logits[0, n - 1]
        logits_b = lm.model(input_ids=ids_b).logits[0, n - 1]
        patched = iv.head(h[0, n - 1])
        if iv.softcap:
            patched = torch.tanh(patched / iv.softcap) * iv.softcap
    assert torch.allclose(patched, logits_a, atol=1e-4)
    assert not torch.allclose(logits_a, logits_b, atol=1e-4)


def test_probe_finds_a_separable_direction_and_nothing_in_noise():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 40)
    X = rng.normal(size=(80, 30))
    separable = X.copy()
    separable[:, 3] += 6 * (2 * y - 1)
    found = probe(separable, y)
    assert found["acc"]["value"] >= 0.97
    assert 0.3 <= found["shuffled"] <= 0.7  # the same features with shuffled labels: chance
    assert 0.25 <= probe(X, y)["acc"]["value"] <= 0.75  # noise: chance
    geometry = pc1(separable, y)
    assert geometry["var"] > 0.5 and geometry["acc"]["value"] >= 0.97
    assert pc1(np.ones((80, 30)), y)["var"] is None


def test_pairs_flips_and_zones():
    needs = np.array([True, True, False, False, True])
    partner = pairs(needs, seed=0)
    paired = np.flatnonzero(partner >= 0)
    assert len(paired) == 4 and all(partner[partner[i]] == i and needs[i] != needs[partner[i]] for i in paired)
    clean = needs.copy()
    assert flip_rate(clean, clean, partner)["value"] == 0.0
    flipped = clean.copy()
    flipped[partner >= 0] = ~flipped[partner >= 0]
    assert flip_rate(clean, flipped, partner)["value"] == 1.0
    # probe accuracy: emb, L0..L3; ablation-drop CI lower bounds and residual flip rates: L0..L3
    first, zones = zone_rule([0.5, 0.7, 0.8, 0.96, 1.0], [-0.1, 0.1, -0.2, 0.05], [0.0, 0.0, 0.2, 0.9], 0.95, 0.5)
    assert first == 2 and zones == ["pre-decodable", "compute", "stable", "compute+control"]
