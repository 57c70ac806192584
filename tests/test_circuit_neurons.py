"""The circuit-neurons analysis end to end on a tiny model, and its weight-divergence and correlation parts."""

import copy
import csv
import json

import numpy as np
import torch

from analyses import circuit_neurons
from analyses.circuit_neurons import spearman, weight_divergence
from toolattn.models import load_model
from toolattn.steering import Steerer

CFG = dict(circuit_neurons.settings("fast", "tiny-gemma3"), layer_every=2, layers_also=[1], tool_to_tool=True,
           after_block_ablation=True, n_tool=10, n_no_tool=6, n_permutations=20, n_random_draws=2, confirm_k=2,
           kill_candidates=1, alphas=[0.0, 1.0, 4.0], alpha_report=4.0, n_bootstrap=20, batch_size=8, seed=0,
           parents={"tiny-gemma3": "tiny-functiongemma"})
METRICS = {"kill_switch", "steer_force_dp_tool", "steer_prevent_dp_tool", "random_direction_dp_tool",
           "tool_to_tool_flip_rate", "divergence_vs_causal_spearman", "top1_ablation_drop", "top10_ablation_drop",
           "random1_ablation_drop", "flip_rate_top_k", "null_flip_rate_top_k", "promoters", "suppressors",
           "reference_neurons", "over_calling", "weight_divergence", "control_layer", "steer_layer"}


def test_circuit_neurons_end_to_end_on_a_tiny_model(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLATTN_ARTIFACTS", str(tmp_path))
    # a finished circuit_zones artifact of the same model: its causal importance and control point are read
    zones = tmp_path / "smoke" / "tiny-gemma3" / "circuit_zones"
    zones.mkdir(parents=True)
    drops = {f"L{i}": {"value": v} for i, v in enumerate([0.3, 0.0, 0.1, 0.05])}
    (zones / "result.json").write_text(json.dumps({"metrics": {"mlp_ablation_drop": drops, "control_point": 2}}))
    (zones / "manifest.json").write_text("{}")

    circuit_neurons.run("smoke", "tiny-gemma3", CFG)
    out = tmp_path / "smoke" / "tiny-gemma3" / "circuit_neurons"
    result = json.loads((out / "result.json").read_text())
    m = result["metrics"]
    assert METRICS <= set(m) and (out / "manifest.json").exists()
    assert m["n_layers"] == 4 and m["d_mlp"] == 128 and m["n_train"] == m["n_heldout"] == 16
    ks = m["kill_switch"]
    assert {"layer", "neuron", "effect"} <= set(ks) and ks["layer"] in range(4) and 0 <= ks["neuron"] < 128
    assert {"value", "lo", "hi", "p"} <= set(ks["effect"]) and len(ks["random_effect"]) == 2
    for name in ("steer_force_dp_tool", "steer_prevent_dp_tool", "random_direction_dp_tool"):
        assert {"value", "lo", "hi", "n"} <= set(m[name]) and m[name]["lo"] <= m[name]["value"] <= m[name]["hi"]
    assert m["steer_force_dp_tool"]["n"] == 6 and m["steer_prevent_dp_tool"]["n"] == 10
    assert m["tool_to_tool_flip_rate"]["n"] > 0 and 0 <= m["tool_to_tool_flip_rate"]["value"] <= 1
    # the control point and the causal importance come from the circuit_zones artifact
    assert m["control_layer"] == {"value": 2, "source": "circuit_zones control point"}
    rho = m["divergence_vs_causal_spearman"]
    assert rho["causal_source"].startswith("circuit_zones") and rho["n"] == 4 and rho["most_causal_layers"][0] == 0
    assert m["weight_divergence"]["parent"] == "tiny-functiongemma" and len(m["weight_divergence"]["layers"]) == 4
    assert m["reference_neurons"]["applicable"] is False  # 4 layers x 128 neurons
    # measured layers: every 2nd (0, 2), layers_also (1), the control layer (2)
    assert m["measured_layers"] == [0, 1, 2] and set(m["top1_ablation_drop"]) == {"L0", "L1", "L2"}
    assert set(m["flip_rate_top_k"]) == {"k1", "k5", "k10", "k50"} and set(m["top_promoter_by_layer"]) == {f"L{i}" for i in range(4)}
    gap = ks["activation_gap"]
    assert gap["lo"] <= gap["value"] <= gap["hi"] and gap["n"] == 16
    assert all("p_holm" in v for v in m["top1_ablation_drop"].values())
    # nulls: alpha = 0 steers nothing; the top neuron of a layer is its largest attribution
    with open(out / "dose_response.csv") as f:
        first = next(csv.DictReader(f))
    assert float(first["alpha"]) == 0.0
    assert np.isclose(float(first["decision_force_p_tool_no_tool"]), float(first["decision_random_p_tool_no_tool"]), rtol=1e-4)
    sel = json.loads(next((out / "chunks").glob("selection.*.json")).read_text())
    assert {f"L{i}": int(np.argmax(a)) for i, a in enumerate(sel["attribution"])
            if i in m["measured_layers"]} == {k: v[0] for k, v in m["top_neurons"].items()}
    assert {"neurons", "layers", "promoters_suppressors", "dose_response", "over_calling", "tool_to_tool"} <= set(
        result["tables"]) | set(result["figures"])
    assert not any(k.endswith("_s") for k in m)
    # the fitted steerer is saved beside the result and predicts
    steerer = Steerer.load(out / "steerer", load_model("tiny-gemma3"))
    assert steerer.layer == m["steer_layer"]["value"] and steerer.kill["neuron"] == ks["neuron"]
    assert 0 <= steerer.predict("Why do cats purr?", mode="prevent_tool", max_new_tokens=0).p_tool <= 1
    # a re-run resumes from the chunks and gives the same result
    circuit_neurons.run("smoke", "tiny-gemma3", CFG)
    assert json.loads((out / "result.json").read_text()) == result


def test_weight_divergence_finds_the_changed_layer_whatever_its_scale():
    parent = load_model("tiny-qwen2").model
    child = copy.deepcopy(parent)
    with torch.no_grad():
        for p in child.model.layers[2].mlp.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for p in list(parent.model.layers[1].parameters()) + list(child.model.layers[1].parameters()):
            p.mul_(10)  # a larger layer that did not change
    div = weight_divergence(parent, child)
    assert [round(d["attention"], 6) for d in div] == [0.0] * 4
    assert int(np.argmax([d["mlp"] for d in div])) == 2 and div[1]["mlp"] == 0.0 and div[2]["total"] < div[2]["mlp"]


def test_spearman_with_permutation_p():
    x = np.arange(10.0)
    assert np.isclose(spearman(x, x ** 2)["value"], 1.0) and spearman(x, x ** 2)["p"] < 0.01
    assert spearman(x, np.ones(10))["value"] is None
    noise = spearman(x, np.random.default_rng(0).permutation(10))
    assert noise["p"] > 0.05
