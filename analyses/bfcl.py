"""BFCL: do the retrieval heads retrieve on real function documentation, and can they pick the tool?

Data. The Berkeley Function Calling Leaderboard v4 (``toolattn.bfcl``): ``multiple`` (2-4 real
functions per request, one gold call), ``live_multiple`` (user-contributed, 2-37 functions) and
``live_irrelevance`` (no declared function applies). A request that cannot be read as the synthetic
requests are (a system turn, several messages, no single gold call) is excluded and counted under its
reason. The profile draws a sample of each subset stratified by the number of declared functions.
Functions keep their real names, descriptions and parameters; prompt format, token spans and engine are
the synthetic set's. Requests with the same function list share one cached prefix.

Every request is read once with attention capture at the decision position (forced choice over the
declared functions, P(tool), the share of every head's attention on each function's name and
description), once more as a content-free request (``selector.NEUTRAL_REQUEST``) per function list,
and by free generation.

1. Baseline: forced-choice and generation accuracy against the gold function, per subset (Wilson), and
   tool / no-tool on ``live_irrelevance`` against the tool requests (call rates, accuracy, AUC of P(tool)).
2. Heads on real functions (tool-selection model only). The top heads of Phase 1 (ranked on the synthetic
   selection half, so BFCL is held out for them): correlation over (request, function) pairs between a
   head's share and "the function was chosen" (permutation p: the chosen function redrawn uniformly within
   each request's own list; Holm across the heads), and top-1 retrieval of the gold function (Wilson)
   against chance (the mean of 1 / list size). The ranking recomputed on BFCL (selection half, same
   tool-block eligibility rule) is compared with the synthetic one: Spearman rho over heads eligible in
   both, top-10 overlap against its chance expectation.
3. Knockout of the top heads at the description keys (every query after the tool block) on a seeded
   subset of tool requests, against random sets of as many heads from the same layers: accuracy drop
   (paired, exact McNemar) and mean change of the gold margin beyond the random sets.
4. Looking vs picking: on forced-choice failures, how often the top heads (mean share) look most at the
   gold function, and how often at the chosen one.
5. Attention selector: functions ranked by the top heads' mean share minus the content-free share
   (``toolattn.selector``). The tool requests are split in two halves stratified by subset and list size;
   the combination rule (the model's choice unless the selector's best beats it by more than a margin)
   takes its margin from the selection half; the selector, the uncalibrated selector and the combination
   are compared with the model's own forced choice on the held-out half only (paired, exact McNemar).
"""

from __future__ import annotations

import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import scipy.stats as sps  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from analyses.head_knockout import make_conditions  # noqa: E402
from analyses.retrieval_heads import decode, encode, stratified_groups  # noqa: E402
from toolattn import bfcl, paths  # noqa: E402
from toolattn.artifacts import Run, load_profile, load_result, sha256_file  # noqa: E402
from toolattn.knockout import HeadKnockout, margin  # noqa: E402
from toolattn.models import load_model, model_dims  # noqa: E402
from toolattn.parsing import parse_call  # noqa: E402
from toolattn.scoring import ToolChoiceEngine  # noqa: E402
from toolattn.selector import NEUTRAL_REQUEST, combined_choice, read_shares, selector_scores  # noqa: E402
from toolattn.stats import accuracy, bootstrap_ci, holm, paired_difference, proportion, roc_auc  # noqa: E402

UPSTREAM = "retrieval_heads"
TOOL_SUBSETS = ("multiple", "live_multiple")
TOP_OVERLAP = 10  # heads compared between the synthetic and the BFCL rankings


def settings(profile: str, model: str) -> dict:
    prof = load_profile(profile)
    base = dict(prof["bfcl"])
    override = base.pop("per_model", {}).get(model, {})
    return dict(base, **override, batch_size=prof["batch_size"], seed=prof["seed"])


