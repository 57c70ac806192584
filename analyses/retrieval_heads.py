"""Retrieval heads (Phase 1): which attention heads look at the tool the model picks?

Method. The 10 core tools are declared in the model's own format, in one of ``n_orders`` seeded
random orders: requests are assigned to orders evenly within each gold tool, so a tool's list
position and its identity are no longer the same thing. Each tool request is read by forced choice
(the candidate tool name with the highest summed log-probability after the call prefix; the
model's chosen tool). In the same forward pass we capture, for every head, the post-softmax
attention of the decision position (the token whose output is the first token of the tool name)
over all keys. A head's absolute mass on tool X is the sum of its attention over X's tokens (name +
description; also name only and description only), a fraction of all its attention; its share
on X is that mass renormalised over the tools so the 10 shares sum to 1. Every per-tool quantity
is indexed by the core tool's identity (by name), and each request keeps the list position of
every tool.

The requests are split in two halves, stratified by gold tool (seeded). On the selection half:

* only heads whose mean tool-block share (attention on the whole tool listing) reaches the
  profile's ``min_tool_block_share`` are eligible: a head that barely looks at the tools cannot
  be a retrieval head, however well its renormalised shares correlate;
* each head's Pearson correlation between "share on tool X" and "X was chosen" over (request,
  tool) pairs, with a permutation p-value (chosen tools shuffled across requests) and
  Benjamini-Hochberg across the eligible heads, ranks the eligible heads.

The top heads are then measured on the confirmation half only: correlation (bootstrap CI over
requests), top-1 retrieval rate (how often the most-attended tool is the chosen one; Wilson),
permutation p with Holm across the reported heads, absolute mass on the chosen tool, and two
controls: the position-only correlation (each share replaced by the head's mean share at that
list position, so only a positional pattern remains) and lexical strata (requests that share a
content word with the gold tool's name or description, and requests that do not).

Heads are grouped by the KV head they read from (grouped-query attention).
"""

from __future__ import annotations

import base64
import math
import re
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
from toolattn.stats import accuracy, benjamini_hochberg, bootstrap_ci, empty, holm, proportion  # noqa: E402
from toolattn.tools import core_tools  # noqa: E402

ALPHA = 0.05  # BH q threshold (selection) and Holm threshold (confirmation)
TOP = 10  # heads carried from the selection half to the confirmation half
TOP_FRACTION = 0.05  # concentration: share of the positive correlation held by this fraction of heads
KINDS = ("span", "name", "desc")  # name + description, name only, description only
HALVES = ("selection", "confirmation")
STOP_WORDS = frozenset(
    "a an the and or but if of to for in on at by with from into about as is are was were be been it its "
    "this that these those i me my we our you your he she they them their what which who how when where why "
    "can could would should will do does did please just some any all so than then there here up out not no "
    "have has had also one".split())


