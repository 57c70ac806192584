"""Reading, ablating and patching activations through nnsight equals plain forwards (tiny models);
the probes of the circuit-zones analysis find what is there and nothing else."""

import numpy as np
import pytest
import torch

from analyses import circuit_zones
from analyses.circuit_zones import (change_rate, compute_layers, control_layers, flip_rate, pairs, pc1, pc1_shares,
                                    probe, random_pairs, same_class_pairs, zone_rule)
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
    """Both scopes: every position (tool block recomputed) and every position after the tool block."""
    lm, iv, fs, clean = setup
    for layer in (1, iv.layers - 1):
        for scope in ("all", "after_block"):
            got = iv.ablate_mlp(fs, clean, layer, "zero", scope)
            for i, f in enumerate(fs):
                def zero(module, args, out, start=0 if scope == "all" else f.tool_block_end):
                    out = out.clone()
                    out[:, start:] = 0
                    return out
                ref = reply_probs(lm, iv, f, layer, zero)
                assert close(torch.stack([got.p_tool[i], got.p_other[i]]), ref), (layer, scope, i)


def mlp_outputs(lm, iv, f, layer) -> torch.Tensor:
    """``[prompt_len, hidden]``: the MLP output of ``layer`` at every prompt token (plain forward + hook)."""
    seen = []
    handle = mlp_site(iv.decoder.layers[layer]).register_forward_hook(lambda m, a, out: seen.append(out[0].clone()))
    try:
        with torch.inference_mode():
            lm.model(input_ids=torch.tensor([f.input_ids[: f.prompt_len]], device=lm.model.device))
    finally:
        handle.remove()
    return seen[0].float().cpu()


def test_mean_ablation_uses_the_mean_over_every_prompt_token_and_equals_manual_forward(setup):
    lm, iv, fs, clean = setup
    layer = 1
    every = torch.cat([mlp_outputs(lm, iv, f, layer) for f in fs])  # [all tokens of all prompts, hidden]
    assert torch.allclose(clean.mlp_mean[layer], every.mean(0), atol=1e-5)
    got = iv.ablate_mlp(fs, clean, layer, "mean", "all")
    for i, f in enumerate(fs):
        def mean(module, args, out):
            return clean.mlp_mean[layer].to(out.device, out.dtype).expand_as(out).clone()
        assert close(torch.stack([got.p_tool[i], got.p_other[i]]), reply_probs(lm, iv, f, layer, mean)), i


def test_text_loss_equals_full_forward(setup):
    lm, iv, fs, clean = setup
    for i, f in enumerate(fs):
        t0 = f.prefix_len
        t1 = min(iv._text_end[f.text], t0 + iv.nll_tokens + 1)
        with torch.inference_mode():
            ids = torch.tensor([f.input_ids[: f.prompt_len]], device=lm.model.device)
            logits = lm.model(input_ids=ids).logits[0].float().cpu()
        ref = torch.nn.functional.cross_entropy(logits[t0 : t1 - 1], torch.tensor(f.input_ids[t0 + 1 : t1]))
        assert torch.allclose(clean.text_nll[i], ref, atol=1e-4), i
    assert bool((iv.ablate_mlp(fs, clean, 0, "zero").text_nll != clean.text_nll).any())


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


def test_several_decision_patches_in_one_pass_equal_one_at_a_time(setup):
    """Conditions of one layer run together (rows repeated per condition, each with its own site and
    source) give what each gives alone."""
    lm, iv, fs, clean = setup
    conds = [("resid", clean.resid[2][[1, 0, 3, 2]]), ("mlp", clean.mlp[2][[2, 3, 0, 1]]),
             ("resid", clean.resid[2][[3, 2, 1, 0]])]
    together = iv.patch_decisions(fs, clean, 2, conds)
    for (site, source), got in zip(conds, together):
        alone = iv.patch_decision(fs, clean, 2, site, source)
        assert close(got.p_tool, alone.p_tool) and close(got.p_other, alone.p_other), site
    assert not close(together[0].p_tool, together[1].p_tool)  # the conditions did differ


