"""Circuit zones: where is the tool / no-tool decision made?

Method. Balanced tool and no-tool requests of the held-out split (never seen in fine-tuning) are
formatted with the 10 core tools declared. The decision is read at the first reply position:
P(tool) is the probability of the tokens that open a call, and the model decides "tool" when
opening a call beats every other first token (``decides_tool``). We state how often that reading
agrees with the model's free greedy reply, parsed for a call.

1. Linear probes. At the decision position, for the token embeddings ("emb") and after every
   layer, a logistic-regression probe on standardised features; held-out accuracy from stratified
   5-fold cross-validation with a 95% bootstrap CI over requests, against the same probe trained on
   shuffled labels (the mean of a few shuffles). The decision position holds the same template token
   in every request, so its embedding carries nothing; we also probe the mean embedding of each
   request's own text tokens.
2. Decision geometry. PCA of the decision-position residual per layer (centred, not scaled): the
   share of variance on PC1, and the cross-validated accuracy of a logistic threshold on PC1 alone
   (PCA fitted inside each fold).
3. Whole-MLP ablation. Each layer's MLP output set to zero, or to its mean over the analysed requests
   at the same position, at every position after the tool block. Accuracy drop against the clean
   run (paired bootstrap CI) and the mean change of P(tool).
4. Activation patching. Tool and no-tool requests are paired (seeded shuffle of each class, i-th
   with i-th). The residual stream (and, separately, the MLP output) of a layer at the decision
   position is copied from one request of a pair into the other, both ways. Flip rate: among
   directed pairs whose clean decisions differ, the share whose decision becomes the source's.
5. Zones, from the numbers above by a fixed rule (``zone_rule``): decodable from the first layer whose
   probe accuracy is at least ``probe_threshold``; compute layers have a zero-ablation accuracy drop
   whose 95% CI lies above 0; control layers have a residual flip rate of at least ``flip_threshold``;
   stable layers are the other layers from the decodable one on; earlier ones with neither effect
   are "pre-decodable"; a layer whose MLP was not ablated (a profile may ablate every n-th layer
   only) and that is not a control layer is "not ablated".

Layers are numbered from 0 on every model; a claim stated for FunctionGemma's L11 is measured at L11
here, though a different model (or a differently tuned child) need not place anything there.
"""

from __future__ import annotations

import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from toolattn import paths  # noqa: E402
from toolattn.artifacts import Run, load_profile, sha256_file  # noqa: E402
from toolattn.datasets import load_prompts, select  # noqa: E402
from toolattn.interventions import SITES, Intervener  # noqa: E402
from toolattn.models import load_model  # noqa: E402
from toolattn.parsing import parse_call  # noqa: E402
from toolattn.scoring import ToolChoiceEngine  # noqa: E402
from toolattn.stats import accuracy, bootstrap_ci  # noqa: E402
from toolattn.tools import core_tools  # noqa: E402

ZONES = ("pre-decodable", "compute", "compute+control", "control", "stable", "not ablated")
ZONE_COLORS = {"pre-decodable": "#d9d9d9", "compute": "#e6550d", "compute+control": "#9e3d8c",
               "control": "#3182bd", "stable": "#a1d99b", "not ablated": "#ffffff"}


# --- probes and geometry ---------------------------------------------------------------------

