"""Circuit neurons: which MLP neurons carry the tool / no-tool decision, can it be steered, and do the
layers tuning changed most matter?

Method. Balanced tool and no-tool requests with the 10 core tools declared; everything is selected
on the train split (neurons, the kill switch, the steering layer, directions, the over-calling
threshold) and reported on the held-out split. The decision is read at the reply position
(``toolattn.interventions``); a neuron is one hidden unit of a layer's MLP (``toolattn.neurons``).
The per-layer measurements (1, 2 and the steering scan of 4) run at every ``layer_every``-th layer, at
the ``layers_also`` layers and at the control layer; the ranking, the kill-switch search and the
divergence cover every layer.

1. Neurons. Per layer, neurons are ranked by attribution: (mean activation on tool requests - mean
   on no-tool requests) x mean gradient of the decision margin log P(tool) - log P(other), with a
   label-permutation p-value per neuron (BH across every neuron). The top-1 and top-10 neurons of
   each layer are mean-ablated (set to their train mean at the reply position) on held-out requests:
   accuracy drop with a Newcombe interval and exact McNemar p (Holm across layers), against random
   neurons of the same layer (several draws); the top neurons are also ablated one at a time
   (the direct confirmation), and, as a variant, the top-1 and top-10 at every position after the
   tool block.
2. Control point. The top-k neurons (k in ``patch_k``) of a layer are patched at the reply position
   from a request of the other class (tool into no-tool and back); flip rate among pairs decided
   differently (Wilson), against the same patch between requests of the same class (the null;
   one-sided Fisher exact test, Holm across layers per k) and against k random neurons.
   Promoters (mean gradient > 0) and suppressors (< 0): the neurons of largest attribution, with
   their activations on example requests.
3. Kill switch. Candidates: per layer, the neurons of largest attribution that are more active on
   no-tool requests; the one whose ablation most raises the call rate on train no-tool requests is
   the kill switch. Held-out: its ablation (mean and zero) on no-tool requests, and its blocking value
   (its most call-suppressing value on train no-tool requests) set on tool requests, each against
   random neurons of the same layer. The reference's named neurons are measured where the model has
   the layers and neurons they name (same architecture, different weights).
4. Steering, tool / no-tool. The difference-of-means direction per layer (train), added as
   alpha x unit direction x the layer's mean residual norm at the reply position (and, as a variant,
   at every position after the tool block); a per-layer scan at ``alpha_layer`` picks the layer
   (largest P(tool) rise on train no-tool requests) unless the settings name one; held-out: the
   change of P(tool) on no-tool requests (force, +alpha) and on tool requests (prevent, -alpha) over
   the alpha sweep, against a random direction of the same norm.
5. Steering, tool to tool (models whose forced choice is meaningful): per-tool directions (each
   tool's mean residual over train tool requests that pick it minus the mean over all of them); on
   held-out tool requests the direction of every other tool with a direction is added after the tool
   block; flip rate = share of (request, target) pairs whose forced choice becomes the target, against
   random directions of the same norm.
6. Over-calling. Along the prevent sweep (train) the smallest alpha with the best balanced accuracy
   is chosen; the held-out calibration curve gives the call rate on tool requests and the decline
   rate on no-tool requests at every alpha.
7. Weight divergence. Per layer, ||W_child - W_parent||_F / ||W_parent||_F over the attention and
   the MLP weights (so a layer's weight scale alone cannot rank it), against the causal importance
   per layer of part 1 (circuit_zones' mean-ablation accuracy drop when that artifact exists, else
   this analysis's top-10 neuron ablation effect): Spearman rho with a permutation p.

A ``Steerer`` fitted from the train activations (directions, the kill switch) is saved in the
artifact folder (``steerer/``), for ``toolattn.steering.Steerer.load``.
"""

from __future__ import annotations

import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import stats as sps  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from analyses.circuit_zones import change_rate, drop, flip_rate, pairs, same_class_pairs  # noqa: E402
from toolattn import paths  # noqa: E402
from toolattn.artifacts import Run, load_profile, load_result, sha256_file  # noqa: E402
from toolattn.datasets import load_prompts, select  # noqa: E402
from toolattn.device import note_loaded  # noqa: E402
from toolattn.models import ModelError, load_model  # noqa: E402
from toolattn.neurons import (NeuronEdit, NeuronIntervener, attribution, attribution_pvalues, class_means,  # noqa: E402
                              decision_runs, find_kill_switch, kill_switch_candidates, neuron_gradients, replaced,
                              top_neurons)
from toolattn.scoring import ToolChoiceEngine, decoder_parts  # noqa: E402
from toolattn.stats import (benjamini_hochberg, bootstrap_ci, bootstrap_mean_difference, empty, fisher_greater, holm,  # noqa: E402
                            paired_difference, permutation_pvalue, proportion)
from toolattn.steering import (Steerer, difference_of_means, per_tool_directions, position_hooks,  # noqa: E402
                               random_direction, residual_scale, steer_after_block, steer_decisions,
                               steering_vector)
from toolattn.tools import core_tools  # noqa: E402

# The reference's named neurons (FunctionGemma 270M): layer -> neurons.
REFERENCE_NEURONS = {"kill_switch": (12, [230]), "promoters": (11, [803, 2036, 831]),
                     "suppressors": (11, [1237, 821, 1347])}
REFERENCE_SHAPE = (18, 2048)  # its layers x MLP neurons: the named neurons exist only in this architecture


def settings(profile: str, model: str) -> dict:
    """The profile's ``circuit_neurons`` table, updated by its ``per_model`` entry for ``model``."""
    prof = load_profile(profile)
    base = dict(prof["circuit_neurons"])
    override = base.pop("per_model", {}).get(model, {})
    return dict(base, **override, batch_size=prof["batch_size"], seed=prof["seed"])


def measured_layers(L: int, cfg: dict, control: int) -> list[int]:
    """The layers of the per-layer measurements: every ``layer_every``-th one, the ``layers_also`` ones
    the model has, and the control layer."""
    return sorted(set(range(0, L, cfg["layer_every"])) | {x for x in cfg["layers_also"] if x < L} | {control})


def _floats(x) -> list:
    """A tensor or array as nested float lists (rounded to 8 decimals, for JSON chunks)."""
    return np.asarray(x, dtype=float).round(8).tolist()


def _read(r) -> dict:
    """A ``Readout`` as ``{"p_tool": [n], "decides_tool": [n]}`` lists."""
    return {"p_tool": _floats(r.p_tool), "decides_tool": r.decides_tool.tolist()}


