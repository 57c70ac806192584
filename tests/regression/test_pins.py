"""Pinned key numbers of the `fast` profile (and of the published `full` artifacts).

These tests read finished artifacts (``artifacts/fast/<model>/<analysis>/result.json``) and
compare them with the values stored beside this file (``test_pins/*.csv``); they never
recompute anything. ``make check`` runs them alone; ``make test`` first builds any missing
fast artifacts.

To regenerate the pins after an intended change of method, data or model (never to make a
failing check pass): ``make fast && .venv/bin/python -m pytest tests/regression --force-regen``,
then review the diff of ``tests/regression/test_pins/`` and commit it with the reason.
"""

import os

import pytest

from toolattn.artifacts import load_result

# `make check PROFILE=full` compares the published full artifacts (artifacts/full/) with their pins.
PROFILE = os.environ.get("TOOLATTN_PIN_PROFILE", "fast")
# Accuracies are ratios of counts and CIs use a seeded bootstrap: exact up to float formatting.
# Attention statistics and probe scores are float32 sums: pinned to 1e-5.
# Knockout margins are sums of float32 log-probabilities over batched passes: pinned to 1e-4 nats.
TOLERANCE = {"baseline": dict(atol=1e-6, rtol=0), "retrieval_heads": dict(atol=1e-5, rtol=0),
             "finetune": dict(atol=1e-5, rtol=0), "circuit_zones": dict(atol=1e-5, rtol=0),
             "head_knockout": dict(atol=1e-4, rtol=0), "scaling": dict(atol=1e-4, rtol=0),
             "failure_modes": dict(atol=1e-6, rtol=0), "circuit_neurons": dict(atol=1e-5, rtol=0),
             "bfcl": dict(atol=1e-4, rtol=0)}