def probe(X: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0, shuffles: int = 3) -> dict:
    """Cross-validated accuracy of a standardised logistic-regression probe on ``X [n, features]``
    for binary ``y [n]``: ``{"acc": {value, lo, hi, n}, "shuffled": mean accuracy on shuffled labels}``."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    correct = cross_val_predict(_probe_model(), X, y, cv=cv) == y
    rng = np.random.default_rng(seed)
    shuffled = []
    for _ in range(shuffles):
        ys = rng.permutation(y)
        shuffled.append(float(np.mean(cross_val_predict(_probe_model(), X, ys, cv=cv) == ys)))
    return {"acc": accuracy(correct), "shuffled": float(np.mean(shuffled))}


def _probe_model():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))


def top_dimension(X: np.ndarray, y: np.ndarray) -> int:
    """The feature with the largest |weight| of the standardised probe fitted on all of ``X``."""
    return int(np.argmax(np.abs(_probe_model().fit(X, y)[-1].coef_[0])))


def pc1(X: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> dict:
    """Share of the variance of ``X [n, features]`` on its first principal component, and the
    cross-validated accuracy of a logistic threshold on PC1 alone: ``{"var": float|None, "acc": {...}}``."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline

    if np.all(X == X[0]):  # the same vector for every request (the embedding of a fixed token)
        return {"var": None, "acc": accuracy(y == np.bincount(y).argmax())}  # what any probe predicts then
    var = float(PCA(1).fit(X).explained_variance_ratio_[0])
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    pred = cross_val_predict(make_pipeline(PCA(1), LogisticRegression()), X, y, cv=cv)
    return {"var": var, "acc": accuracy(pred == y)}


# --- causal measures -------------------------------------------------------------------------

def drop(clean: np.ndarray, edited: np.ndarray, needs: np.ndarray) -> dict:
    """Tool / no-tool accuracy lost by an edit (``decides_tool`` before and after, ``[n]`` bool), with
    a paired bootstrap CI over requests."""
    return bootstrap_ci((clean == needs).astype(float) - (edited == needs).astype(float))


def pairs(needs: np.ndarray, seed: int) -> np.ndarray:
    """``partner [n]``: each tool request paired with a no-tool request (seeded shuffle of each class,
    i-th with i-th); requests left over (unequal classes) get -1."""
    rng = np.random.default_rng(seed)
    tool, no_tool = rng.permutation(np.flatnonzero(needs)), rng.permutation(np.flatnonzero(~needs))
    partner = np.full(len(needs), -1)
    for a, b in zip(tool, no_tool):
        partner[a], partner[b] = b, a
    return partner


def flip_rate(clean: np.ndarray, patched: np.ndarray, partner: np.ndarray) -> dict | None:
    """Among directed pairs (source -> recipient) whose clean decisions differ, the share of
    recipients whose patched decision becomes the source's (bootstrap CI); None if no pair differs."""
    r = np.flatnonzero((partner >= 0))
    r = r[clean[partner[r]] != clean[r]]
    if len(r) == 0:
        return None
    return accuracy(patched[r] == clean[partner[r]])


def zone_rule(probe_acc: list, zero_drop_lo: list, flip: list, probe_threshold: float,
              flip_threshold: float) -> tuple[int | None, list[str]]:
    """``(decodable_from, zone per layer)`` from per-layer numbers. ``probe_acc`` has the embedding
    first (index 0 = "emb"), then one entry per layer; ``zero_drop_lo`` (None: that layer's MLP was not
    ablated) and ``flip`` (None: no pair to flip) one per layer. ``decodable_from`` counts the
    embedding as -1."""
    first = next((i - 1 for i, a in enumerate(probe_acc) if a is not None and a >= probe_threshold), None)
    zones = []
    for layer, (lo, f) in enumerate(zip(zero_drop_lo, flip)):
        compute = lo is not None and lo > 0
        control = f is not None and f >= flip_threshold
        if compute or control:
            zones.append("compute+control" if compute and control else "compute" if compute else "control")
        elif lo is None:
            zones.append("not ablated")
        else:
            zones.append("stable" if first is not None and layer >= first else "pre-decodable")
    return first, zones


# --- the run ---------------------------------------------------------------------------------

def settings(profile: str, model: str) -> dict:
    prof = load_profile(profile)
    base = dict(prof["circuit_zones"])
    override = base.pop("per_model", {}).get(model, {})
    return dict(base, **override, batch_size=prof["batch_size"], seed=prof["seed"])


