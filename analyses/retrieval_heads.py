"""Retrieval heads (Phase 1): which attention heads look at the tool the model picks?

Method. The 10 core tools are declared in the model's own format and each tool request is read
by forced choice (the candidate tool name with the highest summed log-probability after the call
prefix; the model's chosen tool). In the same forward pass we capture, for every head, the
post-softmax attention of the decision position (the token whose output is the first token of
the tool name) over all keys. A head's mass on tool X is the sum of its attention over X's
tokens (name + description; also name only and description only), normalised over the tool
block so the 10 tool masses sum to 1. Per head:

* the Pearson correlation between "mass on tool X" and "X was chosen" over all (request, tool)
  pairs, with a permutation p-value (the chosen tools are shuffled across requests, which keeps
  both the attention of each request and how often each tool is chosen; requests are the
  exchangeable units) and Benjamini-Hochberg across heads;
* the top-1 retrieval rate: how often the most-attended tool is the chosen one (chance 1/N);
* the entropy (bits) of the attention over tools, and the share of all attention on the tool block.

Heads are grouped by the KV head they read from (grouped-query attention).
"""

from __future__ import annotations

import base64
import math
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from toolattn import paths  # noqa: E402
from toolattn.artifacts import Run, load_profile, sha256_file  # noqa: E402
from toolattn.attention import capture_attention, decision_rows  # noqa: E402
from toolattn.datasets import load_prompts, select  # noqa: E402
from toolattn.models import load_model, model_dims  # noqa: E402
from toolattn.scoring import ToolChoiceEngine  # noqa: E402
from toolattn.stats import accuracy, benjamini_hochberg, bootstrap_ci  # noqa: E402
from toolattn.tools import core_tools  # noqa: E402

CHUNK = 32  # requests per resumable chunk
ALPHA = 0.05  # BH q threshold
TOP = 10  # heads reported in result.json
TOP_FRACTION = 0.05  # concentration: share of the positive correlation held by this fraction of heads
KINDS = ("span", "name", "desc")  # name + description, name only, description only


def run(profile: str, model: str, prof: dict | None = None) -> None:
    """``prof``: the profile's settings (default: ``profiles.toml``), e.g. a tiny one in tests."""
    prof = prof or load_profile(profile)
    cfg = dict(prof["retrieval_heads"], batch_size=prof["batch_size"], seed=prof["seed"])
    split = None if cfg["split"] == "all" else cfg["split"]
    requests = select(load_prompts(), split=split, n_per_tool=cfg["n_per_tool"], n_no_tool=0, seed=cfg["seed"])
    tools = core_tools()
    lm = load_model(model)
    engine = ToolChoiceEngine(lm, batch_size=cfg["batch_size"])
    # The tool block is part of the shared prefix, so its token spans are the same for every request.
    sample = engine.formatter.format(requests[0].text, tools)
    inputs = {"data/prompts.json": sha256_file(paths.PROMPTS_FILE), "data/tools.json": sha256_file(paths.TOOLS_FILE),
              **lm.files}
    with Run(profile, model, "retrieval_heads", cfg, inputs, seed=cfg["seed"]) as run:
        rows, parts, seconds, nbytes = [], [], 0.0, 0
        for c0 in range(0, len(requests), CHUNK):
            part = requests[c0 : c0 + CHUNK]

            def compute(part=part):
                t0 = time.time()
                with capture_attention(lm.model) as cap:
                    choices = engine.score([r.text for r in part], tools, desc=f"{model} capture {c0}+",
                                           forward_kwargs=cap.kwargs_for(decision_rows))
                masses = tool_masses(cap.weights, sample)
                return {"seconds": time.time() - t0, "capture_bytes": cap.nbytes,
                        "rows": [{"id": r.id, "gold": r.tool, "chosen": c.choice} for r, c in zip(part, choices)],
                        "masses": {k: encode(v) for k, v in masses.items()}}

            done = run.chunk(f"chunk-{c0:04d}", compute)
            rows += done["rows"]
            parts.append({k: decode(v) for k, v in done["masses"].items()})
            seconds += done["seconds"]
            nbytes += done["capture_bytes"]
        masses = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        summarise(run, rows, masses, [t.name for t in tools], model_dims(lm.model), sample, cfg,
                  seconds / len(rows), nbytes / len(rows))


def encode(a: np.ndarray) -> dict:
    """An array as JSON: float32 bytes in base64 (a chunk stays small at thousands of heads)."""
    return {"shape": list(a.shape), "float32": base64.b64encode(np.ascontiguousarray(a, np.float32).tobytes()).decode()}


def decode(d: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(d["float32"]), np.float32).reshape(d["shape"]).astype(np.float64)