def run(profile: str, model: str, prof: dict | None = None) -> None:
    """``prof``: the profile's settings (default: ``profiles.toml``), e.g. a tiny one in tests."""
    prof = prof or load_profile(profile)
    cfg = dict(prof["retrieval_heads"], batch_size=prof["batch_size"], seed=prof["seed"])
    split = None if cfg["split"] == "all" else cfg["split"]
    requests = select(load_prompts(), split=split, n_per_tool=cfg["n_per_tool"], n_no_tool=0, seed=cfg["seed"])
    core = core_tools()
    names = [t.name for t in core]
    gold = [r.tool for r in requests]
    orders = tool_orders(len(core), cfg["n_orders"], cfg["seed"])  # [orders, positions] -> core tool index
    order_of = stratified_groups(gold, cfg["n_orders"], cfg["seed"], salt=1)  # [requests]
    half_of = stratified_groups(gold, 2, cfg["seed"], salt=2)  # [requests]: 0 selection, 1 confirmation
    tool_words = {t.name: content_words(t.name.replace("_", " ") + " " + t.description) for t in core}
    lm = load_model(model, profile=profile)
    engine = ToolChoiceEngine(lm, batch_size=cfg["batch_size"])
    inputs = {"data/prompts.json": sha256_file(paths.PROMPTS_FILE), "data/tools.json": sha256_file(paths.TOOLS_FILE),
              **lm.files}
    with Run(profile, model, "retrieval_heads", cfg, inputs, seed=cfg["seed"]) as run:
        rows, parts, span_tokens, seconds, nbytes = [], [], [], 0.0, 0
        members = {o: [i for i in range(len(requests)) if order_of[i] == o] for o in range(len(orders))}

        def compute(name):
            o = int(name.split("-")[1])
            part, tools = members[o], [core[i] for i in orders[o]]
            sample = engine.formatter.format(requests[part[0]].text, tools)
            t0 = time.time()
            with capture_attention(lm.model) as cap:
                choices = engine.score([requests[i].text for i in part], tools, desc=f"{model} order {o}",
                                       forward_kwargs=cap.kwargs_for(decision_rows))
            masses = tool_masses(cap.weights, sample, names)
            return {"seconds": time.time() - t0, "capture_bytes": cap.nbytes,
                    "chosen": [c.choice for c in choices], "masses": {k: encode(v) for k, v in masses.items()}}

        # One chunk per order (split between the processes of `accelerate launch`, if any).
        chunk_names = [f"order-{o:02d}" for o in range(len(orders)) if members[o]]
        chunks = run.chunks(chunk_names, compute)
        if chunks is None:
            return  # a helper process: its chunks are written
        for name, done in zip(chunk_names, chunks):
            o = int(name.split("-")[1])
            part, tools = members[o], [core[i] for i in orders[o]]
            # The tool block is part of the shared prefix: one prefix and one set of spans per order.
            sample = engine.formatter.format(requests[part[0]].text, tools)
            span_tokens += [s.name_span[1] - s.name_span[0] + s.description_span[1] - s.description_span[0]
                            for s in sample.tools]
            rows += [{"id": requests[i].id, "gold": gold[i], "chosen": c, "order": o, "half": HALVES[half_of[i]],
                      "lexical_overlap": bool(content_words(requests[i].text) & tool_words[gold[i]])}
                     for i, c in zip(part, done["chosen"])]
            parts.append({k: decode(v) for k, v in done["masses"].items()})
            seconds += done["seconds"]
            nbytes += done["capture_bytes"]
        masses = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        positions = np.argsort(orders[[r["order"] for r in rows]], 1)  # [requests, tools]: list position
        run.timing("seconds_per_request", seconds / len(rows))
        run.timing("capture_bytes_per_request", nbytes / len(rows))
        summarise(run, rows, masses, positions, names, orders, model_dims(lm.model), float(np.mean(span_tokens)), cfg)


def encode(a: np.ndarray) -> dict:
    """An array as JSON: float32 bytes in base64 (a chunk stays small at thousands of heads)."""
    return {"shape": list(a.shape), "float32": base64.b64encode(np.ascontiguousarray(a, np.float32).tobytes()).decode()}


def decode(d: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(d["float32"]), np.float32).reshape(d["shape"]).astype(np.float64)


# --- design: tool orders, halves, lexical overlap -------------------------------------------------

def tool_orders(n_tools: int, n_orders: int, seed: int) -> np.ndarray:
    """``[orders, positions]``: seeded random orders of the tools; entry ``[o, k]`` is the core index of
    the tool at list position ``k`` in order ``o``."""
    rng = np.random.default_rng([seed, 0])
    return np.stack([rng.permutation(n_tools) for _ in range(n_orders)])


def stratified_groups(labels: list, n_groups: int, seed: int, salt: int) -> np.ndarray:
    """``[items]``: a group index per item, balanced within each label and overall.

    Items of each label are shuffled (seeded by ``seed`` and ``salt``) and dealt round-robin, the
    dealer continuing from label to label, so group sizes differ by at most one within a label.
    """
    rng = np.random.default_rng([seed, salt])
    groups = np.zeros(len(labels), dtype=int)
    dealt = 0
    for label in sorted(set(labels)):
        members = rng.permutation([i for i, x in enumerate(labels) if x == label])
        groups[members] = (dealt + np.arange(len(members))) % n_groups
        dealt += len(members)
    return groups