# --- the run ---------------------------------------------------------------------------------

def run(profile: str, model: str, cfg: dict | None = None) -> None:
    """``cfg``: the analysis settings (default: ``settings``), e.g. a tiny one in tests."""
    cfg = cfg or settings(profile, model)
    prompts = load_prompts()
    train = select(prompts, split="train", n_per_tool=cfg["n_tool"] // 10, n_no_tool=cfg["n_no_tool"], seed=cfg["seed"])
    test = select(prompts, split="heldout", n_per_tool=cfg["n_tool"] // 10, n_no_tool=cfg["n_no_tool"], seed=cfg["seed"])
    tools = core_tools()
    lm = load_model(model, profile=profile)
    niv = NeuronIntervener(lm, tools, batch_size=cfg["batch_size"], nll_tokens=cfg["nll_tokens"])
    inputs = {"data/prompts.json": sha256_file(paths.PROMPTS_FILE), "data/tools.json": sha256_file(paths.TOOLS_FILE),
              **lm.files}
    y_tr, y_te = np.array([r.needs_tool for r in train]), np.array([r.needs_tool for r in test])
    with Run(profile, model, "circuit_neurons", cfg, inputs, seed=cfg["seed"]) as run:
        t = time.time()
        fs_tr, fs_te = niv.format([r.text for r in train]), niv.format([r.text for r in test])
        clean_tr = niv.clean(fs_tr)
        clean_te = niv.clean(fs_te)
        run.timing("clean_s", time.time() - t)
        L, D = niv.layers, niv.d_mlp

        t = time.time()
        sel = run.chunk("selection", lambda: selection(niv, fs_tr, clean_tr, y_tr, cfg))
        attr = torch.tensor(sel["attribution"])
        run.timing("selection_s", time.time() - t)

        # train-split quantities every later step uses
        mean_tr = clean_tr.mlp.mean(1)  # [layers, d_mlp] the mean at the reply position
        direction = difference_of_means(clean_tr.resid, y_tr)
        scale = residual_scale(clean_tr.resid)
        partners = {"cross": pairs(y_te, cfg["seed"]), "same_class": same_class_pairs(y_te, cfg["seed"])}
        src = {k: np.where(v >= 0, v, np.arange(len(v))) for k, v in partners.items()}

        def layer_chunk(layer):  # every held-out measurement at one layer
            return per_layer(niv, fs_tr, clean_tr, fs_te, clean_te, layer, attr[layer], mean_tr[layer], direction[layer],
                             float(scale[layer]), src, cfg)

        control = control_layer(profile, model, sel, L)
        measured = measured_layers(L, cfg, control[0])
        names = [f"layer-L{layer:02d}" for layer in measured]
        t = time.time()
        bar = tqdm(total=len(names), desc=f"{model} neurons per layer", unit="layer")

        def compute(name):
            out = layer_chunk(int(name.split("-L")[1]))
            bar.update(1)
            return out

        chunks = run.chunks(names, compute)
        bar.close()
        if chunks is None:
            return  # a helper process of `accelerate launch`: its chunks are written
        layers = dict(zip(measured, chunks))
        run.timing("layers_s", time.time() - t)

        t = time.time()
        kill = run.chunk("kill-switch", lambda: kill_switch(niv, fs_tr, clean_tr, y_tr, fs_te, clean_te, y_te, sel, cfg))
        reference = run.chunk("reference-neurons", lambda: reference_neurons(niv, fs_te, clean_te, sel, mean_tr, cfg))
        run.timing("kill_switch_s", time.time() - t)

        t = time.time()
        steer_layer, steer_source = choose_steer_layer(layers, cfg, y_tr)
        sweep = run.chunk(f"steering-L{steer_layer:02d}", lambda: steering_sweep(
            niv, fs_tr, clean_tr, y_tr, fs_te, clean_te, steer_layer, direction[steer_layer], float(scale[steer_layer]), cfg))
        run.timing("steering_s", time.time() - t)

        t = time.time()
        choices = run.chunk("choices", lambda: forced_choices(lm, tools, train, test, cfg))
        labels = [c if n else None for c, n in zip(choices["train"], y_tr)]
        t2t = run.chunk(f"tool-to-tool-L{steer_layer:02d}", lambda: tool_to_tool(
            lm, tools, fs_te, test, clean_tr.resid[steer_layer], labels, choices["heldout"], steer_layer,
            float(scale[steer_layer]), cfg)) if cfg["tool_to_tool"] else None
        run.timing("tool_to_tool_s", time.time() - t)

        t = time.time()
        divergence = run.chunk("divergence", lambda: weight_divergence_chunk(lm, model, profile, cfg))
        run.timing("divergence_s", time.time() - t)

        kill_fit = None if kill["layer"] is None else {
            "layer": kill["layer"], "neuron": kill["neuron"], "value": kill["blocking_value"],
            "call_rate_rise": kill["train_call_rate_rise"], "dp_tool": kill["train_dp_tool"]}
        Steerer.from_activations(lm, tools, clean_tr.resid, y_tr, labels, steer_layer, kill_fit,
                                 cfg["alpha_report"]).save(run.dir / "steerer")
        summarise(run, cfg, model, profile, train, test, y_te, clean_te, sel, layers, partners, kill, reference,
                  steer_layer, steer_source, sweep, t2t, divergence, L, D, control)


# --- 1. selection on the train split --------------------------------------------------------

def selection(niv, fs, clean, needs, cfg) -> dict:
    """Attribution of every neuron on the train split, its permutation p, the class means and the mean
    gradient (``[layers][d_mlp]`` lists)."""
    grads = neuron_gradients(niv, fs, clean)
    tool, no_tool = class_means(clean.mlp, needs)
    p = attribution_pvalues(clean.mlp, grads, needs, cfg["n_permutations"], cfg["seed"])
    q = benjamini_hochberg(p.reshape(-1)).reshape(p.shape)
    return {"attribution": _floats(attribution(clean.mlp, grads, needs)), "p": _floats(p), "q": _floats(q),
            "tool_mean": _floats(tool), "no_tool_mean": _floats(no_tool), "grad_mean": _floats(grads.mean(1)),
            "no_tool_max": _floats(clean.mlp[:, torch.as_tensor(~needs)].max(1).values),
            "no_tool_min": _floats(clean.mlp[:, torch.as_tensor(~needs)].min(1).values)}


def random_sets(D: int, k: int, draws: int, seed: int) -> list[np.ndarray]:
    """``draws`` seeded random sets of ``k`` distinct neurons out of ``D``."""
    rng = np.random.default_rng(seed)
    return [rng.choice(D, min(k, D), replace=False) for _ in range(draws)]


def per_layer(niv, fs_tr, clean_tr, fs_te, clean_te, layer, attr, mean, direction, scale, src, cfg) -> dict:
    """Everything measured at one layer on the held-out requests (and the steering scan on train):
    ablation of the top and random neurons, single-neuron confirmation, top-k patching with its nulls,
    steering at ``alpha_layer``."""
    D = niv.d_mlp
    order = top_neurons(attr, D)
    acts = clean_te.mlp[layer]
    seed = cfg["seed"] + 1000 * layer
    out = {"top": order[: max(cfg["patch_k"] + cfg["top_k"])].tolist()}

    # 1. ablation: top-k and random-k (mean at the reply position), top neurons one at a time
    conds = {f"top{k}": order[:k] for k in cfg["top_k"]}
    for k in cfg["top_k"]:
        for d, s in enumerate(random_sets(D, k, cfg["n_random_draws"], seed + k)):
            conds[f"random{k}_{d}"] = torch.as_tensor(s)
    for j in order[: cfg["confirm_k"]].tolist():
        conds[f"single{j}"] = [j]
    reads = decision_runs(niv, fs_te, clean_te, layer, [replaced(acts, s, mean) for s in conds.values()], cfg["max_rows"])
    out["ablation"] = {name: _read(r) for name, r in zip(conds, reads)}
    if cfg["after_block_ablation"]:
        for k in cfg["top_k"]:
            edit = NeuronEdit(layer, order[:k], mean)
            out["ablation"][f"after_block_top{k}"] = _read(niv.run(fs_te, lambda batch: [edit], clean_te, below=layer))

    # 2. patching the top-k from the other class, the same class, and random-k from the other class
    conds = {}
    for k in cfg["patch_k"]:
        k = min(k, D)
        rand = torch.as_tensor(random_sets(D, k, 1, seed + 7 * k)[0])
        conds[f"cross{k}"] = replaced(acts, order[:k], acts[src["cross"]])
        conds[f"same{k}"] = replaced(acts, order[:k], acts[src["same_class"]])
        conds[f"random{k}"] = replaced(acts, rand, acts[src["cross"]])
    reads = decision_runs(niv, fs_te, clean_te, layer, list(conds.values()), cfg["max_rows"])
    out["patching"] = {name: r.decides_tool.tolist() for name, r in zip(conds, reads)}

    # 4. steering scan: +/- the tool direction and +/- a random direction of the same norm
    v = steering_vector(direction, cfg["alpha_layer"], scale)
    rv = random_direction(v, seed)
    out["steer_test"] = {name: _read(r) for name, r in zip(
        ("force", "prevent", "random_force", "random_prevent"), steer_decisions(niv, fs_te, clean_te, layer, [v, -v, rv, -rv],
                                                                                cfg["max_rows"]))}
    out["steer_train"] = {name: _read(r) for name, r in zip(("force", "prevent"), steer_decisions(
        niv, fs_tr, clean_tr, layer, [v, -v], cfg["max_rows"]))}
    return out


# --- 3. the kill switch ---------------------------------------------------------------------

def _blocking(sel, layer, neuron) -> float:
    """The neuron's most call-suppressing value on train no-tool requests (max if its mean gradient is
    negative, else min)."""
    lo, hi = sel["no_tool_min"][layer][neuron], sel["no_tool_max"][layer][neuron]
    return hi if sel["grad_mean"][layer][neuron] < 0 else lo


def kill_switch(niv, fs_tr, clean_tr, y_tr, fs_te, clean_te, y_te, sel, cfg) -> dict:
    """Search on train; on held-out, mean and zero ablation of the kill switch (no-tool requests) and its
    blocking value (tool requests), each with random neurons of the same layer."""
    attr = torch.tensor(sel["attribution"])
    cands = kill_switch_candidates(attr, torch.tensor(sel["tool_mean"]), torch.tensor(sel["no_tool_mean"]),
                                   cfg["kill_candidates"])
    found = find_kill_switch(niv, fs_tr, clean_tr, y_tr, cands, clean_tr.mlp.mean(1), cfg["max_rows"])
    out = {"candidates": found["scores"], "layer": found["layer"], "neuron": found["neuron"],
           "train_call_rate_rise": found["call_rate_rise"], "train_dp_tool": found["dp_tool"]}
    if found["layer"] is None:
        return out
    layer, j = found["layer"], found["neuron"]
    acts, mean = clean_te.mlp[layer], clean_tr.mlp.mean(1)[layer]
    others = [int(x[0]) for x in random_sets(niv.d_mlp, 1, cfg["n_random_draws"] + 1, cfg["seed"] + 99)
              if int(x[0]) != j][: cfg["n_random_draws"]]
    conds = {"mean": replaced(acts, [j], mean), "zero": replaced(acts, [j], torch.zeros(niv.d_mlp))}
    conds["block"] = replaced(acts, [j], torch.full((niv.d_mlp,), _blocking(sel, layer, j)))
    for r in others:
        conds[f"random_mean{r}"] = replaced(acts, [r], mean)
        conds[f"random_block{r}"] = replaced(acts, [r], torch.full((niv.d_mlp,), _blocking(sel, layer, r)))
    reads = decision_runs(niv, fs_te, clean_te, layer, list(conds.values()), cfg["max_rows"])
    out.update({"blocking_value": _blocking(sel, layer, j), "random_neurons": others,
                "heldout": {name: _read(r) for name, r in zip(conds, reads)}})
    return out


def reference_neurons(niv, fs, clean, sel, mean_tr, cfg) -> dict:
    """The reference's named neurons on this model: their attribution rank (train) and their mean-ablation
    and blocking-value effects (held-out); not applicable when the model lacks those layers or neurons."""
    if (niv.layers, niv.d_mlp) != REFERENCE_SHAPE:
        return {"applicable": False, "why": f"the model has {niv.layers} layers x {niv.d_mlp} MLP neurons; the named "
                                            f"neurons are those of a {REFERENCE_SHAPE[0]} x {REFERENCE_SHAPE[1]} model"}
    out = {"applicable": True, "neurons": []}
    for role, (layer, ns) in REFERENCE_NEURONS.items():
        attr = torch.tensor(sel["attribution"][layer])
        rank = torch.argsort(torch.argsort(-attr))
        acts = clean.mlp[layer]
        mean = mean_tr[layer]
        for j in ns:
            reads = decision_runs(niv, fs, clean, layer, [
                replaced(acts, [j], mean), replaced(acts, [j], torch.full((niv.d_mlp,), _blocking(sel, layer, j)))],
                cfg["max_rows"])
            out["neurons"].append({"role": role, "layer": layer, "neuron": j, "rank": int(rank[j]) + 1,
                                   "attribution": sel["attribution"][layer][j], "q": sel["q"][layer][j],
                                   "tool_mean": sel["tool_mean"][layer][j], "no_tool_mean": sel["no_tool_mean"][layer][j],
                                   "grad_mean": sel["grad_mean"][layer][j],
                                   "mean_ablation": _read(reads[0]), "block": _read(reads[1])})
    return out


# --- 4/6. steering ---------------------------------------------------------------------------

def choose_steer_layer(layers: dict, cfg, y_tr) -> tuple[int, str]:
    """The configured steering layer, else the one whose force steering at ``alpha_layer`` gives the train
    no-tool requests the highest mean P(tool) (their clean P(tool) is the same at every layer)."""
    if cfg.get("steer_layer") is not None:
        return int(cfg["steer_layer"]), "settings"
    gains = {layer: float(np.mean(np.array(d["steer_train"]["force"]["p_tool"])[~y_tr])) for layer, d in layers.items()}
    return max(gains, key=gains.get), "largest force gain on train no-tool requests (per-layer scan)"


def steering_sweep(niv, fs_tr, clean_tr, y_tr, fs_te, clean_te, layer, direction, scale, cfg) -> dict:
    """The dose-response at ``layer``: every alpha of the sweep, +/- the tool direction and +/- a random
    direction of the same norm, at the reply position (held-out; prevent also on train, for the
    over-calling threshold) and after the tool block (held-out)."""
    unit_v = steering_vector(direction, 1.0, scale)
    rand = random_direction(unit_v, cfg["seed"] + 5)
    alphas = cfg["alphas"]
    conds = [s * a * v for a in alphas for v, s in ((unit_v, 1), (unit_v, -1), (rand, 1), (rand, -1))]
    reads = steer_decisions(niv, fs_te, clean_te, layer, conds, cfg["max_rows"])
    kinds = ("force", "prevent", "random_force", "random_prevent")
    out = {"alphas": alphas, "decision": {k: [_read(reads[4 * i + j]) for i in range(len(alphas))]
                                          for j, k in enumerate(kinds)}}
    train = steer_decisions(niv, fs_tr, clean_tr, layer, [-a * unit_v for a in alphas], cfg["max_rows"])
    out["train_prevent"] = [_read(r) for r in train]
    if cfg["after_block_steering"]:
        out["after_block"] = {k: [_read(steer_after_block(niv, fs_te, clean_te, layer, s * a * v)) for a in alphas]
                              for k, (v, s) in zip(kinds, ((unit_v, 1), (unit_v, -1), (rand, 1), (rand, -1)))}
    return out


# --- 5. tool to tool -------------------------------------------------------------------------

def forced_choices(lm, tools, train, test, cfg) -> dict:
    """The forced choice of every request of both splits (None for no-tool requests)."""
    engine = ToolChoiceEngine(lm, cfg["batch_size"], progress=False)
    out = {}
    for name, reqs in (("train", train), ("heldout", test)):
        texts = [r.text for r in reqs if r.needs_tool]
        picked = iter(c.choice for c in engine.score(texts, tools)) if texts else iter(())
        out[name] = [next(picked) if r.needs_tool else None for r in reqs]
    return out


def tool_to_tool(lm, tools, fs, test, resid_tr, labels, choices_te, layer, scale, cfg) -> dict:
    """For every target tool with a direction, held-out tool requests whose clean choice is another tool
    are steered towards it (``t2t_alpha``, every position after the tool block) and their forced choice
    re-read; the same with a random direction of the same norm. ``rows``: ``[request, source, target,
    steered choice, random choice]``."""
    names = [t.name for t in tools]
    dirs, counts = per_tool_directions(resid_tr[None], labels, names)
    engine = ToolChoiceEngine(lm, cfg["batch_size"], progress=False, prefix_end="tool_block")
    T = fs[0].tool_block_end
    idx = [i for i, r in enumerate(test) if r.needs_tool]
    rows = []
    targets = [b for b, _ in enumerate(names) if counts[b] >= cfg["t2t_min_requests"]]
    targets = targets[: cfg["t2t_targets"]] if cfg["t2t_targets"] else targets
    for b in tqdm(targets, desc="tool to tool", unit="target"):
        target = names[b]
        mine = [i for i in idx if choices_te[i] != target]
        if cfg["t2t_requests"] and len(mine) > cfg["t2t_requests"]:  # a seeded draw of the requests
            rng = np.random.default_rng(cfg["seed"] + b)
            mine = sorted(rng.choice(mine, cfg["t2t_requests"], replace=False).tolist())
        if not mine:
            continue
        v = steering_vector(dirs[0, b], cfg["t2t_alpha"], scale)
        picked = {}
        for kind, vec in (("steer", v), ("random", random_direction(v, cfg["seed"] + b))):
            with position_hooks(lm.model, lambda pos: pos >= T, (layer, vec)):
                picked[kind] = [c.choice for c in engine.score([test[i].text for i in mine], tools)]
        rows += [[i, choices_te[i], target, s, r] for i, s, r in zip(mine, picked["steer"], picked["random"])]
    return {"counts": counts.tolist(), "rows": rows}


# --- 7. weight divergence --------------------------------------------------------------------

def weight_divergence(parent, child) -> list[dict]:
    """Per decoder layer, ``||W_child - W_parent||_F / ||W_parent||_F`` over the attention weights, the MLP
    weights and both (matrices only; the two models must share the architecture)."""
    with torch.no_grad():
        return [layer_divergence(lp, lc) for lp, lc in zip(decoder_parts(parent)[0].layers,
                                                           decoder_parts(child)[0].layers)]


def layer_divergence(lp, lc) -> dict:
    """``{"attention", "mlp", "total"}``: the relative Frobenius change of one layer's weight matrices."""
    row = {}
    for part, mods in (("attention", ("self_attn",)), ("mlp", ("mlp",)), ("total", ("self_attn", "mlp"))):
        diff = base = 0.0
        for m in mods:
            for wp, wc in zip(getattr(lp, m).parameters(), getattr(lc, m).parameters()):
                if wp.dim() == 2:
                    diff += float((wc.float() - wp.float()).pow(2).sum())
                    base += float(wp.float().pow(2).sum())
        row[part] = (diff / base) ** 0.5 if base else None
    return row


def weight_divergence_chunk(lm, model, profile, cfg) -> dict:
    """The weight divergence of ``model`` from its recorded parent, or why it cannot be measured."""
    parent = cfg["parents"].get(model)
    if parent is None:
        return {"applicable": False, "why": f"no parent model is recorded for {model}"}
    try:  # float32 on the CPU whatever the run's precision: a fine-tune's changes are below bfloat16's step
        plm = load_model(parent, profile=profile, device="cpu", dtype=torch.float32)
    except (ModelError, OSError) as e:
        return {"applicable": False, "why": f"the parent {parent} could not be loaded: {e}"}
    a, b = decoder_parts_shapes(plm.model), decoder_parts_shapes(lm.model)
    if a != b:
        return {"applicable": False, "why": f"{parent} and {model} differ in architecture"}
    w = next(lm.model.parameters())
    child = lm if (w.dtype, w.device.type) == (torch.float32, "cpu") else \
        load_model(model, profile=profile, device="cpu", dtype=torch.float32)
    note_loaded(lm.model)  # the manifest names the precision the analysis ran in
    return {"applicable": True, "parent": parent, "layers": weight_divergence(plm.model, child.model)}


def decoder_parts_shapes(model) -> list:
    """The shapes of every decoder-layer parameter (two models are comparable when these agree)."""
    return [tuple(p.shape) for layer in decoder_parts(model)[0].layers for p in layer.parameters()]


def spearman(x, y, n_permutations: int = 2000, seed: int = 0) -> dict:
    """Spearman rho of two per-layer series with a two-sided permutation p (None when either is constant)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return {"value": None, "p": None, "n": int(len(x))}
    rho = float(sps.spearmanr(x, y)[0])
    p = permutation_pvalue(x, y, lambda a, b: sps.spearmanr(a, b)[0], n_permutations, seed)
    return {"value": rho, "p": p, "n": int(len(x))}


# --- summary ---------------------------------------------------------------------------------

def _dp(after, before, n_resamples: int = 200) -> dict:
    """The mean change ``after - before`` (``[n]`` each) with a bootstrap interval."""
    return bootstrap_ci(np.asarray(after) - np.asarray(before), n_resamples=n_resamples)


def summarise(run, cfg, model, profile, train, test, y, clean, sel, layers, partners, kill, reference, steer_layer,
              steer_source, sweep, t2t, divergence, L, D, control) -> None:
    """Per-layer metrics are keyed ``L<i>`` over the measured layers (``layers``' keys)."""
    d0, p0 = clean.decides_tool.numpy(), clean.p_tool.numpy()
    dp = lambda after, before: _dp(after, before, cfg["n_bootstrap"])  # noqa: E731
    correct0 = d0 == y
    measured = sorted(layers)
    keys = [f"L{i}" for i in measured]
    m: dict = {"n_train": len(train), "n_heldout": len(test), "n_layers": L, "d_mlp": D,
               "measured_layers": measured, "heldout_accuracy": proportion(correct0)}

    # 1. ranking and ablation
    q = np.array(sel["q"])
    m["significant_neurons"] = {"count": int((q < cfg["alpha"]).sum()), "of": int(q.size), "rule": "BH q < alpha"}
    m["top_neurons"] = {k: layers[i]["top"][:10] for i, k in zip(measured, keys)}
    for k in cfg["top_k"]:
        drops = {key: drop(d0, np.array(layers[i]["ablation"][f"top{k}"]["decides_tool"]), y) for i, key in zip(measured, keys)}
        p_holm = dict(zip(keys, holm([drops[key]["p"] for key in keys])))
        rand = {key: [drop(d0, np.array(layers[i]["ablation"][f"random{k}_{d}"]["decides_tool"]), y)["value"]
                      for d in range(cfg["n_random_draws"])] for i, key in zip(measured, keys)}
        m[f"top{k}_ablation_drop"] = {key: dict(drops[key], p_holm=float(p_holm[key])) for key in keys}
        m[f"random{k}_ablation_drop"] = {key: {"mean": float(np.mean(rand[key])), "max": float(np.max(rand[key])),
                                              "draws": rand[key]} for key in keys}
        m[f"top{k}_beyond_random"] = {key: bool(p_holm[key] < cfg["alpha"] and drops[key]["value"] > max(rand[key]))
                                      for key in keys}
        m[f"top{k}_ablation_dp_tool"] = {key: dp(layers[i]["ablation"][f"top{k}"]["p_tool"], p0)
                                         for i, key in zip(measured, keys)}
        if cfg["after_block_ablation"]:
            m[f"after_block_top{k}_ablation_drop"] = {
                key: drop(d0, np.array(layers[i]["ablation"][f"after_block_top{k}"]["decides_tool"]), y)
                for i, key in zip(measured, keys)}
    m["single_neuron_dp_tool"] = {key: {name[6:]: float(np.mean(np.array(r["p_tool"]) - p0))
                                        for name, r in layers[i]["ablation"].items() if name.startswith("single")}
                                  for i, key in zip(measured, keys)}

    # 2. control point: flip rate vs k
    ks = [min(k, D) for k in cfg["patch_k"]]
    for name in ("flip_rate_top_k", "null_flip_rate_top_k", "random_neuron_flip_rate_top_k", "flip_control_p_holm"):
        m[name] = {}
    for k in ks:
        flips = {key: flip_rate(d0, np.array(layers[i]["patching"][f"cross{k}"]), partners["cross"])
                 for i, key in zip(measured, keys)}
        nulls = {key: change_rate(d0, np.array(layers[i]["patching"][f"same{k}"]), partners["same_class"])
                 for i, key in zip(measured, keys)}
        p = [fisher_greater(round(flips[key]["value"] * flips[key]["n"]), flips[key]["n"],
                            round(nulls[key]["value"] * nulls[key]["n"]), nulls[key]["n"])
             if flips[key]["n"] and nulls[key]["n"] else None for key in keys]
        tested = [i for i, x in enumerate(p) if x is not None]
        adj = dict(zip(tested, holm([p[i] for i in tested])))
        m["flip_rate_top_k"][f"k{k}"] = flips
        m["null_flip_rate_top_k"][f"k{k}"] = nulls
        m["random_neuron_flip_rate_top_k"][f"k{k}"] = {
            key: flip_rate(d0, np.array(layers[i]["patching"][f"random{k}"]), partners["cross"]) for i, key in zip(measured, keys)}
        m["flip_control_p_holm"][f"k{k}"] = {key: (None if j not in adj else float(adj[j])) for j, key in enumerate(keys)}
    control, source = control
    m["control_layer"] = {"value": control, "source": source}
    m["flip_rate_vs_k_at_control_layer"] = {f"k{k}": m["flip_rate_top_k"][f"k{k}"][f"L{control}"] for k in ks}

    # promoters and suppressors
    table, promoters, suppressors = neuron_table(sel, cfg, test, clean, y)
    run.write_csv("promoters_suppressors", table)
    m["promoters"], m["suppressors"] = promoters, suppressors
    for role, sign in (("promoter", 1), ("suppressor", -1)):  # the largest attribution of that sign, per layer
        score = signed_attribution(sel, sign)
        m[f"top_{role}_by_layer"] = {f"L{i}": (int(np.argmax(score[i])) if np.isfinite(score[i]).any() else None)
                                     for i in range(L)}

    # 3. kill switch
    m["kill_switch"], m["reference_neurons"] = kill_summary(kill, clean, y, p0, cfg["n_bootstrap"]), reference_summary(reference, clean, y, p0)

    # 4. steering
    a_idx = cfg["alphas"].index(cfg["alpha_report"]) if cfg["alpha_report"] in cfg["alphas"] else len(cfg["alphas"]) - 1
    alpha = cfg["alphas"][a_idx]
    m["steer_layer"] = {"value": steer_layer, "source": steer_source}
    m["steer_alpha"] = alpha
    dec = sweep["decision"]
    no, yes = ~y, y
    m["steer_force_dp_tool"] = dp(np.array(dec["force"][a_idx]["p_tool"])[no], p0[no])
    m["steer_prevent_dp_tool"] = dp(np.array(dec["prevent"][a_idx]["p_tool"])[yes], p0[yes])
    m["random_direction_dp_tool"] = dp(np.array(dec["random_force"][a_idx]["p_tool"])[no], p0[no])
    m["random_direction_prevent_dp_tool"] = dp(np.array(dec["random_prevent"][a_idx]["p_tool"])[yes], p0[yes])
    m["steer_force_call_rate_change"] = paired_difference(np.array(dec["force"][a_idx]["decides_tool"])[no], d0[no])
    m["steer_prevent_call_rate_change"] = paired_difference(np.array(dec["prevent"][a_idx]["decides_tool"])[yes], d0[yes])
    if "after_block" in sweep:
        ab = sweep["after_block"]
        m["steer_force_dp_tool_after_block"] = dp(np.array(ab["force"][a_idx]["p_tool"])[no], p0[no])
        m["steer_prevent_dp_tool_after_block"] = dp(np.array(ab["prevent"][a_idx]["p_tool"])[yes], p0[yes])
        m["random_direction_dp_tool_after_block"] = dp(np.array(ab["random_force"][a_idx]["p_tool"])[no], p0[no])
    m["steer_per_layer_force_dp_tool"] = {key: dp(np.array(layers[i]["steer_test"]["force"]["p_tool"])[no], p0[no])
                                          for i, key in zip(measured, keys)}
    m["steer_per_layer_random_dp_tool"] = {
        key: float(np.mean(np.array(layers[i]["steer_test"]["random_force"]["p_tool"])[no] - p0[no])) for i, key in zip(measured, keys)}
    dose = []
    for i, a in enumerate(cfg["alphas"]):
        row = {"alpha": a}
        for scope, data in (("decision", dec), ("after_block", sweep.get("after_block"))):
            if data is None:
                continue
            row[f"{scope}_force_p_tool_no_tool"] = float(np.mean(np.array(data["force"][i]["p_tool"])[no]))
            row[f"{scope}_random_p_tool_no_tool"] = float(np.mean(np.array(data["random_force"][i]["p_tool"])[no]))
            row[f"{scope}_prevent_p_tool_tool"] = float(np.mean(np.array(data["prevent"][i]["p_tool"])[yes]))
            row[f"{scope}_random_prevent_p_tool_tool"] = float(np.mean(np.array(data["random_prevent"][i]["p_tool"])[yes]))
        dose.append(row)
    run.write_csv("dose_response", dose)

    # 6. over-calling: alpha chosen on train, the curve on held-out
    y_tr = np.array([r.needs_tool for r in train])
    bal_tr = [0.5 * (np.mean(np.array(r["decides_tool"])[y_tr]) + np.mean(~np.array(r["decides_tool"])[~y_tr]))
              for r in sweep["train_prevent"]]
    star = int(np.argmax(bal_tr))  # the first (smallest) alpha with the best balanced accuracy
    curve = []
    for i, a in enumerate(cfg["alphas"]):
        d = np.array(dec["prevent"][i]["decides_tool"])
        call, decline = proportion(d[yes]), proportion(~d[no])
        curve.append({"alpha": a, "tool_call_rate": call["value"], "tool_call_lo": call["lo"], "tool_call_hi": call["hi"],
                      "no_tool_decline_rate": decline["value"], "decline_lo": decline["lo"], "decline_hi": decline["hi"],
                      "train_balanced_accuracy": float(bal_tr[i])})
    run.write_csv("over_calling", curve)
    d_star = np.array(dec["prevent"][star]["decides_tool"])
    m["over_calling"] = {"alpha": cfg["alphas"][star], "rule": "smallest alpha of the prevent sweep with the best "
                         "balanced accuracy on train", "clean_no_tool_decline": proportion(~d0[no]),
                         "clean_tool_call": proportion(d0[yes]), "no_tool_decline": proportion(~d_star[no]),
                         "tool_call": proportion(d_star[yes]),
                         "decline_gain": paired_difference(~d_star[no], ~d0[no]),
                         "tool_call_loss": paired_difference(d0[yes], d_star[yes])}

    # 5. tool to tool
    if t2t is None or not t2t["rows"]:
        m["tool_to_tool_flip_rate"] = dict(empty(), why="not run" if t2t is None else "no pair to steer")
        m["tool_to_tool_random_flip_rate"] = empty()
    else:
        rows = t2t["rows"]
        flips, rflips = np.array([r[3] == r[2] for r in rows]), np.array([r[4] == r[2] for r in rows])
        m["tool_to_tool_flip_rate"] = proportion(flips)
        m["tool_to_tool_random_flip_rate"] = proportion(rflips)
        m["tool_to_tool_beyond_random_p"] = fisher_greater(int(flips.sum()), len(flips), int(rflips.sum()), len(rflips))
        names = [t.name for t in core_tools()]
        matrix = [{"source": a, **{b: _rate([r for r in rows if r[1] == a and r[2] == b]) for b in names}} for a in names]
        run.write_csv("tool_to_tool", matrix)

    # 7. weight divergence vs causal importance
    m["weight_divergence"], m["divergence_vs_causal_spearman"] = divergence_summary(
        divergence, profile, model, m)
    layer_rows = []
    for i, key in zip(measured, keys):
        row = {"layer": key, "top_neuron": layers[i]["top"][0], "top_attribution": sel["attribution"][i][layers[i]["top"][0]]}
        for k in cfg["top_k"]:
            row[f"top{k}_drop"] = m[f"top{k}_ablation_drop"][key]["value"]
            row[f"top{k}_p_holm"] = m[f"top{k}_ablation_drop"][key]["p_holm"]
            row[f"random{k}_drop_mean"] = m[f"random{k}_ablation_drop"][key]["mean"]
        for k in ks:
            row[f"flip_k{k}"] = m["flip_rate_top_k"][f"k{k}"][key]["value"]
            row[f"null_k{k}"] = m["null_flip_rate_top_k"][f"k{k}"][key]["value"]
        row["steer_force_dp_tool"] = m["steer_per_layer_force_dp_tool"][key]["value"]
        row["steer_random_dp_tool"] = m["steer_per_layer_random_dp_tool"][key]
        if m["weight_divergence"].get("applicable"):
            row.update({f"divergence_{p}": m["weight_divergence"]["layers"][i][p] for p in ("attention", "mlp", "total")})
        layer_rows.append(row)
    run.write_csv("layers", layer_rows)

    fig = figures(layer_rows, dose, curve, ks, model, steer_layer)
    run.save_figure("neurons", fig, f"{model}, held-out requests. Left: accuracy drop when the top-1 / top-10 "
                    "neurons of each layer (ranked by attribution on train) are mean-ablated at the decision position, "
                    "against random neurons of the same layer (mean of the draws). Middle: flip rate when the top-k "
                    "neurons are patched from a request of the other class (solid) and of the same class (null, dotted). "
                    f"Right: P(tool) when the tool direction of layer {steer_layer} is added (force, on no-tool "
                    "requests) or subtracted (prevent, on tool requests), against a random direction of the same norm; "
                    "and the over-calling calibration curve along the prevent sweep.")
    plt.close(fig)
    run.result(m)
    ks_ = m["kill_switch"]
    print(f"[circuit_neurons] {model}: kill switch L{ks_['layer']} N{ks_['neuron']}, steer L{steer_layer} force "
          f"dP(tool) {m['steer_force_dp_tool']['value']:+.3f} (random {m['random_direction_dp_tool']['value']:+.3f}), "
          f"prevent {m['steer_prevent_dp_tool']['value']:+.3f}; tool-to-tool {m['tool_to_tool_flip_rate']['value']}")


def _rate(rows) -> float | None:
    """Share of tool-to-tool ``rows`` whose steered choice is the target (None without rows)."""
    return float(np.mean([r[3] == r[2] for r in rows])) if rows else None


def control_layer(profile, model, sel, L) -> tuple[int, str]:
    """circuit_zones' control point when that artifact exists, else the layer whose ten largest
    attributions sum highest on train."""
    try:
        point = load_result(profile, model, "circuit_zones")["metrics"].get("control_point")
    except FileNotFoundError:
        point = None
    if point is not None:
        return int(point), "circuit_zones control point"
    mass = [float(np.sort(np.array(sel["attribution"][i]))[-10:].sum()) for i in range(L)]
    return int(np.argmax(mass)), "largest top-10 attribution mass on train"


def signed_attribution(sel, sign: int) -> np.ndarray:
    """``[layers, d_mlp]`` attribution of the neurons whose mean gradient has ``sign`` (+1 promoters, -1
    suppressors); -inf elsewhere."""
    return np.where(np.sign(np.array(sel["grad_mean"])) == sign, np.array(sel["attribution"]), -np.inf)


def neuron_table(sel, cfg, test, clean, y) -> tuple[list[dict], list, list]:
    """Rows of the promoters (mean gradient > 0) and suppressors (< 0) of largest attribution over every
    layer, with their activations on the first ``n_examples`` held-out requests of each class."""
    attr = np.array(sel["attribution"])
    examples = list(np.flatnonzero(y)[: cfg["n_examples"]]) + list(np.flatnonzero(~y)[: cfg["n_examples"]])
    rows, short = [], {}
    for role, sign in (("promoter", 1), ("suppressor", -1)):
        score = signed_attribution(sel, sign).reshape(-1)
        for flat in np.argsort(-score, kind="stable")[: cfg["n_table"]]:
            if not np.isfinite(score[flat]):
                continue
            layer, j = divmod(int(flat), attr.shape[1])
            row = {"role": role, "layer": layer, "neuron": j, "attribution": float(attr[layer, j]),
                   "q": sel["q"][layer][j], "tool_mean": sel["tool_mean"][layer][j],
                   "no_tool_mean": sel["no_tool_mean"][layer][j], "grad_mean": float(sel["grad_mean"][layer][j])}
            for e in examples:
                row[f"act: {test[e].text[:40]}"] = float(clean.mlp[layer, e, j])
            rows.append(row)
            short.setdefault(role, []).append([layer, j, float(attr[layer, j])])
    return rows, short.get("promoter", [])[:5], short.get("suppressor", [])[:5]


def kill_summary(kill, clean, y, p0, n_bootstrap: int = 200) -> dict:
    """The kill switch's held-out effects with their random-neuron controls."""
    out = {"layer": kill["layer"], "neuron": kill["neuron"], "selected_on": "train",
           "train_call_rate_rise": kill["train_call_rate_rise"], "n_candidates": len(kill["candidates"])}
    if kill["layer"] is None:
        return dict(out, effect=None)
    h, d0 = kill["heldout"], clean.decides_tool.numpy()
    no, yes = ~y, y

    def rise(r):  # calls made on no-tool requests, clean -> edited (paired)
        return paired_difference(np.array(r["decides_tool"])[no], d0[no])
    out["effect"] = rise(h["mean"])
    out["zero_ablation_effect"] = rise(h["zero"])
    out["dp_tool_no_tool"] = _dp(np.array(h["mean"]["p_tool"])[no], p0[no], n_bootstrap)
    out["block_effect"] = paired_difference(d0[yes], np.array(h["block"]["decides_tool"])[yes])
    out["block_dp_tool_tool"] = _dp(np.array(h["block"]["p_tool"])[yes], p0[yes], n_bootstrap)
    out["blocking_value"] = kill["blocking_value"]
    act = clean.mlp[kill["layer"], :, kill["neuron"]].numpy()  # held-out activations at the reply position
    out["activation_gap"] = bootstrap_mean_difference(act[no], act[yes], n_bootstrap)  # no-tool minus tool
    out["random_effect"] = [rise(h[f"random_mean{r}"])["value"] for r in kill["random_neurons"]]
    out["random_block_effect"] = [paired_difference(d0[yes], np.array(h[f"random_block{r}"]["decides_tool"])[yes])["value"]
                                  for r in kill["random_neurons"]]
    return out


def reference_summary(reference, clean, y, p0) -> dict:
    """The reference neurons' rows with their held-out effects (accuracy drop, P(tool) change per class,
    calls lost on tool requests at the blocking value); ``y``, ``p0``: ``[n]`` gold classes and clean P(tool)."""
    if not reference["applicable"]:
        return reference
    d0 = clean.decides_tool.numpy()
    rows = []
    for r in reference["neurons"]:
        rows.append({k: r[k] for k in ("role", "layer", "neuron", "rank", "attribution", "q", "tool_mean", "no_tool_mean",
                                       "grad_mean")} | {
            "ablation_drop": drop(d0, np.array(r["mean_ablation"]["decides_tool"]), y),
            "ablation_dp_tool_no_tool": float(np.mean(np.array(r["mean_ablation"]["p_tool"])[~y] - p0[~y])),
            "ablation_dp_tool_tool": float(np.mean(np.array(r["mean_ablation"]["p_tool"])[y] - p0[y])),
            "block_call_drop_tool": paired_difference(d0[y], np.array(r["block"]["decides_tool"])[y])})
    return {"applicable": True, "neurons": rows}


def divergence_summary(divergence, profile, model, m) -> tuple[dict, dict]:
    """The divergence per layer and its Spearman rho with the causal importance per layer."""
    if not divergence["applicable"]:
        return divergence, dict(empty(), why=divergence["why"])
    div = divergence["layers"]
    try:
        zones = load_result(profile, model, "circuit_zones")["metrics"]
        causal = {int(k[1:]): v["value"] for k, v in zones["mlp_ablation_drop"].items() if v.get("value") is not None}
        source = "circuit_zones mean-ablation accuracy drop"
    except FileNotFoundError:
        causal = {int(k[1:]): abs(v["value"]) for k, v in m.get("top10_ablation_dp_tool", {}).items()}
        source = "circuit_neurons |dP(tool)| of the top-10 neuron ablation"
    layers = sorted(causal)
    out = {}
    for part in ("mlp", "attention", "total"):
        out[part] = spearman([div[i][part] for i in layers], [causal[i] for i in layers])
    top = lambda xs: [int(i) for i in np.argsort(-np.asarray(xs, float), kind="stable")[:3]]  # noqa: E731
    most_modified = [layers[i] for i in top([div[i]["total"] for i in layers])]
    most_causal = [layers[i] for i in top([causal[i] for i in layers])]
    rho = out["total"]
    return ({"applicable": True, "parent": divergence["parent"], "layers": div},
            {"value": rho["value"], "p": rho["p"], "n": rho["n"], "by_part": out, "causal_source": source,
             "most_modified_layers": most_modified, "most_causal_layers": most_causal,
             "overlap": sorted(set(most_modified) & set(most_causal))})


def figures(rows, dose, curve, ks, model, steer_layer):
    """Ablation by layer, flip rate vs k by layer, the dose-response and the over-calling curve."""
    x = [int(r["layer"][1:]) for r in rows]
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
    ax = axes[0]
    for key, style in (("top1_drop", "-o"), ("top10_drop", "-s"), ("random1_drop_mean", ":o"), ("random10_drop_mean", ":s")):
        if key in rows[0]:
            ax.plot(x, [r[key] for r in rows], style, ms=3, label=key.replace("_", " "))
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("layer"), ax.set_ylabel("accuracy drop"), ax.legend(fontsize=6)
    ax = axes[1]
    for k in ks:
        line, = ax.plot(x, [np.nan if r[f"flip_k{k}"] is None else r[f"flip_k{k}"] for r in rows], "-o", ms=3, label=f"k={k}")
        ax.plot(x, [np.nan if r[f"null_k{k}"] is None else r[f"null_k{k}"] for r in rows], ":", color=line.get_color())
    ax.set_ylim(-0.03, 1.03), ax.set_xlabel("layer"), ax.set_ylabel("flip rate"), ax.legend(fontsize=6)
    ax = axes[2]
    a = [r["alpha"] for r in dose]
    for key, label in (("decision_force_p_tool_no_tool", "force (no-tool)"), ("decision_random_p_tool_no_tool", "random"),
                       ("decision_prevent_p_tool_tool", "prevent (tool)"),
                       ("after_block_force_p_tool_no_tool", "force, after block")):
        if key in dose[0]:
            ax.plot(a, [r[key] for r in dose], "-o", ms=3, label=label)
    ax.set_xlabel(f"alpha (layer {steer_layer})"), ax.set_ylabel("mean P(tool)"), ax.legend(fontsize=6)
    ax = axes[3]
    ax.plot([r["alpha"] for r in curve], [r["tool_call_rate"] for r in curve], "-o", ms=3, label="calls on tool requests")
    ax.plot([r["alpha"] for r in curve], [r["no_tool_decline_rate"] for r in curve], "-s", ms=3,
            label="declines on no-tool requests")
    ax.set_ylim(-0.03, 1.03), ax.set_xlabel("prevent alpha"), ax.legend(fontsize=6)
    fig.suptitle(model, fontsize=9)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    from toolattn.errors import analysis_main

    analysis_main(run, __doc__, "gemma-3-270m-tools")