def run(profile: str, model: str) -> None:
    cfg = settings(profile, model)
    requests = select(load_prompts(), split=cfg["split"], n_per_tool=cfg["n_tool"] // 10,
                      n_no_tool=cfg["n_no_tool"], seed=cfg["seed"])
    tools = core_tools()
    lm = load_model(model, profile=profile)
    iv = Intervener(lm, tools, batch_size=cfg["batch_size"])
    inputs = {"data/prompts.json": sha256_file(paths.PROMPTS_FILE), "data/tools.json": sha256_file(paths.TOOLS_FILE),
              **lm.files}
    needs = np.array([r.needs_tool for r in requests])
    seconds = {}
    with Run(profile, model, "circuit_zones", cfg, inputs, seed=cfg["seed"]) as run:
        t = time.time()
        fs = iv.format([r.text for r in requests])
        clean = iv.clean(fs)
        decides = clean.decides_tool.numpy()
        seconds["clean"] = time.time() - t

        t = time.time()
        replies = run.chunk("generation", lambda: ToolChoiceEngine(lm, cfg["batch_size"], progress=False).generate(
            [r.text for r in requests], tools, max_new_tokens=cfg["max_new_tokens"]))
        names = {x.name for x in tools}
        made_call = np.array([parse_call(x).name in names for x in replies])
        seconds["generation"] = time.time() - t

        t = time.time()
        y = needs.astype(int)
        acts = {"emb": clean.emb, **{f"L{i}": clean.resid[i] for i in range(iv.layers)}}
        probes = run.chunk("probes", lambda: {name: {**probe(x.numpy(), y, cfg["cv_folds"], cfg["seed"], cfg["n_shuffles"]),
                                                     "pc1": pc1(x.numpy(), y, cfg["cv_folds"], cfg["seed"])}
                                              for name, x in acts.items()})
        request_emb = probe(clean.request_emb.numpy(), y, cfg["cv_folds"], cfg["seed"], cfg["n_shuffles"])
        seconds["probes"] = time.time() - t

        t = time.time()
        ablated = [i for i in range(0, iv.layers, cfg["ablation_every"])]
        sub = np.arange(len(requests)) if not cfg["ablation_requests"] else ablation_subset(needs, cfg)
        fs_sub = [fs[i] for i in sub]
        clean_sub = iv.clean(fs_sub) if len(sub) < len(requests) else clean
        ablation = {}
        for layer in ablated:
            def compute(layer=layer):
                out = {}
                for kind in ("zero", "mean"):
                    r = iv.ablate_mlp(fs_sub, clean_sub, layer, kind)
                    out[kind] = {"p_tool": r.p_tool.tolist(), "decides_tool": r.decides_tool.tolist()}
                return out
            ablation[layer] = run.chunk(f"ablation-L{layer:02d}", compute)
        seconds["ablation"] = time.time() - t

        t = time.time()
        partner = pairs(needs, cfg["seed"])
        src = np.where(partner >= 0, partner, np.arange(len(partner)))  # unpaired requests patch themselves
        patching = {}
        for layer in range(iv.layers):
            def compute(layer=layer):
                out = {}
                for site in SITES:
                    acts_site = clean.resid[layer] if site == "resid" else clean.mlp[layer]
                    out[site] = iv.patch_decision(fs, clean, layer, site, acts_site[src]).decides_tool.tolist()
                return out
            patching[layer] = run.chunk(f"patching-L{layer:02d}", compute)
        seconds["patching"] = time.time() - t

        summarise(run, cfg, requests, needs, decides, made_call, clean, probes, request_emb, sub, clean_sub,
                  ablation, partner, patching, iv.layers, seconds)


def ablation_subset(needs: np.ndarray, cfg: dict) -> np.ndarray:
    """The first ``ablation_requests / 2`` requests of each class, in file order."""
    k = cfg["ablation_requests"] // 2
    return np.sort(np.concatenate([np.flatnonzero(needs)[:k], np.flatnonzero(~needs)[:k]]))