def content_words(text: str) -> set[str]:
    """Lower-cased words of ``text`` without stop words, a trailing plural "s" stripped."""
    words = re.findall(r"[a-z]+", text.lower())
    return {w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
            for w in words if w not in STOP_WORDS}


# --- attention on the tools ------------------------------------------------------------------------

def core_spans(f, names: list[str]) -> dict[str, list[tuple[int, int]]]:
    """Token spans ``span``/``name``/``desc`` of the tools of prompt ``f``, listed in the order of ``names``
    (the core order) whatever the order of the tools in the prompt."""
    by_name = {s.name: s for s in f.tools}
    return {"span": [by_name[n].span for n in names], "name": [by_name[n].name_span for n in names],
            "desc": [by_name[n].description_span for n in names]}


def tool_masses(weights, f, names: list[str]) -> dict[str, np.ndarray]:
    """Attention mass of the decision position on each tool, per request.

    ``weights``: per engine batch ``[layers, batch, heads, keys]``; ``f``: a prompt with this batch's
    tool order. Returns ``span``/``name``/``desc``: ``[requests, layers, heads, tools]`` with tools in
    the order of ``names``, and ``block``: ``[requests, layers, heads]`` (the whole tool listing,
    from the first tool name to the end of the tool block). Masses are fractions of all attention.
    """
    spans = core_spans(f, names)
    start = min(s.name_span[0] for s in f.tools)
    out = {k: [] for k in (*KINDS, "block")}
    for w in weights:
        w = w.permute(1, 0, 2, 3).numpy()  # [batch, layers, heads, keys]
        for k in KINDS:
            out[k].append(np.stack([w[..., a:b].sum(-1) for a, b in spans[k]], -1))
        out["block"].append(w[..., start : f.tool_block_end].sum(-1))
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
    return np.where(den > 1e-12, yc @ xc / np.where(den > 1e-12, den, 1), 0.0)


def permutation_null(x: np.ndarray, y: np.ndarray, n: int, seed: int, block: int = 1000) -> np.ndarray:
    """Correlations ``[n, heads]`` with the chosen tools ``y [requests, tools]`` shuffled across requests.

    The denominator of the correlation does not change under the shuffle, so all heads and
    permutations reduce to one matrix product per block of permutations.
    """
    rng = np.random.default_rng(seed)
    xc = (x - x.mean((0, 1))).reshape(-1, x.shape[-1])  # [requests * tools, heads]
    yc = y - y.mean()
    den = np.sqrt((xc ** 2).sum(0) * (yc ** 2).sum())
    den = np.where(den > 1e-12, den, np.inf)
    out = []
    for b0 in range(0, n, block):
        perms = np.stack([rng.permutation(len(y)) for _ in range(min(block, n - b0))])
        ys = yc[perms].reshape(len(perms), -1)  # [perms, requests * tools]
        out.append(ys @ xc / den)
    return np.concatenate(out)


