"""Circuit zones: where is the tool / no-tool decision made?

Method. Balanced tool and no-tool requests of the held-out split (never seen in fine-tuning) are
formatted with the 10 core tools declared. The decision is read at the first reply position:
P(tool) is the probability of the tokens that open a call, and the model decides "tool" when
opening a call beats every other first token (``decides_tool``). We state how often that reading
agrees with the model's free greedy reply, parsed for a call.

1. Linear probes. At the decision position, after every layer, a logistic-regression probe on
   standardised features; held-out accuracy from stratified k-fold cross-validation (Wilson
   interval over requests), against the same probe on shuffled labels. Two targets: the gold label
   (does the request need a tool) and the model's own decision (they differ where the model errs).
   The embedding claim is measured on the mean token embedding of each request's own text; the
   embedding at the decision position is the same template token in every request, so its probe
   sits at the majority rate by construction and is kept only as a sanity check.
2. Decision geometry, per layer (PCA of the decision-position residual, centred): the share of the
   total variance on PC1; the between-class share of the variance of the PC1 scores; and the share
   of the squared class-mean difference that lies along PC1 (bootstrap CI over requests).
3. Whole-MLP ablation. A layer's MLP output replaced by its mean over every token of every prompt
   (primary) or by zero, at every position with the tool block recomputed (the reference's scope);
   and, as a variant, mean ablation after the tool block only. Accuracy drop against the clean run
   with an exact McNemar p and a Newcombe interval; the change of P(tool); and the change of the
   next-token loss on the request text, which tells "breaks the decision" from "breaks the model".
4. Activation patching. Each tool request is paired with a no-tool request (seeded); the residual
   stream (or MLP output) of one layer at the decision position is copied from one into the other,
   both ways. Flip rate: among directed pairs decided differently, the share whose decision becomes
   the source's (Wilson interval; "no pairs" when none differs). Controls: the same patch between two
   requests of the same class (the null: how often a patch changes the decision at all) and between
   random pairs. In the last layers the decision position's residual stream is the read-out itself,
   so patching it flips by construction; patching the whole request (every position after the shared
   tokens, aligned from the decision position) shows the total effect available at each layer.
5. Zones, from the numbers above by fixed rules (``zone_rule``): decodable from the first layer whose
   gold-label probe accuracy is at least ``probe_threshold``; *broken* layers raise the loss on the
   request text by more than ``broken_nll_increase`` nats per token when mean-ablated; *compute*
   layers (not broken) lose accuracy under mean ablation, exact McNemar p < ``alpha`` after Holm
   across the ablated layers; *control* layers flip at least ``flip_threshold`` of the pairs decided
   differently and more than the same-class null (one-sided Fisher exact p < ``alpha`` after Holm
   across layers); the control point is the first control layer; *stable* layers are the others from
   the decodable one on, and earlier ones are *pre-decodable*; a layer whose MLP was not ablated (a
   profile may ablate every n-th layer only) and that is not a control layer is *not ablated*.

Layers are numbered from 0 on every model; a claim stated for FunctionGemma's L11 is measured at L11
here, though a different model (or a differently tuned child) need not place anything there.
"""

from __future__ import annotations

import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from toolattn import paths  # noqa: E402
from toolattn.artifacts import Run, load_profile, sha256_file  # noqa: E402
from toolattn.datasets import load_prompts, select  # noqa: E402
from toolattn.interventions import SITES, Intervener  # noqa: E402
from toolattn.models import load_model  # noqa: E402
from toolattn.parsing import parse_call  # noqa: E402
from toolattn.scoring import ToolChoiceEngine  # noqa: E402
from toolattn.stats import (accuracy, bootstrap_ci, empty, fisher_greater, holm, paired_difference,  # noqa: E402
                            proportion)
from toolattn.tools import core_tools  # noqa: E402

ZONES = ("pre-decodable", "compute", "compute+control", "control", "stable", "broken", "not ablated")
ZONE_COLORS = {"pre-decodable": "#d9d9d9", "compute": "#e6550d", "compute+control": "#9e3d8c",
               "control": "#3182bd", "stable": "#a1d99b", "broken": "#636363", "not ablated": "#ffffff"}