def sample(cfg: dict) -> tuple[list, dict]:
    """The sampled requests of every subset (tool subsets first) and the exclusion counts of each subset."""
    requests, data = [], {}
    for subset, n in (("multiple", cfg["n_multiple"]), ("live_multiple", cfg["n_live_multiple"]),
                      ("live_irrelevance", cfg["n_irrelevance"])):
        s = bfcl.load(subset)
        sizes = [len(r.tools) for r in s.requests]
        data[subset] = {"n_raw": s.n_raw, "n_readable": len(s.requests), "excluded": s.counts(),
                        "min_functions": min(sizes, default=None), "max_functions": max(sizes, default=None)}
        requests += bfcl.stratified_sample(s.requests, n, cfg["seed"]) if n else []
    return requests, data


def run(profile: str, model: str, cfg: dict | None = None) -> None:
    """``cfg``: the analysis settings (default: the profile's, ``settings``), e.g. a tiny one in tests."""
    cfg = cfg or settings(profile, model)
    requests, data = sample(cfg)
    heads_part = cfg["heads"]
    top, inputs = [], {}
    if heads_part:
        up = load_result(profile, model, UPSTREAM)["metrics"]
        top = [(h["layer"], h["head"]) for h in up["top_heads"]][: cfg["top"]]
        up_dir = paths.artifact_dir(profile, model, UPSTREAM)
        inputs = {f"{UPSTREAM}/{f}": sha256_file(up_dir / f) for f in ("result.json", "heads.csv", "requests.csv")}
        inputs.update({"data/prompts.json": sha256_file(paths.PROMPTS_FILE), "data/tools.json": sha256_file(paths.TOOLS_FILE)})
    folder = bfcl.ensure_data()
    inputs.update({f"bfcl/{name}": sha256_file(folder / name) for name in bfcl.FILES})
    lm = load_model(model, profile=profile)
    dims = model_dims(lm.model)
    L, H = dims["layers"], dims["heads"]
    conditions = [c for c in make_conditions(top, L, H, dict(cfg, n_random_singles=0, keys=["desc"], variants=[]))
                  if c["kind"] in ("joint", "random_set")] if top and cfg["knockout_requests"] else []
    tool_reqs = [r for r in requests if r.gold is not None]
    rng = np.random.default_rng([cfg["seed"], 21])
    n_ko = min(cfg["knockout_requests"], len(tool_reqs)) if conditions else 0
    ko_ids = {tool_reqs[i].id for i in rng.choice(len(tool_reqs), size=n_ko, replace=False)} if n_ko else set()
    engine = ToolChoiceEngine(lm, batch_size=cfg["batch_size"], progress=False)
    groups = bfcl.groups(requests)
    synth = synthetic_lists(profile, model, cfg) if top else {}
    columns = [l * H + h for l, h in top]
    inputs.update(lm.files)
    with Run(profile, model, "bfcl", cfg, inputs, seed=cfg["seed"]) as run:

        def compute(name):
            if name in synth:  # a synthetic list: forced choice and the top heads' shares
                tools, reqs = synth[name]
                t0 = time.time()
                choices, shares, _ = read_shares(engine, [r.text for r in reqs] + [NEUTRAL_REQUEST], tools, desc=name)
                bar.update(1)
                return {"ids": [r.id for r in reqs], "scores": [[c.logprobs[t.name] for t in tools] for c in choices],
                        "shares": encode(shares[:, :, columns]), "seconds": time.time() - t0}
            tools, members = groups[int(name.split("-")[1])]
            tools = list(tools)
            texts = [r.text for r in members]
            t0 = time.time()
            choices, shares, block = read_shares(engine, texts + [NEUTRAL_REQUEST], tools, desc=f"{model} {name}")
            out = {"ids": [r.id for r in members], "scores": [[c.logprobs[t.name] for t in tools] for c in choices],
                   "p_tool": [c.p_tool for c in choices], "decides_tool": [c.decides_tool for c in choices],
                   "shares": encode(shares), "block": encode(block)}
            out["replies"] = engine.generate(texts, tools, max_new_tokens=cfg["max_new_tokens"], desc=f"{model} {name}") \
                if cfg["max_new_tokens"] else [""] * len(texts)
            out["seconds"] = time.time() - t0
            sub = [j for j, r in enumerate(members) if r.id in ko_ids]
            if sub:
                t1 = time.time()
                ko = HeadKnockout(lm, tools, [texts[j] for j in sub], [members[j].gold for j in sub],
                                  batch_size=cfg["batch_size"], max_rows=cfg["max_rows"], prefix_kv=engine._prefix.kv)
                out["knockout"] = {"rows": sub, "clean": encode(ko.clean_scores.numpy()),
                                   "knocked": encode(ko.run(torch.stack([c["heads"] for c in conditions])).numpy())}
                out["knockout_seconds"] = time.time() - t1
            bar.update(1)
            return out

        names = [f"group-{g:04d}" for g in range(len(groups))] + list(synth)
        # one chunk per function list (rate and ETA over the lists this process computes)
        bar = tqdm(total=len(names), initial=sum(run.chunk_path(n).exists() for n in names), desc=f"{model} bfcl",
                   unit="list")
        chunks = run.chunks(names, compute)
        bar.close()
        if chunks is None:
            return  # a helper process: its chunks are written
        chunks, synth_done = chunks[: len(groups)], dict(zip(synth, chunks[len(groups):]))
        run.timing("reading_s", sum(c["seconds"] for c in chunks))
        run.timing("knockout_s", sum(c.get("knockout_seconds", 0.0) for c in chunks))
        run.timing("seconds_per_request", sum(c["seconds"] for c in chunks) / max(len(requests), 1))
        run.timing("synthetic_s", sum(c["seconds"] for c in synth_done.values()))
        summarise(run, cfg, groups, chunks, data, top, conditions, L, H, synth, synth_done)