def summarise(run, cfg, requests, needs, decides, made_call, clean, probes, request_emb, sub, clean_sub,
              ablation, partner, patching, L, seconds) -> None:
    y = needs.astype(int)
    p_clean = clean_sub.p_tool.numpy()
    d_clean = clean_sub.decides_tool.numpy()
    rows = []
    metrics = {"probe_accuracy": {}, "shuffled_probe_accuracy": {}, "pc1_variance": {}, "pc1_accuracy": {},
               "mlp_ablation_drop": {}, "mlp_mean_ablation_drop": {}, "mlp_ablation_dp_tool": {},
               "flip_rate": {}, "flip_rate_mlp": {}}
    emb = probes["emb"]
    metrics["probe_accuracy"]["embed"] = emb["acc"]
    metrics["shuffled_probe_accuracy"]["embed"] = emb["shuffled"]
    for layer in [None] + list(range(L)):
        key = "emb" if layer is None else f"L{layer}"
        pr = probes[key]
        row = {"layer": key, "probe_acc": pr["acc"]["value"], "probe_lo": pr["acc"]["lo"], "probe_hi": pr["acc"]["hi"],
               "shuffled_acc": pr["shuffled"], "pc1_var": pr["pc1"]["var"], "pc1_acc": pr["pc1"]["acc"]["value"]}
        if layer is not None:
            metrics["probe_accuracy"][key] = pr["acc"]
            metrics["shuffled_probe_accuracy"][key] = pr["shuffled"]
            metrics["pc1_variance"][key] = pr["pc1"]["var"]
            metrics["pc1_accuracy"][key] = pr["pc1"]["acc"]
            ab = ablation.get(layer)
            if ab is not None:
                zero = drop(d_clean, np.array(ab["zero"]["decides_tool"]), needs[sub])
                mean = drop(d_clean, np.array(ab["mean"]["decides_tool"]), needs[sub])
                dp = bootstrap_ci(np.array(ab["zero"]["p_tool"]) - p_clean)
                metrics["mlp_ablation_drop"][key] = zero
                metrics["mlp_mean_ablation_drop"][key] = mean
                metrics["mlp_ablation_dp_tool"][key] = dp
                row.update(zero_drop=zero["value"], zero_lo=zero["lo"], zero_hi=zero["hi"], mean_drop=mean["value"],
                           mean_lo=mean["lo"], mean_hi=mean["hi"], dP_tool=dp["value"],
                           dP_tool_tool=float(np.mean((np.array(ab["zero"]["p_tool"]) - p_clean)[needs[sub]])),
                           dP_tool_no_tool=float(np.mean((np.array(ab["zero"]["p_tool"]) - p_clean)[~needs[sub]])))
            else:
                row.update({k: None for k in ("zero_drop", "zero_lo", "zero_hi", "mean_drop", "mean_lo", "mean_hi",
                                              "dP_tool", "dP_tool_tool", "dP_tool_no_tool")})
            fr = flip_rate(decides, np.array(patching[layer]["resid"]), partner)
            fm = flip_rate(decides, np.array(patching[layer]["mlp"]), partner)
            metrics["flip_rate"][key], metrics["flip_rate_mlp"][key] = fr, fm
            row.update(flip_resid=fr and fr["value"], flip_resid_lo=fr and fr["lo"], flip_resid_hi=fr and fr["hi"],
                       flip_mlp=fm and fm["value"], flip_mlp_lo=fm and fm["lo"], flip_mlp_hi=fm and fm["hi"])
        else:
            row.update({k: None for k in ("zero_drop", "zero_lo", "zero_hi", "mean_drop", "mean_lo", "mean_hi",
                                          "dP_tool", "dP_tool_tool", "dP_tool_no_tool", "flip_resid", "flip_resid_lo",
                                          "flip_resid_hi", "flip_mlp", "flip_mlp_lo", "flip_mlp_hi")})
        rows.append(row)

    first, zones = zone_rule([r["probe_acc"] for r in rows], [r["zero_lo"] for r in rows[1:]],
                             [r["flip_resid"] for r in rows[1:]], cfg["probe_threshold"], cfg["flip_threshold"])
    rows[0]["zone"] = "embedding"
    for r, z in zip(rows[1:], zones):
        r["zone"] = z
    # the CSV leads with the columns named in the method; extra columns follow
    lead = ["layer", "probe_acc", "probe_lo", "probe_hi", "shuffled_acc", "pc1_var", "pc1_acc", "zero_drop", "mean_drop",
            "dP_tool", "flip_resid", "flip_mlp", "zone"]
    rows = [{**{k: r[k] for k in lead}, **{k: v for k, v in r.items() if k not in lead}} for r in rows]
    run.write_csv("layers", rows)

    measured = {k: v for k, v in metrics["mlp_ablation_drop"].items()}
    worst = max(measured, key=lambda k: measured[k]["value"])
    flips = {k: v for k, v in metrics["flip_rate"].items() if v is not None}
    zone_layers = {z: [i for i, x in enumerate(zones) if x == z] for z in ZONES}
    metrics.update({
        "n_requests": len(requests), "n_tool_requests": int(needs.sum()), "n_no_tool_requests": int((~needs).sum()),
        "n_layers": L, "n_ablation_requests": len(sub), "ablated_layers": sorted(ablation),
        "n_pairs": int((partner >= 0).sum() // 2),
        "n_flip_pairs": int(sum((partner >= 0) & (decides[np.maximum(partner, 0)] != decides))),
        "tool_no_tool_accuracy": accuracy(decides == needs),
        "generation_tool_no_tool_accuracy": accuracy(made_call == needs),
        "agreement_decides_vs_generation": accuracy(decides == made_call),
        "embedding_probe_accuracy": emb["acc"],
        "request_embedding_probe_accuracy": request_emb["acc"],
        "request_embedding_shuffled_accuracy": request_emb["shuffled"],
        "embed_top_dimension": top_dimension(clean.request_emb.numpy(), y),
        "first_layer_probe_95": first,
        "worst_mlp_layer": int(worst[1:]), "worst_mlp_drop": measured[worst],
        "mlp_ablation_argmax_layer": int(worst[1:]),
        "layers_flip_above_50": [int(k[1:]) for k, v in flips.items() if v["value"] > 0.5],
        "zones": zones, "zone_layers": zone_layers,
        "zone_rule": {"probe_threshold": cfg["probe_threshold"], "flip_threshold": cfg["flip_threshold"],
                      "compute": "zero-ablation accuracy drop with 95% CI above 0"},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    })
    fig = layer_figure(rows, zones, run.model, cfg)
    run.save_figure("layers", fig, f"Per layer, at the decision position of {run.model}: probe accuracy (5-fold CV, "
                    "95% CI band; shuffled-label control dashed), share of variance on PC1, accuracy drop when the "
                    "MLP is ablated at every position after the tool block (zero / mean, 95% CI), and flip rate "
                    "when the residual stream or MLP output is patched from the paired request of the other class. "
                    "Background: the measured zones.")
    plt.close(fig)
    fig = zone_figure(zones, first, run.model)
    run.save_figure("zones", fig, f"Zones of {run.model}, derived from the measurements by the stated rule "
                    f"(decodable: probe accuracy >= {cfg['probe_threshold']:.0%}; compute: ablation drop CI above 0; "
                    f"control: flip rate >= {cfg['flip_threshold']:.0%}).")
    plt.close(fig)
    run.result(metrics)
    print(f"[circuit_zones] {run.model}: emb probe {emb['acc']['value']:.2f}, first layer >= "
          f"{cfg['probe_threshold']:.0%}: {first}, worst MLP L{metrics['worst_mlp_layer']} drop "
          f"{metrics['worst_mlp_drop']['value']:.2f}, flip > 50%: {metrics['layers_flip_above_50']}; "
          f"agreement with generation {metrics['agreement_decides_vs_generation']['value']:.2f}; "
          + ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items()))