def test_request_patch_equals_full_recompute_and_self_patch_changes_nothing(setup):
    """Patching the residual stream at every request position (aligned from the reply position) equals
    the same edit inside a full forward of the recipient; patching a request with itself changes nothing."""
    lm, iv, fs, clean = setup
    layer = 1
    own = iv.patch_request(fs, clean, layer, [0, 1, 2, 3])
    assert close(own.p_tool, clean.p_tool) and close(own.p_other, clean.p_other)
    source = [2, 0, 3, 1]
    got = iv.patch_request(fs, clean, layer, source)
    start = min(f.prefix_len for f in fs)  # the shared tokens
    for i, f in enumerate(fs):
        s = fs[source[i]]
        with torch.inference_mode():
            _, reads = traced_forward(iv.net, [], "all", input_ids=torch.tensor([s.input_ids[: s.prompt_len]], device=iv.device))
        n = min(s.prompt_len, f.prompt_len) - start  # request positions both have, counted back from the reply
        value = torch.zeros(1, f.prompt_len, reads["resid"].shape[-1])
        where = torch.zeros(1, f.prompt_len, dtype=torch.bool)
        value[0, f.prompt_len - n :] = reads["resid"][layer][0, s.prompt_len - n :]
        where[0, f.prompt_len - n :] = True
        with torch.inference_mode():
            h, _ = traced_forward(iv.net, [Edit(layer, "resid", value, where)],
                                  input_ids=torch.tensor([f.input_ids[: f.prompt_len]], device=iv.device))
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