# --- the selector on synthetic lists ---------------------------------------------------------------

def synthetic_lists(profile: str, model: str, cfg: dict) -> dict:
    """Synthetic tool lists of ``synthetic_counts`` tools (every core tool and seeded catalog distractors,
    ``synthetic_orders`` seeded orders per count) with the held-out tool requests that did not select the
    heads (not in Phase 1's selection half), dealt over the orders: ``{name: (tools, requests)}``."""
    import csv

    from toolattn.datasets import load_prompts
    from toolattn.tools import CORE_NAMES, tool_list

    counts = cfg.get("synthetic_counts", [])
    if not counts:
        return {}
    if min(counts) < len(CORE_NAMES):
        raise ValueError(f"synthetic_counts {counts}: every list must hold the {len(CORE_NAMES)} core tools (the gold "
                         f"tools of the requests); use counts of at least {len(CORE_NAMES)} in toolattn/profiles.toml")
    with open(paths.artifact_dir(profile, model, UPSTREAM) / "requests.csv", newline="") as f:
        selection = {r["id"] for r in csv.DictReader(f) if r["half"] == "selection"}
    pool = [p for p in load_prompts() if p.tool is not None and p.split == "heldout" and p.id not in selection]
    rng = np.random.default_rng([cfg["seed"], 22])
    pick = sorted(rng.permutation(len(pool))[: cfg["n_synthetic"]])
    chosen = [pool[i] for i in pick]
    out = {}
    for k in counts:
        for o in range(cfg["synthetic_orders"]):
            reqs = chosen[o :: cfg["synthetic_orders"]]
            if reqs:
                out[f"synthetic-{k:02d}-{o}"] = (tool_list(k, seed=cfg["seed"] * 1000 + 100 * k + o), reqs)
    return out


def synthetic_summary(synth: dict, done: dict, margin: float | None) -> dict:
    """Per tool count: the model's forced choice, the calibrated and uncalibrated selector and the
    combination (with the margin chosen on the BFCL selection half) on the synthetic lists."""
    per: dict = {}
    for name, (tools, reqs) in synth.items():
        c = done[name]
        names = [t.name for t in tools]
        gold = np.array([names.index(r.tool) for r in reqs])
        scores = np.array(c["scores"][: len(reqs)])
        shares = decode(c["shares"])  # [requests + 1, tools, top heads]
        cal = selector_scores(shares[:-1], list(range(shares.shape[-1])), shares[-1])
        raw = selector_scores(shares[:-1], list(range(shares.shape[-1])))
        model = scores.argmax(1)
        comb = combined_choice(model, cal, np.inf if margin is None else margin)
        d = per.setdefault(str(len(tools)), {"model": [], "selector": [], "uncalibrated": [], "combined": []})
        for key, pred in (("model", model), ("selector", cal.argmax(1)), ("uncalibrated", raw.argmax(1)),
                          ("combined", comb)):
            d[key] += list(pred == gold)
    return {k: {"n": len(d["model"]), "model_accuracy": accuracy(d["model"]),
                "selector_accuracy": accuracy(d["selector"]), "uncalibrated_accuracy": accuracy(d["uncalibrated"]),
                "combined_accuracy": accuracy(d["combined"]),
                "selector_minus_model": paired_difference(d["selector"], d["model"]),
                "combined_minus_model": paired_difference(d["combined"], d["model"])} for k, d in per.items()}