def _shade(ax, zones):
    for i, z in enumerate(zones):
        ax.axvspan(i - 0.5, i + 0.5, facecolor=ZONE_COLORS[z], alpha=0.2, lw=0)


def _col(rows, key):
    return np.array([np.nan if r[key] is None or r[key] == "" else r[key] for r in rows], float)


def layer_figure(rows, zones, model, cfg):
    x = np.arange(-1, len(rows) - 1)  # -1 = embeddings
    fig, axes = plt.subplots(4, 1, figsize=(7.5, 8.5), sharex=True)
    ax = axes[0]
    ax.plot(x, _col(rows, "probe_acc"), marker="o", ms=3, label="probe (CV)")
    ax.fill_between(x, _col(rows, "probe_lo"), _col(rows, "probe_hi"), alpha=0.2)
    ax.plot(x, _col(rows, "shuffled_acc"), ls="--", color="grey", label="shuffled labels")
    ax.plot(x, _col(rows, "pc1_acc"), marker=".", ms=3, label="PC1 alone (CV)")
    ax.axhline(cfg["probe_threshold"], color="k", lw=0.5, ls=":")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0.3, 1.03)
    ax.legend(fontsize=7, loc="lower right")
    axes[1].plot(x, _col(rows, "pc1_var"), marker="o", ms=3, color="tab:purple")
    axes[1].set_ylabel("variance on PC1")
    axes[1].set_ylim(0, 1)
    ax = axes[2]
    for key, label in (("zero", "zero ablation"), ("mean", "mean ablation")):
        v = _col(rows, f"{key}_drop")
        ok = ~np.isnan(v)
        ax.errorbar(x[ok], v[ok], yerr=[(v - _col(rows, f"{key}_lo"))[ok], (_col(rows, f"{key}_hi") - v)[ok]],
                    marker="o", ms=3, capsize=2, label=label)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylabel("accuracy drop")
    ax.legend(fontsize=7)
    ax = axes[3]
    for key, label in (("flip_resid", "residual stream"), ("flip_mlp", "MLP output")):
        v = _col(rows, key)
        ok = ~np.isnan(v)
        ax.errorbar(x[ok], v[ok], yerr=[(v - _col(rows, f"{key}_lo"))[ok], (_col(rows, f"{key}_hi") - v)[ok]],
                    marker="o", ms=3, capsize=2, label=label)
    ax.axhline(cfg["flip_threshold"], color="k", lw=0.5, ls=":")
    ax.set_ylabel("flip rate (patching)")
    ax.set_ylim(-0.03, 1.03)
    ax.legend(fontsize=7)
    for ax in axes:
        _shade(ax, zones)
    axes[-1].set_xticks(x, ["emb"] + [str(i) for i in range(len(rows) - 1)], fontsize=7)
    axes[-1].set_xlabel("layer")
    axes[0].set_title(model, fontsize=9)
    fig.tight_layout()
    return fig