# analysis -> (models, metric paths in result.json; a {value, lo, hi, n} metric pins all four)
PINS = {
    "baseline": (["qwen2.5-coder-1.5b", "gemma-3-270m"], [
        "forced_choice_accuracy", "generation_accuracy", "forced_generation_agreement",
        "tool_no_tool_accuracy", "generation_tool_no_tool_accuracy", "p_tool_auc"]),
    "retrieval_heads": (["qwen2.5-coder-1.5b"], [
        "accuracy", "n_eligible", "top_heads.0.layer", "top_heads.0.head", "top_heads.0.selection.corr",
        "top_heads.0.corr", "top_heads.0.top1_rate", "top_heads.0.p_holm", "top_heads.0.position_only_corr",
        "top_heads.0.mass_on_chosen", "top_heads.0.lexical.no_overlap.corr", "top_heads.9.corr", "n_confirmed",
        "max_corr", "n_significant", "best_top1_rate", "mean_entropy_bits", "mean_tool_block_share",
        "top_heads_positive_corr_share", "lexical_strata.overlap.n", "tool_span_tokens_mean"]),
    "head_knockout": (["qwen2.5-coder-1.5b"], [
        "clean_accuracy", "n_essential", "max_head_drop", "top_heads.0.drop", "top_heads.0.margin_change",
        "top_heads.1.margin_change", "top10_joint_drop", "joint.margin_change", "random10_drop_p95",
        "joint_empirical_p", "random_singles.drop_p95", "random_singles.margin_change_mean", "variants.block.drop",
        "replacements.joint.n", "atp_spearman", "atp_top20_overlap", "atp.spearman_in_layers", "atp.mean_abs_error"]),
    "scaling": (["qwen2.5-coder-1.5b"], [
        "accuracy_by_count.2", "accuracy_by_count.5", "accuracy_by_count.10", "accuracy_by_count.20",
        "accuracy_by_count.50", "accuracy_drop", "entropy_by_count.2", "entropy_by_count.50",
        "entropy_top_heads_by_count.50", "head_rank_spearman_10_vs_50", "head_top10_overlap_10_vs_50",
        "knockout_by_count.10.joint.margin_change", "knockout_by_count.50.joint.margin_change",
        "knockout_by_count.50.random_margin_change_mean", "knockout_margin_loss_grows", "n_lists"]),
    "failure_modes": (["qwen2.5-coder-1.5b"], [
        "n_failures", "n_shuffled", "breakdown.positional", "breakdown.semantic", "breakdown.other",
        "semantic.share", "picked_first_or_last", "gold_most_attended_on_failures",
        "gold_most_attended_on_successes"]),
    "finetune": (["gemma-3-270m-tools"], [
        "forced_choice_accuracy", "tool_no_tool_accuracy", "generation_call_validity", "p_tool_auc",
        "base_forced_choice_accuracy", "base_tool_no_tool_accuracy", "final_loss", "weight_divergence_argmax_layer"]),
    "circuit_zones": (["gemma-3-270m-tools", "gemma-3-270m"], [
        "tool_no_tool_accuracy", "probe_accuracy.embed", "probe_accuracy.L0", "probe_accuracy.L5",
        "probe_accuracy.L11", "probe_accuracy_decision.L11", "first_layer_probe_95", "worst_mlp_layer",
        "worst_mlp_drop", "mlp_ablation_drop.L5", "mlp_zero_ablation_drop.L5", "mlp_ablation_dnll.L5",
        "flip_rate.L10", "flip_rate.L11", "flip_rate.L12", "null_flip_rate.L11", "flip_rate_whole.L4",
        "pc1_variance.L11", "pc1_mean_diff_share.L11"]),
    "circuit_neurons": (["gemma-3-270m-tools", "gemma-3-270m", "qwen2.5-coder-1.5b"], [
        "heldout_accuracy", "significant_neurons.count", "control_layer.value", "flip_rate_vs_k_at_control_layer.k1",
        "flip_rate_vs_k_at_control_layer.k50", "kill_switch.layer", "kill_switch.neuron", "kill_switch.effect",
        "kill_switch.block_effect", "kill_switch.activation_gap", "steer_layer.value", "steer_force_dp_tool",
        "steer_prevent_dp_tool", "random_direction_dp_tool", "over_calling.alpha",
        "over_calling.no_tool_decline", "over_calling.tool_call", "promoters.0.1", "suppressors.0.1",
        "top10_ablation_drop.L0", "random10_ablation_drop.L0.mean"]),
    "bfcl": (["qwen2.5-coder-1.5b", "gemma-3-270m-tools"], [
        "n_tool_requests", "n_irrelevance", "n_function_lists", "forced_accuracy", "generation_accuracy",
        "chance_accuracy", "tool_call_rate", "irrelevance_call_rate", "tool_no_tool_accuracy", "p_tool_auc"]),
}
# metrics that only some models have: (model, analysis) -> more paths
PINS_EXTRA = {
    ("gemma-3-270m-tools", "circuit_neurons"): [
        "top1_ablation_drop.L11", "top10_ablation_drop.L11", "top10_ablation_drop.L12", "flip_rate_top_k.k5.L11",
        "steer_per_layer_force_dp_tool.L11", "top_promoter_by_layer.L11", "top_suppressor_by_layer.L11",
        "reference_neurons.neurons.0.rank", "reference_neurons.neurons.0.ablation_drop", "divergence_vs_causal_spearman.value",
        "divergence_vs_causal_spearman.p", "steer_force_dp_tool_after_block"],
    ("gemma-3-270m", "circuit_neurons"): [
        "top10_ablation_drop.L11", "steer_per_layer_force_dp_tool.L11", "reference_neurons.neurons.0.rank",
        "reference_neurons.neurons.0.ablation_drop", "steer_force_dp_tool_after_block"],
    ("qwen2.5-coder-1.5b", "circuit_neurons"): ["tool_to_tool_flip_rate", "tool_to_tool_random_flip_rate"],
    ("qwen2.5-coder-1.5b", "bfcl"): [
        "top_heads.0.corr", "top_heads.0.p_holm", "top_heads.0.gold_top1_rate", "top_heads_significant",
        "top_head_mean_gold_top1_rate", "top_head_gold_top1_excess", "looking_vs_picking.looks_at_gold",
        "looking_vs_picking.looks_at_chosen", "ranking.spearman", "ranking.top10_overlap", "selector.margin",
        "selector.model_accuracy", "selector.selector_accuracy", "selector.uncalibrated_accuracy",
        "selector.combined_accuracy", "selector.selector_minus_model", "selector.combined_minus_model",
        "knockout.drop", "knockout.margin_change", "knockout.margin_change_beyond_random"],
}
CASES = [(m, a) for a, (ms, _) in PINS.items() for m in ms]


def lookup(metrics: dict, path: str):
    node = metrics
    for part in path.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def number(x) -> float:
    """A pinned value; a metric that could not be measured (no failures to classify) is pinned as NaN."""
    return float("nan") if x is None else float(x)


def pinned_numbers(model: str, analysis: str) -> dict:
    try:
        result = load_result(PROFILE, model, analysis)
    except FileNotFoundError as e:
        pytest.fail(f"{e} (" + ("make test builds it; make check only compares)" if PROFILE == "fast" else
                                f"make all builds it; published {PROFILE} artifacts live in the repository)"))
    out = {}
    for path in PINS[analysis][1] + PINS_EXTRA.get((model, analysis), []):
        m = lookup(result["metrics"], path)
        if isinstance(m, dict):
            for field in ("value", "lo", "hi", "n"):
                out[f"{path}.{field}"] = [number(m[field])]
        else:
            out[path] = [number(m)]
    return out


@pytest.mark.parametrize("model,analysis", CASES)
def test_pinned(model, analysis, num_regression):
    num_regression.check(pinned_numbers(model, analysis), basename=f"{PROFILE}_{model}_{analysis}",
                         default_tolerance=TOLERANCE[analysis])