# --- the summary ------------------------------------------------------------------------------------

def read_rows(groups, chunks) -> list[dict]:
    """One row per request: its subset, gold, function list and what the model did."""
    rows = []
    for (tools, members), c in zip(groups, chunks):
        names = [t.name for t in tools]
        shares, block = decode(c["shares"]), decode(c["block"])
        ko = c.get("knockout")
        ko_at = {j: k for k, j in enumerate(ko["rows"])} if ko else {}
        clean, knocked = (decode(ko["clean"]), decode(ko["knocked"])) if ko else (None, None)
        for j, r in enumerate(members):
            scores = np.array(c["scores"][j])
            reply = c["replies"][j]
            rows.append({
                "id": r.id, "subset": r.subset, "gold": r.gold, "tools": names, "n_tools": len(names),
                "gold_index": names.index(r.gold) if r.gold else None, "scores": scores,
                "chosen": names[int(scores.argmax())], "p_tool": c["p_tool"][j], "decides_tool": c["decides_tool"][j],
                "generated": parse_call(reply).name or "", "reply": reply,
                "shares": shares[j], "neutral": shares[-1], "block": block[j],
                "knockout": (clean[ko_at[j]], knocked[:, ko_at[j]]) if j in ko_at else None})
    return rows


def _centred(x: list[np.ndarray], chosen: np.ndarray):
    """Shares and the chosen indicator over (request, function) pairs, each centred within its request:
    lists differ in length, and a share of 1/2 in a list of two is no more retrieval than 1/5 in a list
    of five. Returns ``(x [pairs, heads], y [pairs], starts [requests], sizes [requests])``."""
    sizes = np.array([len(a) for a in x])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    xw = np.concatenate([a - a.mean(0) for a in x])
    y = np.concatenate([np.eye(len(a))[c] - 1 / len(a) for a, c in zip(x, chosen)])
    return xw, y, starts, sizes


def pair_corr(x: list[np.ndarray], chosen: np.ndarray) -> np.ndarray:
    """Correlation over (request, function) pairs between a head's share and "the function was chosen",
    both centred within each request (``_centred``): ``x`` per request ``[tools, heads]`` -> ``[heads]``."""
    xw, y, _, _ = _centred(x, chosen)
    den = np.sqrt((xw ** 2).sum(0) * (y ** 2).sum())
    return np.where(den > 1e-12, y @ xw / np.where(den > 1e-12, den, 1), 0.0)