def zone_figure(zones, first, model):
    fig, ax = plt.subplots(figsize=(7.5, 1.6))
    for i, z in enumerate(zones):
        ax.barh(0, 1, left=i - 0.5, color=ZONE_COLORS[z], edgecolor="grey" if z == "not ablated" else "white",
                hatch="//" if z == "not ablated" else None)
        ax.text(i, 0, str(i), ha="center", va="center", fontsize=7)
    if first is not None:
        ax.axvline(first - 0.5, color="k", lw=1.5)
        ax.text(first - 0.45, 0.45, "decodable", fontsize=7, va="bottom")
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=ZONE_COLORS[z], edgecolor="grey",
                             hatch="//" if z == "not ablated" else None) for z in ZONES if z in zones]
    ax.legend(handles, [z for z in ZONES if z in zones], fontsize=7, ncol=5, loc="upper center",
              bbox_to_anchor=(0.5, -0.25), frameon=False)
    ax.set_xlim(-1, len(zones) - 0.5)
    ax.set_ylim(-0.5, 0.9)
    ax.set_yticks([])
    ax.set_xticks([])
    ax.set_title(f"{model}: zones by layer", fontsize=9)
    for s in ax.spines.values():
        s.set_visible(False)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    from toolattn.errors import analysis_main

    analysis_main(run, __doc__, "gemma-3-270m-tools")