# MLP ablations: (kind, scope); the first is the primary reading, used by the compute rule
ABLATIONS = (("mean", "all"), ("zero", "all"), ("mean", "after_block"))


# --- probes and geometry ---------------------------------------------------------------------

def probe(X: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0, shuffles: int = 3) -> dict:
    """Cross-validated accuracy of a standardised logistic-regression probe on ``X [n, features]``
    for binary ``y [n]``: ``{"acc": {value, lo, hi, n}, "shuffled": mean accuracy on shuffled labels}``.
    Folds are capped by the smaller class; with fewer than 2 of a class there is nothing to probe."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    folds = min(folds, int(np.bincount(y, minlength=2).min()))
    if folds < 2:
        return {"acc": empty(), "shuffled": None}
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    correct = cross_val_predict(_probe_model(), X, y, cv=cv) == y
    rng = np.random.default_rng(seed)
    shuffled = []
    for _ in range(shuffles):
        ys = rng.permutation(y)
        shuffled.append(float(np.mean(cross_val_predict(_probe_model(), X, ys, cv=cv) == ys)))
    return {"acc": accuracy(correct), "shuffled": float(np.mean(shuffled)) if shuffled else None}


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


def pc1_shares(X: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """``(total, between, mean_diff)`` for ``X [n, features]``, binary ``y``: the share of the total
    variance on PC1; the between-class share of the variance of the PC1 scores; and the share of the
    squared class-mean difference that lies along PC1."""
    X = np.asarray(X, np.float64)
    Xc = X - X.mean(0)
    eigval, eigvec = np.linalg.eigh(Xc @ Xc.T)  # the n x n Gram matrix: n << features
    z = eigvec[:, -1] * np.sqrt(max(eigval[-1], 0.0))  # [n] PC1 scores
    v = Xc.T @ eigvec[:, -1] / np.sqrt(max(eigval[-1], 1e-30))  # [features] PC1 direction, unit norm
    between = sum((y == k).sum() * (z[y == k].mean() - z.mean()) ** 2 for k in (0, 1)) / (z ** 2).sum()
    d = X[y == 1].mean(0) - X[y == 0].mean(0)
    return float(eigval[-1] / eigval.clip(0).sum()), float(between), float((d @ v) ** 2 / (d @ d))


def geometry(X: np.ndarray, y: np.ndarray, n_boot: int, seed: int) -> dict | None:
    """``pc1_shares`` with a bootstrap CI (requests resampled within each class) of the mean-difference
    share; None when every request has the same vector (the embedding of a fixed token)."""
    if np.all(X == X[0]):
        return None
    total, between, mean_diff = pc1_shares(X, y)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y == k) for k in (0, 1)]
    boots = [pc1_shares(X[i], y[i])[2] for i in
             (np.concatenate([rng.choice(g, len(g)) for g in groups]) for _ in range(n_boot))]
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"total": total, "between": between,
            "mean_diff": {"value": mean_diff, "lo": float(lo), "hi": float(hi), "n": len(y)}}


# --- causal measures -------------------------------------------------------------------------

def drop(clean: np.ndarray, edited: np.ndarray, needs: np.ndarray) -> dict:
    """Tool / no-tool accuracy lost by an edit (``decides_tool`` before and after, ``[n]`` bool): the
    paired difference with its Newcombe interval and exact McNemar p."""
    return paired_difference(clean == needs, edited == needs)


def pairs(needs: np.ndarray, seed: int) -> np.ndarray:
    """``partner [n]``: each tool request paired with a no-tool request (seeded shuffle of each class,
    i-th with i-th); requests left over (unequal classes) get -1."""
    rng = np.random.default_rng(seed)
    tool, no_tool = rng.permutation(np.flatnonzero(needs)), rng.permutation(np.flatnonzero(~needs))
    partner = np.full(len(needs), -1)
    for a, b in zip(tool, no_tool):
        partner[a], partner[b] = b, a
    return partner


def same_class_pairs(needs: np.ndarray, seed: int) -> np.ndarray:
    """``partner [n]``: each request paired with another request of the same class (a seeded cyclic
    shift of each shuffled class, so nobody is their own partner); -1 in a class of one."""
    rng = np.random.default_rng(seed + 1)
    partner = np.full(len(needs), -1)
    for cls in (True, False):
        idx = rng.permutation(np.flatnonzero(needs == cls))
        if len(idx) > 1:
            partner[idx] = np.roll(idx, 1)
    return partner


def random_pairs(n: int, seed: int) -> np.ndarray:
    """``partner [n]``: each request paired with a random other request (a seeded cyclic shift)."""
    idx = np.random.default_rng(seed + 2).permutation(n)
    partner = np.empty(n, int)
    partner[idx] = np.roll(idx, 1)
    return partner


def flip_rate(clean: np.ndarray, patched: np.ndarray, partner: np.ndarray) -> dict:
    """Among directed pairs (source -> recipient) whose clean decisions differ, the share of
    recipients whose patched decision becomes the source's (Wilson interval); ``n == 0`` if no pair
    differs."""
    r = np.flatnonzero(partner >= 0)
    r = r[clean[partner[r]] != clean[r]]
    return proportion(patched[r] == clean[partner[r]])


def change_rate(clean: np.ndarray, patched: np.ndarray, partner: np.ndarray) -> dict:
    """The same-class null: among directed pairs whose clean decisions agree, the share of recipients
    whose decision changes all the same (the patch carries no other decision, so ~0 unless patching
    itself disrupts the model)."""
    r = np.flatnonzero(partner >= 0)
    r = r[clean[partner[r]] == clean[r]]
    return proportion(patched[r] != clean[r])


def zone_rule(probe_acc: list, compute: list, control: list, broken: list,
              probe_threshold: float) -> tuple[int | None, list[str]]:
    """``(decodable_from, zone per layer)``. ``probe_acc`` has the embedding first (index 0), then one
    value per layer (None: nothing to probe); ``compute`` and ``broken`` (None: MLP not ablated) and
    ``control`` one bool per layer, each already decided by its test. ``decodable_from`` counts the
    embedding as -1."""
    first = next((i - 1 for i, a in enumerate(probe_acc) if a is not None and a >= probe_threshold), None)
    zones = []
    for layer, (cmp, ctl, brk) in enumerate(zip(compute, control, broken)):
        if brk:
            zones.append("broken")
        elif cmp or ctl:
            zones.append("compute+control" if cmp and ctl else "compute" if cmp else "control")
        elif cmp is None:
            zones.append("not ablated")
        else:
            zones.append("stable" if first is not None and layer >= first else "pre-decodable")
    return first, zones


def compute_layers(drops: dict, dnll: dict, alpha: float, broken_nll: float) -> tuple[dict, dict, dict]:
    """``(compute, broken, p_holm)`` per ablated layer (keys as in ``drops``): a layer is broken when the
    mean ablation raises the loss on the request text by more than ``broken_nll`` nats; compute when it
    is not broken and its accuracy drop is positive with exact McNemar p < ``alpha`` after Holm across
    the ablated layers."""
    layers = sorted(drops)
    p = dict(zip(layers, holm([drops[k]["p"] for k in layers])))
    broken = {k: dnll[k]["value"] > broken_nll for k in layers}
    compute = {k: (not broken[k]) and drops[k]["value"] > 0 and p[k] < alpha for k in layers}
    return compute, broken, p


def control_layers(flips: list[dict], nulls: list[dict], threshold: float, alpha: float) -> tuple[list, list]:
    """``(control, p_holm)`` per layer: the cross-class flip rate is at least ``threshold`` and beats the
    same-class null (one-sided Fisher exact test, Holm across the layers that have pairs)."""
    p = [fisher_greater(round(f["value"] * f["n"]), f["n"], round(z["value"] * z["n"]), z["n"])
         if f["n"] and z["n"] else None for f, z in zip(flips, nulls)]
    tested = [i for i, x in enumerate(p) if x is not None]
    adjusted = dict(zip(tested, holm([p[i] for i in tested])))
    p_holm = [adjusted.get(i) for i in range(len(flips))]
    control = [q is not None and q < alpha and f["value"] >= threshold for f, q in zip(flips, p_holm)]
    return control, p_holm


# --- the run ---------------------------------------------------------------------------------

def settings(profile: str, model: str) -> dict:
    prof = load_profile(profile)
    base = dict(prof["circuit_zones"])
    override = base.pop("per_model", {}).get(model, {})
    return dict(base, **override, batch_size=prof["batch_size"], seed=prof["seed"])


def run(profile: str, model: str, cfg: dict | None = None) -> None:
    """``cfg``: the analysis settings (default: the profile's, ``settings``), e.g. a tiny one in tests."""
    cfg = cfg or settings(profile, model)
    requests = select(load_prompts(), split=cfg["split"], n_per_tool=cfg["n_tool"] // 10,
                      n_no_tool=cfg["n_no_tool"], seed=cfg["seed"])
    tools = core_tools()
    lm = load_model(model, profile=profile)
    iv = Intervener(lm, tools, batch_size=cfg["batch_size"], nll_tokens=cfg["nll_tokens"])
    inputs = {"data/prompts.json": sha256_file(paths.PROMPTS_FILE), "data/tools.json": sha256_file(paths.TOOLS_FILE),
              **lm.files}
    needs = np.array([r.needs_tool for r in requests])
    with Run(profile, model, "circuit_zones", cfg, inputs, seed=cfg["seed"]) as run:
        t = time.time()
        fs = iv.format([r.text for r in requests])
        clean = iv.clean(fs)
        decides = clean.decides_tool.numpy()
        run.timing("clean_s", time.time() - t)

        # Ablation and patching, one chunk per layer (split between the processes of `accelerate launch`).
        sub = np.arange(len(requests)) if not cfg["ablation_requests"] else ablation_subset(needs, cfg)
        fs_sub = [fs[i] for i in sub]
        clean_sub = None
        partners = {"cross": pairs(needs, cfg["seed"]), "same_class": same_class_pairs(needs, cfg["seed"]),
                    "random": random_pairs(len(needs), cfg["seed"])}
        src = {k: np.where(v >= 0, v, np.arange(len(v))) for k, v in partners.items()}  # unpaired: themselves

        def ablate(layer):
            nonlocal clean_sub
            if clean_sub is None:
                clean_sub = iv.clean(fs_sub) if len(sub) < len(requests) else clean
            out = {}
            for i, (kind, scope) in enumerate(ABLATIONS):  # the loss check on the primary reading only
                r = iv.ablate_mlp(fs_sub, clean_sub, layer, kind, scope, nll=i == 0)
                out[f"{kind}:{scope}"] = {"p_tool": r.p_tool.tolist(), "decides_tool": r.decides_tool.tolist(),
                                          "text_nll": None if r.text_nll is None else r.text_nll.tolist()}
            return out

        def patch(layer):
            acts = {"resid": clean.resid[layer], "mlp": clean.mlp[layer]}
            conds = {**{site: (site, acts[site][src["cross"]]) for site in SITES},
                     **{kind: ("resid", acts["resid"][src[kind]]) for kind in ("same_class", "random")}}
            read = iv.patch_decisions(fs, clean, layer, list(conds.values()))
            out = {name: r.decides_tool.tolist() for name, r in zip(conds, read)}
            if layer % cfg["patch_whole_every"] == 0:
                out["whole"] = iv.patch_request(fs, clean, layer, src["cross"]).decides_tool.tolist()
            return out

        ablated = list(range(0, iv.layers, cfg["ablation_every"]))
        names = [f"ablation-L{layer:02d}" for layer in ablated] + [f"patching-L{layer:02d}" for layer in range(iv.layers)]
        bar = tqdm(total=len(names), desc=f"{model} ablation and patching", unit="layer")
        timed = {"ablation": 0.0, "patching": 0.0}

        def compute(name):
            kind, layer = name.split("-L")
            t0 = time.time()
            out = (ablate if kind == "ablation" else patch)(int(layer))
            timed[kind] += time.time() - t0
            bar.update(1)
            return out

        chunks = run.chunks(names, compute)
        bar.close()
        if chunks is None:
            return  # a helper process: its chunks are written
        done = dict(zip(names, chunks))
        ablation = {layer: done[f"ablation-L{layer:02d}"] for layer in ablated}
        patching = {layer: done[f"patching-L{layer:02d}"] for layer in range(iv.layers)}
        run.timing("ablation_s", timed["ablation"])
        run.timing("patching_s", timed["patching"])
        if clean_sub is None:
            clean_sub = iv.clean(fs_sub) if len(sub) < len(requests) else clean

        t = time.time()
        replies = run.chunk("generation", lambda: ToolChoiceEngine(lm, cfg["batch_size"], progress=False).generate(
            [r.text for r in requests], tools, max_new_tokens=cfg["max_new_tokens"]))
        names = {x.name for x in tools}
        made_call = np.array([parse_call(x).name in names for x in replies])
        run.timing("generation_s", time.time() - t)

        t = time.time()
        acts = {"emb": clean.emb, **{f"L{i}": clean.resid[i] for i in range(iv.layers)}}
        probes = run.chunk("probes", lambda: {
            name: {"gold": probe(x.numpy(), needs.astype(int), cfg["cv_folds"], cfg["seed"], cfg["n_shuffles"]),
                   "decision": probe(x.numpy(), decides.astype(int), cfg["cv_folds"], cfg["seed"], shuffles=0),
                   "pc1": pc1(x.numpy(), needs.astype(int), cfg["cv_folds"], cfg["seed"]),
                   "geometry": geometry(x.numpy(), needs.astype(int), cfg["n_bootstrap"], cfg["seed"])}
            for name, x in acts.items()})
        request_emb = probe(clean.request_emb.numpy(), needs.astype(int), cfg["cv_folds"], cfg["seed"],
                            cfg["n_shuffles"])
        run.timing("probes_s", time.time() - t)

        summarise(run, cfg, requests, needs, decides, made_call, clean, probes, request_emb, sub, clean_sub,
                  ablation, partners, patching, iv.layers)


def ablation_subset(needs: np.ndarray, cfg: dict) -> np.ndarray:
    """The first ``ablation_requests / 2`` requests of each class, in file order."""
    k = cfg["ablation_requests"] // 2
    return np.sort(np.concatenate([np.flatnonzero(needs)[:k], np.flatnonzero(~needs)[:k]]))


def summarise(run, cfg, requests, needs, decides, made_call, clean, probes, request_emb, sub, clean_sub,
              ablation, partners, patching, L) -> None:
    y = needs.astype(int)
    d_clean = clean_sub.decides_tool.numpy()
    p_clean, nll_clean = clean_sub.p_tool.numpy(), clean_sub.text_nll.numpy()
    keys = [f"L{i}" for i in range(L)]
    metrics = {k: {} for k in (
        "probe_accuracy", "probe_accuracy_decision", "shuffled_probe_accuracy", "pc1_variance", "pc1_between_share",
        "pc1_mean_diff_share", "pc1_accuracy", "mlp_ablation_drop", "mlp_zero_ablation_drop",
        "mlp_after_block_ablation_drop", "mlp_ablation_dp_tool", "mlp_ablation_dnll",
        "flip_rate", "flip_rate_mlp", "flip_rate_whole", "null_flip_rate", "random_flip_rate")}

    # probes and geometry
    for key in keys:
        pr = probes[key]
        metrics["probe_accuracy"][key] = pr["gold"]["acc"]
        metrics["probe_accuracy_decision"][key] = pr["decision"]["acc"]
        metrics["shuffled_probe_accuracy"][key] = pr["gold"]["shuffled"]
        metrics["pc1_accuracy"][key] = pr["pc1"]["acc"]
        g = pr["geometry"]
        metrics["pc1_variance"][key] = g and g["total"]
        metrics["pc1_between_share"][key] = g and g["between"]
        metrics["pc1_mean_diff_share"][key] = g and g["mean_diff"]
    metrics["probe_accuracy"]["embed"] = request_emb["acc"]  # the request's own tokens (the claim's meaning)
    metrics["shuffled_probe_accuracy"]["embed"] = request_emb["shuffled"]

    # ablation: the primary reading (mean, every position) decides the compute rule
    names = {"mean:all": "mlp_ablation_drop", "zero:all": "mlp_zero_ablation_drop",
             "mean:after_block": "mlp_after_block_ablation_drop"}
    for layer, ab in ablation.items():
        key = f"L{layer}"
        for cond, name in names.items():
            metrics[name][key] = drop(d_clean, np.array(ab[cond]["decides_tool"]), needs[sub])
        metrics["mlp_ablation_dp_tool"][key] = bootstrap_ci(np.array(ab["mean:all"]["p_tool"]) - p_clean)
        metrics["mlp_ablation_dnll"][key] = bootstrap_ci(np.array(ab["mean:all"]["text_nll"]) - nll_clean)
    compute, broken, p_compute = compute_layers(metrics["mlp_ablation_drop"], metrics["mlp_ablation_dnll"],
                                                cfg["alpha"], cfg["broken_nll_increase"])

    # patching and its controls
    for layer in range(L):
        key, pt = f"L{layer}", patching[layer]
        metrics["flip_rate"][key] = flip_rate(decides, np.array(pt["resid"]), partners["cross"])
        metrics["flip_rate_mlp"][key] = flip_rate(decides, np.array(pt["mlp"]), partners["cross"])
        metrics["null_flip_rate"][key] = change_rate(decides, np.array(pt["same_class"]), partners["same_class"])
        metrics["random_flip_rate"][key] = flip_rate(decides, np.array(pt["random"]), partners["random"])
        if "whole" in pt:
            metrics["flip_rate_whole"][key] = flip_rate(decides, np.array(pt["whole"]), partners["cross"])
    control, p_control = control_layers([metrics["flip_rate"][k] for k in keys],
                                        [metrics["null_flip_rate"][k] for k in keys],
                                        cfg["flip_threshold"], cfg["alpha"])

    probe_acc = [request_emb["acc"]["value"]] + [metrics["probe_accuracy"][k]["value"] for k in keys]
    first, zones = zone_rule(probe_acc, [compute.get(k) for k in keys], control,
                             [broken.get(k) for k in keys], cfg["probe_threshold"])

    def v(m, field="value"):
        return None if m is None else m[field] if isinstance(m, dict) else m

    rows = []
    for layer, key in enumerate(["emb"] + keys):
        pr = probes[key]
        row = {"layer": key, "probe_acc": v(pr["gold"]["acc"]), "probe_lo": v(pr["gold"]["acc"], "lo"),
               "probe_hi": v(pr["gold"]["acc"], "hi"), "probe_decision_acc": v(pr["decision"]["acc"]),
               "shuffled_acc": pr["gold"]["shuffled"], "pc1_var": v(pr["geometry"] and pr["geometry"]["total"]),
               "pc1_between": v(pr["geometry"] and pr["geometry"]["between"]),
               "pc1_mean_diff": v(pr["geometry"] and pr["geometry"]["mean_diff"]), "pc1_acc": v(pr["pc1"]["acc"])}
        if key != "emb":
            m = lambda name: metrics[name].get(key)  # noqa: E731
            row.update({
                "mean_drop": v(m("mlp_ablation_drop")), "mean_lo": v(m("mlp_ablation_drop"), "lo"),
                "mean_hi": v(m("mlp_ablation_drop"), "hi"), "mean_p": v(m("mlp_ablation_drop"), "p"),
                "mean_p_holm": p_compute.get(key), "zero_drop": v(m("mlp_zero_ablation_drop")),
                "zero_lo": v(m("mlp_zero_ablation_drop"), "lo"), "zero_hi": v(m("mlp_zero_ablation_drop"), "hi"),
                "after_block_drop": v(m("mlp_after_block_ablation_drop")), "dP_tool": v(m("mlp_ablation_dp_tool")),
                "dnll_mean": v(m("mlp_ablation_dnll")),
                "flip_resid": v(m("flip_rate")), "flip_resid_lo": v(m("flip_rate"), "lo"),
                "flip_resid_hi": v(m("flip_rate"), "hi"), "flip_pairs": v(m("flip_rate"), "n"),
                "flip_mlp": v(m("flip_rate_mlp")), "flip_whole": v(m("flip_rate_whole")),
                "null_flip": v(m("null_flip_rate")), "null_flip_hi": v(m("null_flip_rate"), "hi"),
                "random_flip": v(m("random_flip_rate")), "control_p_holm": p_control[layer - 1],
                "zone": zones[layer - 1]})
        else:
            row["zone"] = "embedding"
        rows.append(row)
    lead = ["layer", "probe_acc", "probe_decision_acc", "shuffled_acc", "pc1_var", "pc1_between", "pc1_mean_diff",
            "mean_drop", "zero_drop", "dnll_mean", "flip_resid", "null_flip", "flip_whole", "zone"]
    all_keys = lead + [k for r in rows for k in r if k not in lead]
    rows = [{k: r.get(k) for k in dict.fromkeys(all_keys)} for r in rows]
    run.write_csv("layers", rows)

    drops = metrics["mlp_ablation_drop"]
    worst = max(drops, key=lambda k: drops[k]["value"])
    # layers whose drop cannot be told from the largest one (their interval reaches its lower bound)
    tied = sorted(int(k[1:]) for k in drops if drops[k]["hi"] >= drops[worst]["lo"])
    zone_layers = {z: [i for i, x in enumerate(zones) if x == z] for z in ZONES}
    control_list = [i for i, c in enumerate(control) if c]
    metrics.update({
        "n_requests": len(requests), "n_tool_requests": int(needs.sum()), "n_no_tool_requests": int((~needs).sum()),
        "n_layers": L, "n_ablation_requests": len(sub), "ablated_layers": sorted(ablation),
        "whole_request_patched_layers": sorted(int(k[1:]) for k in metrics["flip_rate_whole"]),
        "n_pairs": int((partners["cross"] >= 0).sum() // 2),
        "n_flip_pairs": int(sum((partners["cross"] >= 0) & (decides[np.maximum(partners["cross"], 0)] != decides))),
        "tool_no_tool_accuracy": accuracy(decides == needs),
        "generation_tool_no_tool_accuracy": accuracy(made_call == needs),
        "agreement_decides_vs_generation": accuracy(decides == made_call),
        "decision_embedding_probe_accuracy": probes["emb"]["gold"]["acc"],  # sanity check: one fixed token
        "request_embedding_probe_accuracy": request_emb["acc"],
        "request_embedding_shuffled_accuracy": request_emb["shuffled"],
        "embed_top_dimension": top_dimension(clean.request_emb.numpy(), y),
        "clean_text_nll": bootstrap_ci(nll_clean),
        "first_layer_probe_95": first,
        "worst_mlp_layer": int(worst[1:]), "worst_mlp_drop": drops[worst],
        "mlp_ablation_argmax_layer": {"value": int(worst[1:]), "candidates": tied},
        "compute_layers": [int(k[1:]) for k in sorted(compute, key=lambda k: int(k[1:])) if compute[k]],
        "broken_layers": [int(k[1:]) for k in sorted(broken, key=lambda k: int(k[1:])) if broken[k]],
        "control_layers": control_list, "control_point": control_list[0] if control_list else None,
        "max_null_flip_rate": max((metrics["null_flip_rate"][k] for k in keys), key=lambda m: m["value"] or 0),
        "zones": zones, "zone_layers": zone_layers,
        "zone_rule": {"probe_threshold": cfg["probe_threshold"], "flip_threshold": cfg["flip_threshold"],
                      "alpha": cfg["alpha"], "broken_nll_increase": cfg["broken_nll_increase"],
                      "compute": "mean-ablation accuracy drop > 0, exact McNemar p < alpha after Holm across the "
                                 "ablated layers, loss on the request text not raised by more than broken_nll_increase",
                      "control": "flip rate >= flip_threshold and above the same-class null, one-sided Fisher exact "
                                 "p < alpha after Holm across layers"},
    })
    fig = layer_figure(rows, zones, run.model, cfg)
    run.save_figure("layers", fig, f"Per layer, at the decision position of {run.model}: probe accuracy on the gold "
                    "label (k-fold CV, 95% Wilson band; shuffled-label control dashed) and on the model's decision; "
                    "PC1 shares (total variance, between-class share, share of the class-mean difference); accuracy "
                    "drop when the MLP is mean- or zero-ablated at every position (95% Newcombe interval) and the "
                    "change of the loss on the request text under mean ablation; flip rate when the residual stream is patched at the "
                    "decision position from a request of the other class, from one of the same class (null), and "
                    "at every request position. Background: the measured zones.")
    plt.close(fig)
    fig = zone_figure(zones, first, run.model)
    run.save_figure("zones", fig, f"Zones of {run.model}, derived from the measurements by the stated rules "
                    f"(decodable: probe accuracy >= {cfg['probe_threshold']:.0%}; compute: Holm-corrected exact "
                    f"McNemar test of the mean-ablation drop; control: flip rate >= {cfg['flip_threshold']:.0%} and "
                    "above the same-class null, Holm-corrected Fisher test; broken: the loss on the request text "
                    f"rises by more than {cfg['broken_nll_increase']} nats per token).")
    plt.close(fig)
    run.result(metrics)
    print(f"[circuit_zones] {run.model}: request-embedding probe {request_emb['acc']['value']:.2f}, first layer >= "
          f"{cfg['probe_threshold']:.0%}: {first}, worst MLP L{metrics['worst_mlp_layer']} drop "
          f"{metrics['worst_mlp_drop']['value']:.2f}, compute {metrics['compute_layers']}, control "
          f"{metrics['control_layers']}, broken {metrics['broken_layers']}; agreement with generation "
          f"{metrics['agreement_decides_vs_generation']['value']:.2f}")


def _col(rows, key):
    return np.array([np.nan if r[key] is None or r[key] == "" else r[key] for r in rows], float)


def _errorbar(ax, x, rows, key, lo, hi, **kw):
    v = _col(rows, key)
    ok = ~np.isnan(v)
    if ok.any():
        yerr = np.clip([(v - _col(rows, lo))[ok], (_col(rows, hi) - v)[ok]], 0, None)
        ax.errorbar(x[ok], v[ok], yerr=yerr, marker="o", ms=3, capsize=2, **kw)


def layer_figure(rows, zones, model, cfg):
    x = np.arange(-1, len(rows) - 1)  # -1 = embeddings (the request's own tokens)
    fig, axes = plt.subplots(5, 1, figsize=(7.5, 10), sharex=True)
    ax = axes[0]
    ax.plot(x, _col(rows, "probe_acc"), marker="o", ms=3, label="probe, gold label (CV)")
    ax.fill_between(x, _col(rows, "probe_lo"), _col(rows, "probe_hi"), alpha=0.2)
    ax.plot(x, _col(rows, "probe_decision_acc"), marker=".", ms=3, label="probe, model's decision (CV)")
    ax.plot(x, _col(rows, "shuffled_acc"), ls="--", color="grey", label="shuffled labels")
    ax.axhline(cfg["probe_threshold"], color="k", lw=0.5, ls=":")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0.3, 1.03)
    ax.legend(fontsize=7, loc="lower right")
    ax = axes[1]
    for key, label in (("pc1_var", "total variance"), ("pc1_between", "between-class share of PC1"),
                       ("pc1_mean_diff", "class-mean difference along PC1")):
        ax.plot(x, _col(rows, key), marker="o", ms=3, label=label)
    ax.set_ylabel("PC1 share")
    ax.set_ylim(0, 1.03)
    ax.legend(fontsize=7)
    ax = axes[2]
    _errorbar(ax, x, rows, "mean_drop", "mean_lo", "mean_hi", label="mean ablation (primary)")
    _errorbar(ax, x, rows, "zero_drop", "zero_lo", "zero_hi", label="zero ablation")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylabel("accuracy drop")
    ax.legend(fontsize=7)
    ax = axes[3]
    ax.plot(x, _col(rows, "dnll_mean"), marker="o", ms=3, label="mean ablation")
    ax.axhline(cfg["broken_nll_increase"], color="k", lw=0.5, ls=":")
    ax.set_ylabel("Δ loss on request\n(nats / token)")
    ax.legend(fontsize=7)
    ax = axes[4]
    _errorbar(ax, x, rows, "flip_resid", "flip_resid_lo", "flip_resid_hi", label="decision position, other class")
    ax.plot(x, _col(rows, "null_flip"), marker="x", ms=4, color="grey", label="decision position, same class (null)")
    ax.plot(x, _col(rows, "flip_whole"), marker="s", ms=3, ls=":", label="whole request, other class")
    ax.plot(x, _col(rows, "flip_mlp"), marker=".", ms=3, lw=0.8, label="MLP output, other class")
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


def _shade(ax, zones):
    for i, z in enumerate(zones):
        ax.axvspan(i - 0.5, i + 0.5, facecolor=ZONE_COLORS[z], alpha=0.2, lw=0)


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