def permutation_p(x: np.ndarray, y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Two-sided permutation p-values ``[heads]`` of ``pearson(x, y)``."""
    corr, null = pearson(x, y), permutation_null(x, y, n, seed)
    return (1 + (np.abs(null) >= np.abs(corr) - 1e-12).sum(0)) / (n + 1)


def head_stats(shares: dict, chosen: np.ndarray, n_perm: int, seed: int) -> dict:
    """Per-head statistics; ``shares[k]`` ``[requests, tools, heads]``, ``chosen [requests]`` (tool index)."""
    x = shares["span"]
    y = np.eye(x.shape[1])[chosen]  # [requests, tools]
    hits = x.argmax(1) == chosen[:, None]  # [requests, heads]
    entropy = -(x * np.log2(np.clip(x, 1e-12, None))).sum(1).mean(0)
    return {"corr": pearson(x, y), "p": permutation_p(x, y, n_perm, seed), "hits": hits, "top1_rate": hits.mean(0),
            "entropy": entropy, "name_corr": pearson(shares["name"], y), "desc_corr": pearson(shares["desc"], y)}


def rank_eligible(corr: np.ndarray, p: np.ndarray, block_share: np.ndarray, threshold: float):
    """Eligible heads (mean tool-block share ``>= threshold``), BH over them, and their ranking.

    Returns ``(eligible [heads] bool, p_bh [heads] (NaN where not eligible), ranked [eligible heads]
    (head indices by decreasing correlation))``.
    """
    eligible = block_share >= threshold
    p_bh = np.full(len(p), np.nan)
    p_bh[eligible] = benjamini_hochberg(p[eligible])
    idx = np.flatnonzero(eligible)
    return eligible, p_bh, idx[np.argsort(-corr[idx], kind="stable")]


def position_only(x: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The positional part of shares ``x [requests, tools, heads]``: each share replaced by the head's
    mean share at that list position over requests. ``positions [requests, tools]``."""
    by_position = np.take_along_axis(x, np.argsort(positions, 1)[..., None], 1)  # [requests, positions, heads]
    return by_position.mean(0)[positions]  # [requests, tools, heads]


def corr_ci(x: np.ndarray, y: np.ndarray, seed: int) -> dict:
    """Correlation of one head (``x [requests, tools]``) with a bootstrap CI over requests (empty below 2)."""
    if len(x) < 2:
        return empty()
    stat = lambda idx: float(pearson(x[idx.astype(int), :, None], y[idx.astype(int)])[0])  # noqa: E731
    return bootstrap_ci(np.arange(len(x)), statistic=stat, seed=seed)


def positive_share(corr: np.ndarray, frac: float = 0.05) -> float:
    """Share of the total positive correlation held by the top ``frac`` of heads."""
    pos = np.sort(np.clip(corr, 0, None))[::-1]
    return float(pos[: math.ceil(frac * len(pos))].sum() / pos.sum()) if pos.sum() > 0 else 0.0


def on_chosen(a: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """``a [requests, tools, heads]`` at each request's chosen tool -> ``[requests, heads]``."""
    return a[np.arange(len(chosen)), chosen]


# --- the summary ----------------------------------------------------------------------------------

def summarise(run: Run, rows: list[dict], masses: dict, positions: np.ndarray, names: list[str],
              orders: np.ndarray, dims: dict, span_tokens_mean: float, cfg: dict) -> None:
    """``rows``: id, gold and chosen tool, order, half and lexical overlap per request; ``masses``: as
    returned by ``tool_masses`` (core tool order); ``positions [requests, tools]``: list positions."""
    L, H, KV = dims["layers"], dims["heads"], dims["kv_heads"]
    n, T = len(rows), len(names)
    chosen = np.array([names.index(r["chosen"]) for r in rows])
    y = np.eye(T)[chosen]  # [requests, tools]
    # [requests, layers, heads, tools] -> [requests, tools, layers * heads]
    shares = {k: normalise(masses[k]).transpose(0, 3, 1, 2).reshape(n, T, -1) for k in KINDS}
    mass = masses["span"].transpose(0, 3, 1, 2).reshape(n, T, -1)  # absolute: fraction of all attention
    block = masses["block"].reshape(n, -1)  # [requests, layers * heads]
    sel = np.array([r["half"] == "selection" for r in rows])
    conf = ~sel
    layer, head = np.divmod(np.arange(L * H), H)
    kv = head // (H // KV)

    # Selection half: eligibility, correlation, permutation p, BH, ranking.
    s = head_stats({k: v[sel] for k, v in shares.items()}, chosen[sel], cfg["n_permutations"], cfg["seed"])
    block_sel = block[sel].mean(0)
    eligible, p_bh, ranked = rank_eligible(s["corr"], s["p"], block_sel, cfg["min_tool_block_share"])
    sig = eligible & (p_bh < ALPHA)
    pos_corr_sel = pearson(position_only(shares["span"][sel], positions[sel]), y[sel])
    rank = np.zeros(L * H, dtype=int)
    rank[ranked] = np.arange(1, len(ranked) + 1)
    by_head = np.lexsort((np.arange(L * H), -s["corr"], ~eligible))  # ranked heads first, then the others
    run.write_csv("heads", [{
        "rank": int(rank[j]) or "", "layer": int(layer[j]), "head": int(head[j]), "kv_head": int(kv[j]),
        "eligible": bool(eligible[j]), "corr": float(s["corr"][j]), "p": float(s["p"][j]),
        "p_bh": float(p_bh[j]) if eligible[j] else "", "top1_rate": float(s["top1_rate"][j]),
        "entropy": float(s["entropy"][j]), "tool_block_share": float(block_sel[j]),
        "mass_on_chosen": float(on_chosen(mass[sel], chosen[sel])[:, j].mean()),
        "share_on_chosen": float(on_chosen(shares["span"][sel], chosen[sel])[:, j].mean()),
        "position_only_corr": float(pos_corr_sel[j]), "name_corr": float(s["name_corr"][j]),
        "desc_corr": float(s["desc_corr"][j])} for j in by_head])

    groups = []
    for li in range(L):
        for g in range(KV):
            m = (layer == li) & (kv == g)
            groups.append({"layer": li, "kv_head": g, "mean_corr": float(s["corr"][m].mean()),
                           "max_corr": float(s["corr"][m].max()), "n_eligible": int(eligible[m].sum()),
                           "n_significant": int(sig[m].sum())})
    groups.sort(key=lambda r: -r["mean_corr"])
    run.write_csv("kv_groups", groups)

    # Confirmation half: the selected heads, measured afresh, with the positional and lexical controls.
    top_idx = ranked[:TOP]
    xc, yc, cc = shares["span"][conf], y[conf], chosen[conf]
    hits_c = xc.argmax(1) == cc[:, None]  # [confirmation requests, heads]
    p_c = permutation_p(xc[:, :, top_idx], yc, cfg["n_permutations"], cfg["seed"] + 1)
    p_holm = holm(p_c)
    pos_corr_c = pearson(position_only(xc, positions[conf]), yc)
    lex = np.array([r["lexical_overlap"] for r in rows])[conf]
    strata = {"overlap": lex, "no_overlap": ~lex}
    top = []
    for i, j in enumerate(top_idx):
        top.append({
            "layer": int(layer[j]), "head": int(head[j]), "kv_head": int(kv[j]), "selection_rank": i + 1,
            "selection": {"corr": float(s["corr"][j]), "p_bh": float(p_bh[j]), "top1_rate": float(s["top1_rate"][j]),
                          "tool_block_share": float(block_sel[j])},
            "corr": corr_ci(xc[:, :, j], yc, cfg["seed"]), "p": float(p_c[i]), "p_holm": float(p_holm[i]),
            "top1_rate": proportion(hits_c[:, j]),
            "position_only_corr": float(pos_corr_c[j]),
            "mass_on_chosen": float(on_chosen(mass[conf], cc)[:, j].mean()),
            "share_on_chosen": float(on_chosen(xc, cc)[:, j].mean()),
            "tool_block_share": float(block[conf][:, j].mean()),
            "lexical": {k: {"corr": corr_ci(xc[m][:, :, j], yc[m], cfg["seed"]), "top1_rate": proportion(hits_c[m, j])}
                        for k, m in strata.items()}})

    # Where the top head looks when the forced choice is wrong: at the tool chosen, or the correct one?
    looks = [names[int(i)] for i in shares["span"][:, :, ranked[0]].argmax(1)] if len(ranked) else [""] * n
    run.write_csv("requests", [{**r, "chosen_position": int(positions[i, chosen[i]]), "top_head_argmax": a}
                               for i, (r, a) in enumerate(zip(rows, looks))])
    wrong = [(r, a) for r, a in zip(rows, looks) if r["chosen"] != r["gold"] and r["half"] == "confirmation"]

    gold_idx = np.array([names.index(r["gold"]) for r in rows])
    chosen_pos = positions[np.arange(n), chosen]
    gold_pos = positions[np.arange(n), gold_idx]
    by_position = [{"position": k, "gold_rate": proportion(gold_pos == k), "choice_rate": proportion(chosen_pos == k),
                    "accuracy": accuracy((chosen == gold_idx)[gold_pos == k])} for k in range(T)]
    run.write_csv("positions", [{"position": b["position"] + 1, "n_gold": int((gold_pos == b["position"]).sum()),
                                 "n_chosen": int((chosen_pos == b["position"]).sum()),
                                 "choice_rate": b["choice_rate"]["value"], "choice_rate_lo": b["choice_rate"]["lo"],
                                 "choice_rate_hi": b["choice_rate"]["hi"], "gold_rate": b["gold_rate"]["value"],
                                 "accuracy": b["accuracy"]["value"]} for b in by_position])

    correct = chosen == gold_idx
    excluded = np.flatnonzero(~eligible)
    best_excluded = None
    if len(excluded):
        j = excluded[np.argmax(s["corr"][excluded])]
        best_excluded = {"layer": int(layer[j]), "head": int(head[j]), "corr": float(s["corr"][j]),
                         "tool_block_share": float(block_sel[j]),
                         "mass_on_chosen": float(on_chosen(mass[sel], chosen[sel])[:, j].mean())}
    thresholds = (0.005, 0.01, 0.02, 0.05, 0.1)
    metrics = {
        "n_requests": n, "n_selection": int(sel.sum()), "n_confirmation": int(conf.sum()), "n_tools": T,
        "n_layers": L, "n_heads_per_layer": H, "n_kv_heads": KV, "n_heads": L * H,
        "n_orders": len(orders), "tool_orders": [[names[i] for i in o] for o in orders],
        "accuracy": accuracy(correct),
        "accuracy_by_half": {h: accuracy(correct[m]) for h, m in zip(HALVES, (sel, conf))},
        "min_tool_block_share": cfg["min_tool_block_share"],
        "n_eligible": int(eligible.sum()), "n_excluded": int((~eligible).sum()),
        "tool_block_share_quantiles": {f"q{int(q * 100)}": float(np.quantile(block_sel, q))
                                       for q in (0.1, 0.25, 0.5, 0.75, 0.9)},
        "frac_heads_below": [{"threshold": t, "frac": float((block_sel < t).mean())} for t in thresholds],
        "best_excluded_head": best_excluded,  # selection half: what the threshold keeps out of the ranking
        "top_heads_min_tool_block_share": float(block_sel[top_idx].min()) if len(top_idx) else None,
        "top_heads": top,
        "n_confirmed": int((np.asarray(p_holm) < ALPHA).sum()),
        "confirmed_alpha": ALPHA,
        "top_head_on_errors": {"n": len(wrong), "looks_at_chosen": sum(a == r["chosen"] for r, a in wrong),
                               "looks_at_gold": sum(a == r["gold"] for r, a in wrong)},
        "n_significant": int(sig.sum()),
        "n_significant_positive": int((sig & (s["corr"] > 0)).sum()),
        "frac_significant": float(sig.sum() / max(eligible.sum(), 1)),
        "top_heads_fraction": TOP_FRACTION,
        "top_heads_positive_corr_share": positive_share(s["corr"][eligible], TOP_FRACTION),
        "max_corr": float(s["corr"][eligible].max()) if eligible.any() else None,
        "max_corr_all_heads": float(s["corr"].max()),
        "best_top1_rate": float(s["top1_rate"][eligible].max()) if eligible.any() else None,
        "chance_top1_rate": 1 / T,
        "mean_entropy_bits": float(s["entropy"].mean()),
        "max_entropy_bits": math.log2(T),
        "mean_tool_block_share": float(block.mean()),
        "choice_rate_by_position": [b["choice_rate"] for b in by_position],
        # the position-only correlation of a head on the chosen tool only, at this sample's positions:
        # what identity alone leaks into the positional means
        "position_only_identity_reference": float(pearson(position_only(yc[..., None], positions[conf]), yc)[0]),
        "gold_rate_by_position": [b["gold_rate"] for b in by_position],
        "lexical_strata": {k: {"n": int(m.sum()), "accuracy": accuracy(correct[conf][m])} for k, m in strata.items()},
        "top_kv_groups": groups[:5],
        "tool_span_tokens_mean": span_tokens_mean,
        "n_permutations": cfg["n_permutations"],
        "bh_alpha": ALPHA,
    }
    figures(run, s, shares["span"][conf], chosen[conf], names, top_idx, eligible, block_sel, cfg, by_position, top,
            L, H, KV, sig)
    run.result(metrics)
    if top:
        best = top[0]
        print(f"[retrieval_heads] {run.model}: top head L{best['layer']}H{best['head']} confirmation corr "
              f"{best['corr']['value']:.3f} top-1 {best['top1_rate']['value']:.2f} (position-only "
              f"{best['position_only_corr']:.3f}); {int(sig.sum())}/{int(eligible.sum())} eligible heads significant "
              f"on the selection half (BH q<{ALPHA}); {int((~eligible).sum())} heads below the tool-block threshold")


# --- figures ----------------------------------------------------------------------------------------

def figures(run: Run, s: dict, x: np.ndarray, chosen, names, top_idx, eligible, block_sel, cfg, by_position, top,
            L, H, KV, sig) -> None:
    """``s``: selection-half statistics; ``x [confirmation requests, tools, heads]`` and ``chosen``: the
    confirmation half."""
    model = run.model
    corr = np.where(eligible, s["corr"], np.nan).reshape(L, H)
    lim = max(float(np.nanmax(np.abs(corr))) if eligible.any() else 0.0, 1e-6)
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="lightgrey")
    fig, ax = plt.subplots(figsize=(max(4.5, 0.28 * H + 2), max(4, 0.2 * L + 1.5)))
    im = ax.imshow(corr, cmap=cmap, vmin=-lim, vmax=lim, aspect="auto")
    yy, xx = np.nonzero(sig.reshape(L, H))
    ax.scatter(xx, yy, s=6, c="black", marker="o", label=f"BH q < {ALPHA}")
    for g in range(1, KV):
        ax.axvline(g * H // KV - 0.5, color="grey", lw=0.6)
    ax.set_xlabel("head (vertical lines separate KV groups)")
    ax.set_ylabel("layer")
    ax.set_title(f"{model}: corr(share on tool X, X chosen), selection half", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.legend(fontsize=7, loc="upper right", bbox_to_anchor=(1, -0.08))
    fig.tight_layout()
    run.save_figure("corr_heatmap", fig, f"Selection half: correlation between a head's share of tool attention on a "
                    f"tool (name + description, at the decision position) and that tool being chosen, per layer and "
                    f"head ({model}). Grey: heads whose mean tool-block share is below "
                    f"{cfg['min_tool_block_share']:g} (not ranked). Dots: significant after Benjamini-Hochberg over "
                    f"the eligible heads (q < {ALPHA}).")
    plt.close(fig)

    if len(top_idx):
        rows = np.lexsort((np.arange(len(chosen)), chosen))  # requests grouped by the chosen tool
        fig, axes = plt.subplots(1, 3, figsize=(13, max(3.5, 0.06 * len(chosen) + 2)), sharey=True)
        for ax, j, h in zip(axes, top_idx[:3], top[:3]):
            im = ax.imshow(x[rows, :, j], vmin=0, vmax=1, cmap="viridis", aspect="auto", interpolation="nearest")
            ax.scatter(chosen[rows], np.arange(len(rows)), s=4, c="red", marker="o")
            ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
            ax.set_title(f"L{j // H} H{j % H}: corr {h['corr']['value']:.2f}, top-1 {h['top1_rate']['value']:.0%}",
                         fontsize=9)
        axes[0].set_ylabel("confirmation request (grouped by chosen tool)")
        axes[0].yaxis.set_major_locator(MaxNLocator(integer=True))
        fig.colorbar(im, ax=axes, shrink=0.8, label="share of tool attention")
        run.save_figure("top_heads_attention", fig, f"Confirmation half: attention of the three heads ranked first on "
                        f"the selection half over the tools (columns, by identity whatever their list position) for "
                        f"each request (rows), normalised over the tools; red dots mark the chosen tool ({model}).")
        plt.close(fig)

    fig, axes = plt.subplots(2, 1, figsize=(max(6, 0.25 * L + 2), 5.5), sharex=True)
    layer = np.repeat(np.arange(L), H)
    jitter = np.random.default_rng(0).uniform(-0.25, 0.25, L * H)
    for ax, key, label, ref in ((axes[0], "corr", "correlation", 0.0),
                                (axes[1], "top1_rate", "top-1 retrieval rate", 1 / len(names))):
        v = s[key]
        for m, c, lab in ((~eligible, "lightgrey", "below tool-block threshold"),
                          (eligible & ~sig, "grey", "eligible, not significant"), (sig, "tab:red", f"BH q < {ALPHA}")):
            ax.scatter(layer[m] + jitter[m], v[m], s=6, c=c, label=lab)
        ax.axhline(ref, c="grey", ls="--", lw=0.6)
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7)
    axes[1].set_xlabel("layer")
    axes[0].set_title(f"{model}: head scores by layer, selection half (dashed: zero / chance)", fontsize=9)
    fig.tight_layout()
    run.save_figure("layer_distribution", fig, f"Selection half: correlation and top-1 retrieval rate of every head "
                    f"by layer ({model}); dashed lines mark zero correlation and the chance rate 1/{len(names)}.")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(np.log10(np.clip(block_sel, 1e-6, None)), bins=40, color="tab:blue")
    ax.axvline(np.log10(cfg["min_tool_block_share"]), c="black", ls="--", lw=0.8, label="eligibility threshold")
    ax.set_xlabel("log10 mean tool-block share (selection half)")
    ax.set_ylabel("heads")
    ax.legend(fontsize=7)
    fig.tight_layout()
    run.save_figure("tool_block_share", fig, f"Selection half: distribution over heads of the mean share of all "
                    f"attention at the decision position that lands on the tool listing ({model}); heads left of the "
                    f"dashed line ({cfg['min_tool_block_share']:g}) are listed but not ranked.")
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    k = np.arange(1, len(by_position) + 1)
    rates = [b["choice_rate"] for b in by_position]
    rate = np.array([r["value"] for r in rates])
    err = np.array([[r["value"] - r["lo"], r["hi"] - r["value"]] for r in rates]).T
    axes[0].errorbar(k, rate, yerr=err, fmt="o", c="tab:blue", label="chosen tool at this position (Wilson 95%)")
    axes[0].plot(k, [b["gold_rate"]["value"] for b in by_position], "x", c="black", label="gold tool at this position")
    axes[0].set_xlabel("list position (1 = first)")
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("share of requests")
    axes[0].legend(fontsize=7)
    if top:
        labels = [f"L{h['layer']}H{h['head']}" for h in top]
        axes[1].bar(np.arange(len(top)) - 0.2, [h["corr"]["value"] for h in top], 0.4, label="correlation")
        axes[1].bar(np.arange(len(top)) + 0.2, [h["position_only_corr"] for h in top], 0.4, label="position-only")
        axes[1].set_xticks(range(len(top)), labels, rotation=60, fontsize=7)
        axes[1].legend(fontsize=7)
        axes[1].set_ylabel("correlation (confirmation half)")
    fig.tight_layout()
    run.save_figure("position_control", fig, f"Left: how often the chosen tool (dots, Wilson 95% intervals) and the "
                    f"gold tool (crosses) sit at each list position, over {cfg['n_orders']} seeded tool orders. Right: "
                    f"confirmation-half correlation of the top heads beside the correlation of their purely positional "
                    f"pattern (each share replaced by the head's mean share at that list position) ({model}).")
    plt.close(fig)


if __name__ == "__main__":
    from toolattn.errors import analysis_main

    analysis_main(run, __doc__, "qwen2.5-coder-1.5b")