def within_request_null(x: list[np.ndarray], chosen: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``pair_corr`` ``[n, heads]`` with each request's chosen function redrawn uniformly from its own list.

    The centred indicator's spread does not change under a redraw and the centred shares sum to zero
    within a request, so a draw's numerator is the sum of the shares at the drawn functions."""
    rng = np.random.default_rng(seed)
    xw, y, starts, sizes = _centred(x, chosen)
    den = np.sqrt((xw ** 2).sum(0) * (y ** 2).sum())
    den = np.where(den > 1e-12, den, np.inf)
    out = np.empty((n, xw.shape[1]))
    for k in range(n):
        out[k] = xw[starts + (rng.random(len(sizes)) * sizes).astype(int)].sum(0) / den
    return out


def best_margin(model_choice: np.ndarray, scores: np.ndarray, gold: np.ndarray) -> float:
    """The combination margin with the best accuracy on these requests (ties: the largest, so the model's
    own choice is overruled least); candidates are the observed leads of the selector over the model."""
    best = scores.argmax(1)
    lead = scores[np.arange(len(best)), best] - scores[np.arange(len(best)), model_choice]
    candidates = np.unique(np.concatenate([[np.inf], lead[lead > 0] - 1e-9]))
    accs = [(combined_choice(model_choice, scores, m) == gold).mean() for m in candidates]
    top = max(accs)
    return float(max(m for m, a in zip(candidates, accs) if a == top))


def summarise(run: Run, cfg, groups, chunks, data, top, conditions, L, H, synth=None, synth_done=None) -> None:
    rows = read_rows(groups, chunks)
    seed, nb = cfg["seed"], cfg["n_bootstrap"]
    tool_rows = [r for r in rows if r["gold"] is not None]
    irr_rows = [r for r in rows if r["gold"] is None]
    correct = np.array([r["chosen"] == r["gold"] for r in tool_rows])
    gen_ok = np.array([r["generated"] == r["gold"] for r in tool_rows])
    by_subset = {}
    for s in TOOL_SUBSETS:
        m = np.array([r["subset"] == s for r in tool_rows], bool)
        by_subset[s] = {"n": int(m.sum()), "forced_accuracy": accuracy(correct[m]),
                        "generation_accuracy": accuracy(gen_ok[m]),
                        "chance": float(np.mean([1 / r["n_tools"] for r, k in zip(tool_rows, m) if k])) if m.any() else None}
    calls = np.array([r["decides_tool"] for r in rows])
    needs = np.array([r["gold"] is not None for r in rows])
    gen_call = np.array([r["generated"] != "" for r in rows])
    p_tool = np.array([r["p_tool"] for r in rows])
    metrics = {
        "bfcl_version": bfcl.VERSION,
        "n_requests": len(rows), "n_tool_requests": len(tool_rows), "n_irrelevance": len(irr_rows),
        "data": data, "n_function_lists": len(groups),
        "tools_per_request": {"mean": float(np.mean([r["n_tools"] for r in rows])) if rows else None,
                              "max": int(max(r["n_tools"] for r in rows)) if rows else None},
        "forced_accuracy": accuracy(correct), "generation_accuracy": accuracy(gen_ok),
        "chance_accuracy": float(np.mean([1 / r["n_tools"] for r in tool_rows])) if tool_rows else None,
        "by_subset": by_subset,
        "tool_call_rate": proportion(calls[needs]), "irrelevance_call_rate": proportion(calls[~needs]),
        "irrelevance_generation_call_rate": proportion(gen_call[~needs]),
        "tool_no_tool_accuracy": accuracy(calls == needs),
        "p_tool_auc": roc_auc(p_tool, needs, n_resamples=nb, seed=seed) if 0 < needs.sum() < len(needs) else None,
    }
    run.write_csv("requests", [{k: (";".join(v) if k == "tools" else v) for k, v in r.items()
                                if k in ("id", "subset", "gold", "n_tools", "chosen", "generated", "p_tool",
                                         "decides_tool", "tools")} for r in rows])
    if top and tool_rows:
        metrics.update(head_summary(run, cfg, tool_rows, top, L, H))
        metrics["synthetic"] = synthetic_summary(synth or {}, synth_done or {}, metrics["selector"]["margin"])
        if conditions:
            metrics["knockout"] = knockout_summary(tool_rows, conditions, cfg)
    figures(run, metrics, tool_rows, top, H)
    run.result(metrics)
    print(f"[bfcl] {run.model}: forced choice {metrics['forced_accuracy']['value']:.3f} on {len(tool_rows)} BFCL "
          f"requests (chance {metrics['chance_accuracy'] or 0:.2f}); irrelevance call rate "
          f"{metrics['irrelevance_call_rate'].get('value', float('nan')):.2f}")


def head_summary(run: Run, cfg, tool_rows, top, L, H) -> dict:
    """Parts 2, 4 and 5: the synthetic top heads on BFCL, the ranking on BFCL, looking vs picking, the selector."""
    seed = cfg["seed"]
    idx = [l * H + h for l, h in top]
    x = [r["shares"] for r in tool_rows]  # per request [tools, L * H]
    chosen = np.array([r["tools"].index(r["chosen"]) for r in tool_rows])
    gold = np.array([r["gold_index"] for r in tool_rows])
    chance = np.array([1 / r["n_tools"] for r in tool_rows])

    # 2. the synthetic top heads on BFCL: correlation with the choice, top-1 retrieval of the gold function
    corr = pair_corr([a[:, idx] for a in x], chosen)
    null = within_request_null([a[:, idx] for a in x], chosen, cfg["n_permutations"], seed)
    p = (1 + (np.abs(null) >= np.abs(corr) - 1e-12).sum(0)) / (cfg["n_permutations"] + 1)
    p_holm = holm(p)
    heads = []
    for i, (l, h) in enumerate(top):
        hits = np.array([a[:, idx[i]].argmax() == g for a, g in zip(x, gold)])
        ci = bootstrap_ci(np.arange(len(x)), lambda b, i=i: pair_corr([x[k][:, idx[i]][:, None] for k in b.astype(int)],
                                                                    chosen[b.astype(int)])[0],
                          n_resamples=cfg["n_bootstrap"], seed=seed)
        heads.append({"layer": l, "head": h, "corr": {**ci, "value": float(corr[i])}, "p": float(p[i]),
                      "p_holm": float(p_holm[i]),
                      "gold_top1_rate": proportion(hits), "chosen_top1_rate":
                      proportion([a[:, idx[i]].argmax() == c for a, c in zip(x, chosen)])})
    mean_top = [a[:, idx].mean(1) for a in x]  # [tools] per request
    looks_gold = np.array([m.argmax() == g for m, g in zip(mean_top, gold)])
    looks_chosen = np.array([m.argmax() == c for m, c in zip(mean_top, chosen)])
    wrong = chosen != gold

    # the ranking recomputed on BFCL (selection half) against the synthetic ranking
    labels = [f"{r['subset']}/{bfcl.size_bin(r['n_tools'])}" for r in tool_rows]
    half = stratified_groups(labels, 2, seed, salt=3)  # 0 selection, 1 held out
    sel, held = half == 0, half == 1
    block_sel = np.array([r["block"] for r, s in zip(tool_rows, sel) if s]).mean(0)
    eligible_bfcl = block_sel >= cfg["min_tool_block_share"]
    corr_bfcl = pair_corr([a for a, s in zip(x, sel) if s], chosen[sel])
    synth = synthetic_ranking(run, L, H)
    both = eligible_bfcl & synth["eligible"]
    rho = sps.spearmanr(synth["corr"][both], corr_bfcl[both]) if both.sum() > 2 else None
    top_b = [j for j in np.argsort(-corr_bfcl, kind="stable") if eligible_bfcl[j]][:TOP_OVERLAP]
    top_s = [j for j in np.argsort(-synth["corr"], kind="stable") if synth["eligible"][j]][:TOP_OVERLAP]
    n_elig = int(both.sum())
    run.write_csv("heads", [{"layer": j // H, "head": j % H, "bfcl_corr": float(corr_bfcl[j]),
                             "bfcl_eligible": bool(eligible_bfcl[j]), "bfcl_tool_block_share": float(block_sel[j]),
                             "synthetic_corr": float(synth["corr"][j]), "synthetic_eligible": bool(synth["eligible"][j])}
                            for j in range(L * H)])

    # 5. the selector: calibrated, uncalibrated, and the combination with the model's choice
    cols = idx
    cal = [selector_scores(a[None], cols, r["neutral"])[0] for a, r in zip(x, tool_rows)]
    raw = [selector_scores(a[None], cols)[0] for a in x]
    sel_ok = np.array([c.argmax() == g for c, g in zip(cal, gold)])
    raw_ok = np.array([c.argmax() == g for c, g in zip(raw, gold)])
    model_ok = chosen == gold
    # the combination's margin, chosen on the selection half (per request: pad to a common width)
    width = max(r["n_tools"] for r in tool_rows)
    padded = np.full((len(tool_rows), width), -np.inf)
    for i, c in enumerate(cal):
        padded[i, : len(c)] = c
    m_star = best_margin(chosen[sel], padded[sel], gold[sel]) if sel.any() else float("inf")
    comb_ok = combined_choice(chosen, padded, m_star) == gold
    selector = {
        "heads": [{"layer": l, "head": h} for l, h in top], "neutral_request": NEUTRAL_REQUEST,
        "n_selection": int(sel.sum()), "n_heldout": int(held.sum()),
        "margin": m_star if np.isfinite(m_star) else None,
        "model_accuracy": accuracy(model_ok[held]), "selector_accuracy": accuracy(sel_ok[held]),
        "uncalibrated_accuracy": accuracy(raw_ok[held]), "combined_accuracy": accuracy(comb_ok[held]),
        "selector_minus_model": paired_difference(sel_ok[held], model_ok[held]),
        "uncalibrated_minus_model": paired_difference(raw_ok[held], model_ok[held]),
        "combined_minus_model": paired_difference(comb_ok[held], model_ok[held]),
        "calibration_gain": paired_difference(sel_ok[held], raw_ok[held]),
        "overruled": int((combined_choice(chosen, padded, m_star) != chosen)[held].sum()),
        "chance": float(chance[held].mean()) if held.any() else None,
    }
    return {
        "top_heads": heads, "n_top_heads": len(top),
        "top_heads_significant": int((p_holm < 0.05).sum()),
        "top_head_mean_gold_top1_rate": proportion(looks_gold), "gold_top1_chance": float(chance.mean()),
        "top_head_gold_top1_excess": excess(proportion(looks_gold), float(chance.mean())),
        "looking_vs_picking": {"n_failures": int(wrong.sum()), "looks_at_gold": proportion(looks_gold[wrong]),
                               "looks_at_chosen": proportion(looks_chosen[wrong]),
                               "looks_at_gold_when_correct": proportion(looks_gold[~wrong]),
                               "chance": float(chance[wrong].mean()) if wrong.any() else None},
        "ranking": {"n_selection": int(sel.sum()), "n_eligible_both": n_elig,
                    "spearman": (float(rho.statistic) if rho is not None else None),
                    "spearman_p": (float(rho.pvalue) if rho is not None else None),
                    "top_k": TOP_OVERLAP, "top10_overlap": len(set(top_b) & set(top_s)),
                    "top10_overlap_chance": (len(top_b) * len(top_s) / n_elig) if n_elig else None,
                    "bfcl_top_heads": [{"layer": int(j // H), "head": int(j % H), "corr": float(corr_bfcl[j])}
                                       for j in top_b]},
        "selector": selector,
    }


def excess(rate: dict, chance: float) -> dict:
    """A rate's Wilson interval shifted by its chance level (chance is fixed by the sampled lists)."""
    return {"value": rate["value"] - chance, "lo": rate["lo"] - chance, "hi": rate["hi"] - chance, "n": rate["n"]}


def synthetic_ranking(run: Run, L: int, H: int) -> dict:
    """Phase 1's per-head correlation and eligibility (its selection half), ``[L * H]`` each."""
    import csv

    up_dir = paths.artifact_dir(run.profile, run.model, UPSTREAM)
    corr, elig = np.zeros(L * H), np.zeros(L * H, bool)
    with open(up_dir / "heads.csv", newline="") as f:
        for r in csv.DictReader(f):
            j = int(r["layer"]) * H + int(r["head"])
            corr[j], elig[j] = float(r["corr"]), r["eligible"] == "True"
    return {"corr": corr, "eligible": elig}


def knockout_summary(tool_rows, conditions, cfg) -> dict:
    """Part 3: the joint top-head knockout against the random sets, on the knocked-out requests."""
    done = [r for r in tool_rows if r["knockout"] is not None]
    gold = [r["gold_index"] for r in done]
    out = {"n": len(done), "n_random_sets": sum(c["kind"] == "random_set" for c in conditions)}
    per = {}
    for k, cond in enumerate(conditions):
        ok0 = np.array([cl.argmax() == g for (cl, _), g in zip((r["knockout"] for r in done), gold)])
        ok1 = np.array([kn[k].argmax() == g for (_, kn), g in zip((r["knockout"] for r in done), gold)])
        dm = np.array([float(margin(torch.as_tensor(kn[k][None]), torch.tensor([g]))[0]
                             - margin(torch.as_tensor(cl[None]), torch.tensor([g]))[0])
                       for (cl, kn), g in zip((r["knockout"] for r in done), gold)])
        per[cond["name"]] = (ok0, ok1, dm)
    joint = next(c["name"] for c in conditions if c["kind"] == "joint")
    rand = [c["name"] for c in conditions if c["kind"] == "random_set"]
    ok0, ok1, dm = per[joint]
    rmeans = np.array([per[n][2].mean() for n in rand])
    out.update({"clean_accuracy": accuracy(ok0), "knocked_accuracy": accuracy(ok1), "drop": paired_difference(ok0, ok1),
                "margin_change": bootstrap_ci(dm, n_resamples=cfg["n_bootstrap"], seed=cfg["seed"]),
                "random_margin_change_mean": float(rmeans.mean()) if len(rmeans) else None,
                "random_drop_mean": float(np.mean([per[n][0].mean() - per[n][1].mean() for n in rand])) if rand else None,
                "margin_change_beyond_random": float(dm.mean() - rmeans.mean()) if len(rmeans) else None,
                "empirical_p_margin": float((1 + (rmeans <= dm.mean()).sum()) / (1 + len(rmeans)))})
    return out


# --- figures ----------------------------------------------------------------------------------------

def figures(run: Run, metrics: dict, tool_rows, top, H) -> None:
    model = run.model
    bins = [label for _, _, label in bfcl.BINS if any(bfcl.size_bin(r["n_tools"]) == label for r in tool_rows)]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for key, label, mark in (("forced", "forced choice", "o"), ("generation", "generation", "s")):
        vals, err, xs = [], [], []
        for k, b in enumerate(bins):
            rows = [r for r in tool_rows if bfcl.size_bin(r["n_tools"]) == b]
            if not rows:
                continue
            ok = [r["chosen" if key == "forced" else "generated"] == r["gold"] for r in rows]
            a = accuracy(ok)
            xs.append(k + (0.1 if key == "generation" else -0.1))
            vals.append(a["value"])
            err.append([a["value"] - a["lo"], a["hi"] - a["value"]])
        if xs:
            ax.errorbar(xs, vals, yerr=np.array(err).T, fmt=mark, label=label)
    chance = [np.mean([1 / r["n_tools"] for r in tool_rows if bfcl.size_bin(r["n_tools"]) == b]) for b in bins]
    ax.plot(range(len(bins)), chance, "x", c="black", label="chance")
    ax.set_xticks(range(len(bins)), bins)
    ax.set_xlabel("functions declared")
    ax.set_ylabel("accuracy (Wilson 95%)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(f"{model}: BFCL accuracy by list size", fontsize=9)
    fig.tight_layout()
    run.save_figure("accuracy_by_size", fig, f"Forced-choice and generation accuracy on BFCL tool requests by the "
                    f"number of declared functions, with Wilson 95% intervals; crosses mark chance ({model}).")
    plt.close(fig)
    sel = metrics.get("selector")
    if sel:
        keys = [("model_accuracy", "model"), ("selector_accuracy", "selector"),
                ("uncalibrated_accuracy", "uncalibrated"), ("combined_accuracy", "combined")]
        fig, ax = plt.subplots(figsize=(5.5, 3.2))
        for k, (key, label) in enumerate(keys):
            a = sel[key]
            if a.get("n"):
                ax.errorbar([k], [a["value"]], yerr=[[a["value"] - a["lo"]], [a["hi"] - a["value"]]], fmt="o")
        ax.axhline(sel["chance"] or 0, c="grey", ls="--", lw=0.6)
        ax.set_xticks(range(len(keys)), [lab for _, lab in keys])
        ax.set_ylabel("top-1 accuracy, held-out half")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{model}: attention selector on BFCL ({len(top)} heads)", fontsize=9)
        fig.tight_layout()
        run.save_figure("selector", fig, f"Held-out BFCL tool requests: the model's forced choice, the attention "
                        f"selector over the {len(top)} top heads of Phase 1 (calibrated by a content-free request, and "
                        f"uncalibrated), and the combination (the model's choice unless the selector leads by more "
                        f"than a margin chosen on the selection half); Wilson 95% intervals, dashed: chance ({model}).")
        plt.close(fig)


if __name__ == "__main__":
    from toolattn.errors import analysis_main

    analysis_main(run, __doc__, "qwen2.5-coder-1.5b")