def test_pc1_shares_of_a_planted_direction():
    """One class-separating direction of large variance: PC1 carries the class-mean difference and most
    of its own variance is between the classes; in noise the mean difference is spread out."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 40)
    X = rng.normal(size=(80, 30))
    X[:, 5] += 8 * (2 * y - 1)
    total, between, mean_diff = pc1_shares(X, y)
    assert total > 0.5 and between > 0.9 and mean_diff > 0.95
    _, between0, mean_diff0 = pc1_shares(rng.normal(size=(80, 30)), y)
    assert between0 < 0.2 and mean_diff0 < 0.5


def test_pairs_and_flip_rates():
    needs = np.array([True, True, False, False, True])
    partner = pairs(needs, seed=0)
    paired = np.flatnonzero(partner >= 0)
    assert len(paired) == 4 and all(partner[partner[i]] == i and needs[i] != needs[partner[i]] for i in paired)
    clean = needs.copy()
    assert flip_rate(clean, clean, partner)["value"] == 0.0
    flipped = clean.copy()
    flipped[partner >= 0] = ~flipped[partner >= 0]
    assert flip_rate(clean, flipped, partner)["value"] == 1.0
    assert flip_rate(np.zeros(5, bool), flipped, partner)["n"] == 0  # nobody decided differently: no pairs
    same = same_class_pairs(needs, seed=0)
    assert all(same[i] != i and needs[same[i]] == needs[i] for i in range(5))
    rnd = random_pairs(5, seed=0)
    assert sorted(rnd) == list(range(5)) and all(rnd != np.arange(5))
    assert change_rate(clean, clean, same)["value"] == 0.0
    disagree = np.array([True, False, False, False, True])  # request 1 decided against its class
    counted = [i for i in range(5) if disagree[same[i]] == disagree[i]]  # pairs decided alike only
    assert change_rate(disagree, ~disagree, same)["n"] == len(counted) < 5


def test_zone_rules_on_planted_effects():
    from toolattn.stats import paired_difference

    n = 40
    clean = np.ones(n, bool)
    strong, none = np.r_[np.zeros(15), np.ones(25)].astype(bool), clean.copy()
    drops = {"L0": paired_difference(clean, strong), "L1": paired_difference(clean, none),
             "L2": paired_difference(clean, strong)}
    dnll = {"L0": {"value": 0.1}, "L1": {"value": 0.0}, "L2": {"value": 3.0}}
    compute, broken, _ = compute_layers(drops, dnll, 0.05, 1.0)
    assert compute == {"L0": True, "L1": False, "L2": False} and broken == {"L0": False, "L1": False, "L2": True}
    flips = [{"value": 0.9, "n": 20}, {"value": 0.9, "n": 20}, {"value": 0.3, "n": 20}, {"value": None, "n": 0}]
    nulls = [{"value": 0.0, "n": 40}, {"value": 0.85, "n": 40}, {"value": 0.0, "n": 40}, {"value": 0.0, "n": 40}]
    control, p = control_layers(flips, nulls, 0.5, 0.05)
    assert control == [True, False, False, False] and p[3] is None
    # probe accuracy: emb, L0..L3; compute / control / broken per layer (None: not ablated)
    first, zones = zone_rule([0.5, 0.7, 0.8, 0.96, 1.0], [False, True, None, True], [False, False, False, True],
                             [False, False, None, False], 0.95)
    assert first == 2 and zones == ["pre-decodable", "compute", "not ablated", "compute+control"]
    assert zone_rule([0.5, 1.0], [True], [False], [True], 0.95)[1] == ["broken"]


def test_zone_rules_fire_at_most_at_alpha_on_null_data():
    """No layer has any effect: the compute rule (Holm over 18 layers) and the control rule (flip rate
    equal to its null) label some layer in at most ~alpha of simulated studies."""
    from toolattn.stats import mcnemar_exact

    rng = np.random.default_rng(0)
    fired_compute = fired_control = 0
    sims, layers, n = 400, 18, 40
    for _ in range(sims):
        clean = rng.random(n) < 0.8
        drops, dnll = {}, {}
        for i in range(layers):  # each request's outcome is redrawn with the clean accuracy: no effect
            edited = rng.random(n) < 0.8
            b, c = int(np.sum(clean & ~edited)), int(np.sum(~clean & edited))
            drops[f"L{i}"] = {"value": (b - c) / n, "p": mcnemar_exact(b, c)}
            dnll[f"L{i}"] = {"value": 0.0}
        fired_compute += any(compute_layers(drops, dnll, 0.05, 1.0)[0].values())
        rate = 0.6  # flips and null at the same rate
        flips = [{"value": rng.binomial(20, rate) / 20, "n": 20} for _ in range(layers)]
        nulls = [{"value": rng.binomial(40, rate) / 40, "n": 40} for _ in range(layers)]
        fired_control += any(control_layers(flips, nulls, 0.5, 0.05)[0])
    assert fired_compute / sims <= 0.05 + 0.025 and fired_control / sims <= 0.05 + 0.025


def test_zone_rules_find_a_planted_compute_layer():
    """One layer of 18 loses 12 of 40 correct decisions: Holm across layers still finds it, and only it."""
    from toolattn.stats import paired_difference

    clean = np.ones(40, bool)
    drops = {f"L{i}": paired_difference(clean, clean) for i in range(18)}
    drops["L5"] = paired_difference(clean, np.r_[np.zeros(12), np.ones(28)].astype(bool))
    compute, _, p = compute_layers(drops, {k: {"value": 0.0} for k in drops}, 0.05, 1.0)
    assert [k for k, v in compute.items() if v] == ["L5"] and p["L5"] < 0.05


def test_circuit_zones_end_to_end_on_a_tiny_model(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("TOOLATTN_ARTIFACTS", str(tmp_path))
    cfg = {"split": "heldout", "n_tool": 10, "n_no_tool": 6, "max_new_tokens": 4, "cv_folds": 3, "n_shuffles": 1,
           "probe_threshold": 0.95, "flip_threshold": 0.5, "alpha": 0.05, "broken_nll_increase": 1.0,
           "n_bootstrap": 20, "nll_tokens": 8, "ablation_every": 2, "ablation_requests": 0, "patch_whole_every": 2,
           "batch_size": 8, "seed": 0}
    circuit_zones.run("smoke", "tiny-gemma3", cfg)
    out = tmp_path / "smoke" / "tiny-gemma3" / "circuit_zones"
    m = json.loads((out / "result.json").read_text())["metrics"]
    assert m["ablated_layers"] == [0, 2] and m["whole_request_patched_layers"] == [0, 2]
    assert set(m["mlp_ablation_drop"]) == {"L0", "L2"} and "p" in m["mlp_ablation_drop"]["L0"]
    assert len(m["zones"]) == 4 and (out / "manifest.json").exists()
    timings = json.loads((out / "manifest.json").read_text())["timings"]
    assert {"clean_s", "ablation_s", "patching_s"} <= set(timings)
    assert not any(k.endswith("_s") or k == "seconds" for k in m)