def tool_masses(weights, f) -> dict[str, np.ndarray]:
    """Attention mass of the decision position on each tool, per request.

    ``weights``: per engine batch ``[layers, batch, heads, keys]``. Returns ``span``/``name``/``desc``:
    ``[requests, layers, heads, tools]`` and ``block``: ``[requests, layers, heads]`` (the whole tool
    listing, from the first tool name to the end of the tool block).
    """
    spans = {"span": [t.span for t in f.tools], "name": [t.name_span for t in f.tools],
             "desc": [t.description_span for t in f.tools]}
    out = {k: [] for k in (*KINDS, "block")}
    for w in weights:
        w = w.permute(1, 0, 2, 3).numpy()  # [batch, layers, heads, keys]
        for k in KINDS:
            out[k].append(np.stack([w[..., a:b].sum(-1) for a, b in spans[k]], -1))
        out["block"].append(w[..., f.tools[0].name_span[0] : f.tool_block_end].sum(-1))
    return {k: np.concatenate(v) for k, v in out.items()}


# --- statistics -------------------------------------------------------------------------------

def normalise(mass: np.ndarray) -> np.ndarray:
    """Masses ``[..., tools]`` -> shares summing to 1 over the tools (uniform where a head sees none)."""
    total = mass.sum(-1, keepdims=True)
    return np.where(total > 0, mass / np.where(total > 0, total, 1), 1.0 / mass.shape[-1])


def pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Correlation over (request, tool) pairs: ``x [requests, tools, heads]``, ``y [requests, tools]``
    -> ``[heads]`` (0 where a head's shares do not vary)."""
    xc = (x - x.mean((0, 1))).reshape(-1, x.shape[-1])
    yc = (y - y.mean()).reshape(-1)
    den = np.sqrt((xc ** 2).sum(0) * (yc ** 2).sum())
    return np.where(den > 0, yc @ xc / np.where(den > 0, den, 1), 0.0)


def permutation_null(x: np.ndarray, y: np.ndarray, n: int, seed: int, block: int = 1000) -> np.ndarray:
    """Correlations ``[n, heads]`` with the chosen tools ``y [requests, tools]`` shuffled across requests.

    The denominator of the correlation does not change under the shuffle, so all heads and
    permutations reduce to one matrix product per block of permutations.
    """
    rng = np.random.default_rng(seed)
    xc = (x - x.mean((0, 1))).reshape(-1, x.shape[-1])  # [requests * tools, heads]
    yc = y - y.mean()
    den = np.sqrt((xc ** 2).sum(0) * (yc ** 2).sum())
    den = np.where(den > 0, den, np.inf)
    out = []
    for b0 in range(0, n, block):
        perms = np.stack([rng.permutation(len(y)) for _ in range(min(block, n - b0))])
        ys = yc[perms].reshape(len(perms), -1)  # [perms, requests * tools]
        out.append(ys @ xc / den)
    return np.concatenate(out)


def head_stats(shares: dict, chosen: np.ndarray, n_perm: int, seed: int) -> dict:
    """Per-head statistics; ``shares[k]`` ``[requests, tools, heads]``, ``chosen [requests]`` (tool index)."""
    n_req, n_tools, _ = shares["span"].shape
    y = np.eye(n_tools)[chosen]  # [requests, tools]
    x = shares["span"]
    corr = pearson(x, y)
    null = permutation_null(x, y, n_perm, seed)
    p = (1 + (np.abs(null) >= np.abs(corr) - 1e-12).sum(0)) / (n_perm + 1)
    hits = x.argmax(1) == chosen[:, None]  # [requests, heads]
    entropy = -(x * np.log2(np.clip(x, 1e-12, None))).sum(1).mean(0)
    return {"corr": corr, "p": p, "p_bh": benjamini_hochberg(p), "hits": hits, "top1_rate": hits.mean(0),
            "entropy": entropy, "name_corr": pearson(shares["name"], y), "desc_corr": pearson(shares["desc"], y)}


def corr_ci(x: np.ndarray, y: np.ndarray, seed: int) -> dict:
    """Correlation of one head (``x [requests, tools]``) with a bootstrap CI over requests."""
    stat = lambda idx: float(pearson(x[idx.astype(int), :, None], y[idx.astype(int)])[0])  # noqa: E731
    return bootstrap_ci(np.arange(len(x)), statistic=stat, seed=seed)


def positive_share(corr: np.ndarray, frac: float = 0.05) -> float:
    """Share of the total positive correlation held by the top ``frac`` of heads."""
    pos = np.sort(np.clip(corr, 0, None))[::-1]
    return float(pos[: math.ceil(frac * len(pos))].sum() / pos.sum()) if pos.sum() > 0 else 0.0


# --- the summary ----------------------------------------------------------------------------------

def summarise(run: Run, rows: list[dict], masses: dict, names: list[str], dims: dict, f, cfg: dict,
              sec_per_req: float, bytes_per_req: float) -> None:
    """``rows``: id, gold and chosen tool per request; ``masses``: as returned by ``tool_masses``."""
    L, H, KV = dims["layers"], dims["heads"], dims["kv_heads"]
    chosen = np.array([names.index(r["chosen"]) for r in rows])
    # [requests, layers, heads, tools] -> [requests, tools, layers * heads]
    shares = {k: normalise(masses[k]).transpose(0, 3, 1, 2).reshape(len(rows), len(names), -1) for k in KINDS}
    block = masses["block"].reshape(len(rows), -1)  # [requests, layers * heads]
    s = head_stats(shares, chosen, cfg["n_permutations"], cfg["seed"])
    layer, head = np.divmod(np.arange(L * H), H)
    kv = head // (H // KV)
    order = np.argsort(-s["corr"], kind="stable")

    heads_rows = [{"rank": i + 1, "layer": int(layer[j]), "head": int(head[j]), "kv_head": int(kv[j]),
                   "corr": float(s["corr"][j]), "p": float(s["p"][j]), "p_bh": float(s["p_bh"][j]),
                   "top1_rate": float(s["top1_rate"][j]), "entropy": float(s["entropy"][j]),
                   "tool_block_share": float(block[:, j].mean()), "name_corr": float(s["name_corr"][j]),
                   "desc_corr": float(s["desc_corr"][j])} for i, j in enumerate(order)]
    run.write_csv("heads", heads_rows)

    sig = s["p_bh"] < ALPHA
    groups = []
    for li in range(L):
        for g in range(KV):
            m = (layer == li) & (kv == g)
            groups.append({"layer": li, "kv_head": g, "mean_corr": float(s["corr"][m].mean()),
                           "max_corr": float(s["corr"][m].max()), "n_significant": int(sig[m].sum())})
    groups.sort(key=lambda r: -r["mean_corr"])
    run.write_csv("kv_groups", groups)

    y = np.eye(len(names))[chosen]
    top = [{"layer": int(layer[j]), "head": int(head[j]), "kv_head": int(kv[j]),
            "corr": corr_ci(shares["span"][:, :, j], y, cfg["seed"]), "p": float(s["p"][j]),
            "p_bh": float(s["p_bh"][j]), "top1_rate": accuracy(s["hits"][:, j])} for j in order[:TOP]]
    # Where the top head looks when the forced choice is wrong: at the tool chosen, or the correct one?
    looks = [names[int(i)] for i in shares["span"][:, :, order[0]].argmax(1)]
    run.write_csv("requests", [{"id": r["id"], "gold": r["gold"], "chosen": r["chosen"], "top_head_argmax": a}
                               for r, a in zip(rows, looks)])
    wrong = [(r, a) for r, a in zip(rows, looks) if r["chosen"] != r["gold"]]

    span_tokens = [t.name_span[1] - t.name_span[0] + t.description_span[1] - t.description_span[0] for t in f.tools]
    metrics = {
        "n_requests": len(rows), "n_tools": len(names), "n_layers": L, "n_heads_per_layer": H, "n_kv_heads": KV,
        "n_heads": L * H,
        "accuracy": accuracy(np.array([r["chosen"] == r["gold"] for r in rows])),
        "top_heads": top,
        "top_head_on_errors": {"n": len(wrong), "looks_at_chosen": sum(a == r["chosen"] for r, a in wrong),
                               "looks_at_gold": sum(a == r["gold"] for r, a in wrong)},
        "n_significant": int(sig.sum()),
        "n_significant_positive": int((sig & (s["corr"] > 0)).sum()),
        "frac_significant": float(sig.mean()),
        "top_heads_fraction": TOP_FRACTION,
        "top_heads_positive_corr_share": positive_share(s["corr"], TOP_FRACTION),
        "max_corr": float(s["corr"].max()),
        "best_top1_rate": float(s["top1_rate"].max()),
        "chance_top1_rate": 1 / len(names),
        "mean_entropy_bits": float(s["entropy"].mean()),
        "max_entropy_bits": math.log2(len(names)),
        "mean_tool_block_share": float(block.mean()),
        "top_kv_groups": groups[:5],
        "tool_span_tokens_mean": float(np.mean(span_tokens)),
        "tool_span_with_markup_tokens_mean": float(np.mean([t.span[1] - t.span[0] for t in f.tools])),
        "n_permutations": cfg["n_permutations"],
        "bh_alpha": ALPHA,
        "capture_bytes_per_request": float(bytes_per_req),
        "seconds_per_request": float(sec_per_req),
    }
    figures(run, s, shares["span"], chosen, names, order, L, H, KV, sig)
    run.result(metrics)
    best = top[0]
    print(f"[retrieval_heads] {run.model}: top head L{best['layer']}H{best['head']} corr {best['corr']['value']:.3f} "
          f"top-1 {best['top1_rate']['value']:.2f}; {int(sig.sum())}/{L * H} heads significant (BH q<{ALPHA}); "
          f"{sec_per_req:.2f} s and {bytes_per_req / 1e6:.2f} MB captured per request")


# --- figures ----------------------------------------------------------------------------------------

def figures(run: Run, s: dict, x: np.ndarray, chosen, names, order, L, H, KV, sig) -> None:
    model = run.model
    corr = s["corr"].reshape(L, H)
    lim = max(float(np.abs(corr).max()), 1e-6)
    fig, ax = plt.subplots(figsize=(max(4.5, 0.28 * H + 2), max(4, 0.2 * L + 1.5)))
    im = ax.imshow(corr, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    yy, xx = np.nonzero(sig.reshape(L, H))
    ax.scatter(xx, yy, s=6, c="black", marker="o", label=f"BH q < {ALPHA}")
    for g in range(1, KV):
        ax.axvline(g * H // KV - 0.5, color="grey", lw=0.6)
    ax.set_xlabel("head (vertical lines separate KV groups)")
    ax.set_ylabel("layer")
    ax.set_title(f"{model}: corr(attention to tool X, X chosen)", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.legend(fontsize=7, loc="upper right", bbox_to_anchor=(1, -0.08))
    fig.tight_layout()
    run.save_figure("corr_heatmap", fig, f"Correlation between a head's attention to a tool (name + description, "
                    f"at the decision position) and that tool being chosen, per layer and head ({model}). "
                    f"Dots: significant after Benjamini-Hochberg (q < {ALPHA}).")
    plt.close(fig)

    rows = np.lexsort((np.arange(len(chosen)), chosen))  # requests grouped by the chosen tool
    fig, axes = plt.subplots(1, 3, figsize=(13, max(3.5, 0.06 * len(chosen) + 2)), sharey=True)
    for ax, j in zip(axes, order[:3]):
        im = ax.imshow(x[rows, :, j], vmin=0, vmax=1, cmap="viridis", aspect="auto", interpolation="nearest")
        ax.scatter(chosen[rows], np.arange(len(rows)), s=4, c="red", marker="o")
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"L{j // H} H{j % H}: corr {s['corr'][j]:.2f}, top-1 {s['top1_rate'][j]:.0%}", fontsize=9)
    axes[0].set_ylabel("request (grouped by chosen tool)")
    axes[0].yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(im, ax=axes, shrink=0.8, label="share of tool-block attention")
    run.save_figure("top_heads_attention", fig, f"Attention of the three most correlated heads over the tools "
                    f"(columns) for each request (rows), normalised over the tool block; red dots mark the "
                    f"chosen tool ({model}).")
    plt.close(fig)

    fig, axes = plt.subplots(2, 1, figsize=(max(6, 0.25 * L + 2), 5.5), sharex=True)
    layer = np.repeat(np.arange(L), H)
    jitter = np.random.default_rng(0).uniform(-0.25, 0.25, L * H)
    for ax, key, label, ref in ((axes[0], "corr", "correlation", 0.0),
                                (axes[1], "top1_rate", "top-1 retrieval rate", 1 / len(names))):
        v = s[key]
        ax.scatter(layer[~sig] + jitter[~sig], v[~sig], s=6, c="grey", alpha=0.6, label="not significant")
        ax.scatter(layer[sig] + jitter[sig], v[sig], s=10, c="tab:red", label=f"BH q < {ALPHA}")
        ax.plot(range(L), v.reshape(L, H).max(1), c="black", lw=0.8, label="layer maximum")
        ax.axhline(ref, c="grey", ls="--", lw=0.6)
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7)
    axes[1].set_xlabel("layer")
    axes[0].set_title(f"{model}: head scores by layer (dashed: zero / chance)", fontsize=9)
    fig.tight_layout()
    run.save_figure("layer_distribution", fig, f"Correlation and top-1 retrieval rate of every head by layer "
                    f"({model}); dashed lines mark zero correlation and the chance rate 1/{len(names)}.")
    plt.close(fig)


if __name__ == "__main__":
    from toolattn.errors import analysis_main

    analysis_main(run, __doc__, "qwen2.5-coder-1.5b")
