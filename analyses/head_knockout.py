"""Head knockout (Phase 2): are the retrieval heads causal, and what does the model pick without them?

Method. The heads are the top ``top`` of Phase 1 (``retrieval_heads``), ranked on its selection
half; every knockout is measured on requests of its confirmation half only, in Phase 1's seeded
tool orders (the confirmation requests of the first ``n_orders`` orders). A knockout adds -1e9 to a
head's pre-softmax logits at the tool-description keys (variants: name + description, the whole
tool listing) for every query after the tool block (``toolattn.knockout``).

Conditions: each top head alone; the top heads together (the joint set); ``n_random_sets`` random
sets of as many heads drawn from the same layers as the top heads (one per top head, from its layer,
none of the top heads); ``n_random_singles`` random single heads from each layer that holds a top
head. The whole design runs at each knockout scope of ``keys`` (the first, the plan's description
keys, is primary); the joint set alone at the scopes of ``variants``.

Effect, per condition against the clean run on the same requests: accuracy of the forced choice
(correct = the gold tool; Wilson interval), the paired drop with a Newcombe interval and the exact
McNemar p, and the mean change of the margin (gold score minus the best other tool's, in summed
log-probability; bootstrap interval over requests), which moves before accuracy does. A head is
*essential* when its drop exceeds ``drop_threshold``, its McNemar p is below ``alpha`` after Holm
across the top heads, and its drop exceeds the 95th percentile of the random singles' drops. The
joint set is judged against the random sets: its drop beyond their 95th percentile, and the
empirical p (1 + sets with at least its drop) / (1 + sets).

What is picked instead: on every decision that goes from correct to wrong, the replacement tool, its
list position, and its similarity rank among the wrong tools by the model's own representation of
the tools (``toolattn.similarity``). *Positional*: the replacement is listed first or last (the
plan's "does it default to first/last tool?"); *semantic*: it is one of the gold tool's
``similar_k`` nearest neighbours; each against its chance rate (the share of wrong tools that
qualify), one-sided exact binomial test. The verdict reads the joint knockout (one decision per
request, so flips are independent) at the scope ``replacement_keys`` (fixed in the profile); the
single-head flips are pooled for description only.

Attribution patching: AtP with the exact knocked-out pattern (the AtP* QK fix) and GradDrop over
``graddrop`` layer groups estimates every head's mean margin change from one forward and a few
backward passes, on ``atp_requests`` confirmation requests of the first order. Exhaustive knockout
on the same requests of the AtP top ``atp_top`` (by magnitude), every head of ``exhaustive_layers``
layers spread over depth, and ``n_random_exhaustive`` random heads, gives the truth to compare:
Spearman correlation and top-10 / top-20 overlap by magnitude.
"""

from __future__ import annotations

import csv
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import stats as sps  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from analyses.retrieval_heads import decode, encode  # noqa: E402
from toolattn import paths  # noqa: E402
from toolattn.artifacts import Run, load_profile, load_result, sha256_file  # noqa: E402
from toolattn.datasets import load_prompts  # noqa: E402
from toolattn.knockout import HeadKnockout, full_prompt_scores, margin  # noqa: E402
from toolattn.models import load_model  # noqa: E402
from toolattn.similarity import neighbour_rank, tool_similarity  # noqa: E402
from toolattn.stats import accuracy, bootstrap_ci, empty, holm, paired_difference, proportion  # noqa: E402
from toolattn.tools import core_tools  # noqa: E402

UPSTREAM = "retrieval_heads"
SCOPE_NAMES = {"desc": "description keys", "span": "name + description keys", "block": "the whole tool listing"}


def head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def run(profile: str, model: str, prof: dict | None = None) -> None:
    """``prof``: the profile's settings (default: ``profiles.toml``), e.g. a tiny one in tests."""
    prof = prof or load_profile(profile)
    cfg = dict(prof["head_knockout"], batch_size=prof["batch_size"], seed=prof["seed"])
    up = load_result(profile, model, UPSTREAM)
    m = up["metrics"]
    L, H = m["n_layers"], m["n_heads_per_layer"]
    top = [(h["layer"], h["head"]) for h in m["top_heads"]][: cfg["top"]]
    if not top:
        raise ValueError(f"{UPSTREAM} of {model} ({profile}) ranked no head; nothing to knock out")
    core = {t.name: t for t in core_tools()}
    orders = [[core[n] for n in names] for names in m["tool_orders"]]
    prompts = {p.id: p for p in load_prompts()}
    up_dir = paths.artifact_dir(profile, model, UPSTREAM)
    with open(up_dir / "requests.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["half"] == "confirmation" and int(r["order"]) < cfg["n_orders"]]
    by_order = {o: [r for r in rows if int(r["order"]) == o] for o in range(min(cfg["n_orders"], len(orders)))}
    conditions = make_conditions(top, L, H, cfg)
    lm = load_model(model, profile=profile)
    inputs = {"data/prompts.json": sha256_file(paths.PROMPTS_FILE), "data/tools.json": sha256_file(paths.TOOLS_FILE),
              f"{UPSTREAM}/result.json": sha256_file(up_dir / "result.json"),
              f"{UPSTREAM}/requests.csv": sha256_file(up_dir / "requests.csv"), **lm.files}
    with Run(profile, model, "head_knockout", cfg, inputs, seed=cfg["seed"]) as run:
        runners = {}

        def runner(o):
            if o not in runners:
                part = by_order[o]
                runners[o] = HeadKnockout(lm, orders[o], [prompts[r["id"]].text for r in part],
                                          [r["gold"] for r in part], batch_size=cfg["batch_size"],
                                          max_rows=cfg["max_rows"])
            return runners[o]

        def compute(name):
            o = int(name.split("-")[1])
            t0 = time.time()
            ko = runner(o)
            clean_s = time.time() - t0
            out = {"clean": encode(ko.clean_scores.numpy())}
            for keys in sorted({c["keys"] for c in conditions}):
                sel = [c for c in conditions if c["keys"] == keys]
                bar = tqdm(total=len(sel), desc=f"{model} order {o} knockout ({keys})", unit="cond")
                t1 = time.time()
                scores = ko.run(torch.stack([c["heads"] for c in sel]), keys=keys,
                                progress=lambda done, total: bar.update(done - bar.n))
                bar.close()
                out.update({c["name"]: encode(s.numpy()) for c, s in zip(sel, scores)})
                out[f"seconds:{keys}"] = time.time() - t1
            out["seconds:clean"] = clean_s
            return out

        # One chunk per tool order (split between the processes of `accelerate launch`, if any).
        chunk_names = [f"order-{o:02d}" for o, part in by_order.items() if part]
        chunks = run.chunks(chunk_names, compute)
        if chunks is None:
            return  # a helper process: its chunks are written
        parts = []
        for name, done in zip(chunk_names, chunks):
            o = int(name.split("-")[1])
            for key in [k for k in done if k.startswith("seconds:")]:
                run.timing("knockout_s" if key != "seconds:clean" else "clean_s", done[key])
            parts.append({"order": o, "tools": orders[o], "rows": by_order[o], "clean": decode(done["clean"]),
                          "scores": {c["name"]: decode(done[c["name"]]) for c in conditions}})
        sim = np.array(run.chunk("similarity", lambda: tool_similarity(lm, list(core.values())).tolist()))
        core_index = {n: i for i, n in enumerate(core)}

        # Attribution patching and exhaustive knockout on the first order's first requests.
        o0 = min(by_order)
        atp_part = by_order[o0][: cfg["atp_requests"]]
        atp_texts, atp_gold = [prompts[r["id"]].text for r in atp_part], [r["gold"] for r in atp_part]

        def atp_runner():
            share = runners.get(o0)
            return HeadKnockout(lm, orders[o0], atp_texts, atp_gold, batch_size=cfg["batch_size"],
                                max_rows=cfg["max_rows"], share=share)

        def compute_atp():
            t0 = time.time()
            est = atp_runner().atp(graddrop=cfg["graddrop"])
            return {"atp": encode(est["atp"]), "graddrop": encode(est["graddrop"]) if est["graddrop"] is not None
                    else None, "groups": est["groups"], "seconds": time.time() - t0}

        atp = run.chunk("atp", compute_atp)
        run.timing("atp_s", atp["seconds"])
        est = decode(atp["atp"])
        gd = decode(atp["graddrop"]) if atp["graddrop"] is not None else None
        exhaustive = exhaustive_heads(est, L, H, cfg)

        def compute_exhaustive():
            ko = atp_runner()
            t0 = time.time()
            heads = torch.zeros(len(exhaustive), L, H, dtype=torch.bool)
            for i, (l, h) in enumerate(exhaustive):
                heads[i, l, h] = True
            bar = tqdm(total=len(exhaustive), desc=f"{model} exhaustive knockout", unit="head")
            scores = ko.run(heads, progress=lambda done, total: bar.update(done - bar.n))
            bar.close()
            g = ko.gold
            change = (margin(scores, g) - margin(ko.clean_scores, g)).mean(1)
            # the cost check: one head-condition with the whole prompt recomputed, on one request
            one = torch.zeros(L, H, dtype=torch.bool)
            one[top[0]] = True
            ref, ref_s = full_prompt_scores(lm, orders[o0], atp_texts[:1], one)
            mine = ko.run(one[None])[0, :1]
            return {"change": change.tolist(), "seconds": time.time() - t0, "n_requests": len(ko),
                    "full_prompt_s": ref_s, "full_prompt_max_abs_diff": float((ref - mine).abs().max())}

        ex = run.chunk("exhaustive", compute_exhaustive)
        run.timing("exhaustive_s", ex["seconds"])
        run.timing("full_prompt_s_per_request_condition", ex["full_prompt_s"])
        summarise(run, cfg, parts, conditions, top, L, H, sim, core_index, est, gd, atp["groups"], exhaustive, ex)


# --- design ------------------------------------------------------------------------------------

def make_conditions(top: list[tuple[int, int]], L: int, H: int, cfg: dict) -> list[dict]:
    """Every knockout condition: ``{"name", "kind", "keys", "heads" [L, H] bool, "members"}``. The full
    design (singles, joint, random sets, random singles; the same random draws) runs at each scope of
    ``cfg["keys"]``; the joint set alone at each scope of ``cfg["variants"]``."""
    rng = np.random.default_rng([cfg["seed"], 12])
    top_set = set(top)

    def mask(members):
        m = torch.zeros(L, H, dtype=torch.bool)
        for l, h in members:
            m[l, h] = True
        return m

    layers = [l for l, _ in top]
    pool = {l: [(l, h) for h in range(H) if (l, h) not in top_set] for l in sorted(set(layers))}
    design = [("single", f"single:{head_name(*t)}", [t]) for t in top] + [("joint", "joint", top)]
    for k in range(cfg["n_random_sets"]):
        members = []
        for l in sorted(set(layers)):
            pick = rng.choice(len(pool[l]), size=min(layers.count(l), len(pool[l])), replace=False)
            members += [pool[l][i] for i in pick]
        design.append(("random_set", f"random_set:{k:02d}", members))
    for l in sorted(set(layers)):
        pick = rng.choice(len(pool[l]), size=min(cfg["n_random_singles"], len(pool[l])), replace=False)
        design += [("random_single", f"random_single:{head_name(*pool[l][i])}", [pool[l][i]]) for i in pick]
    out = [{"name": f"{name}@{keys}", "kind": kind, "keys": keys, "heads": mask(members), "members": list(members)}
           for keys in cfg["keys"] for kind, name, members in design]
    out += [{"name": f"joint@{keys}", "kind": "joint", "keys": keys, "heads": mask(top), "members": list(top)}
            for keys in cfg["variants"] if keys not in cfg["keys"]]
    return out


def exhaustive_heads(est: np.ndarray, L: int, H: int, cfg: dict) -> list[tuple[int, int]]:
    """Heads knocked out one by one on the AtP requests: the AtP top ``atp_top`` by magnitude, every
    head of ``exhaustive_layers`` layers spread over depth (all heads when ``exhaustive_all``), and
    ``n_random_exhaustive`` random other heads (seeded)."""
    if cfg["exhaustive_all"]:
        return [(l, h) for l in range(L) for h in range(H)]
    flat = np.argsort(-np.abs(est).reshape(-1), kind="stable")[: cfg["atp_top"]]
    chosen = [(int(i // H), int(i % H)) for i in flat]
    if cfg["exhaustive_layers"]:
        for l in np.unique(np.round(np.linspace(0, L - 1, cfg["exhaustive_layers"])).astype(int)):
            chosen += [(int(l), h) for h in range(H)]
    chosen = list(dict.fromkeys(chosen))
    rest = [(l, h) for l in range(L) for h in range(H) if (l, h) not in set(chosen)]
    rng = np.random.default_rng([cfg["seed"], 13])
    if cfg["n_random_exhaustive"] and rest:
        chosen += [rest[i] for i in sorted(rng.choice(len(rest), min(cfg["n_random_exhaustive"], len(rest)),
                                                      replace=False))]
    return chosen


# --- statistics ---------------------------------------------------------------------------------

def effect(clean: np.ndarray, knocked: np.ndarray, gold: np.ndarray, seed: int, n_boot: int) -> dict:
    """Accuracy, paired drop and margin change of one condition (``[n, N]`` scores, ``gold [n]``)."""
    ok0, ok1 = clean.argmax(1) == gold, knocked.argmax(1) == gold
    g = torch.as_tensor(gold)
    dm = (margin(torch.as_tensor(knocked), g) - margin(torch.as_tensor(clean), g)).numpy()
    return {"accuracy": accuracy(ok1), "drop": paired_difference(ok0, ok1),
            "margin_change": bootstrap_ci(dm, n_resamples=n_boot, seed=seed),
            "flips": int((clean.argmax(1) != knocked.argmax(1)).sum())}


def binom_greater(k: int, n: int, p: float) -> float:
    return float(sps.binomtest(k, n, min(max(p, 1e-12), 1 - 1e-12), alternative="greater").pvalue) if n else 1.0


def replacement_summary(flips: list[dict], alpha: float) -> dict:
    """Counts and rates of positional / semantic replacements against chance, and the verdict."""
    n = len(flips)
    out = {"n": n}
    for kind in ("positional", "semantic"):
        k = sum(f[kind] for f in flips)
        chance = float(np.mean([f[f"{kind}_chance"] for f in flips])) if n else None
        rate = proportion([f[kind] for f in flips])
        out[kind] = {**rate, "chance": chance, "p": binom_greater(k, n, chance) if n else None,
                     "excess": ({"value": rate["value"] - chance, "lo": rate["lo"] - chance,
                                 "hi": rate["hi"] - chance, "n": n} if n else empty())}
    out["other"] = proportion([not (f["positional"] or f["semantic"]) for f in flips])
    if n == 0:
        out["verdict"] = "no flips"
    else:
        sig = {k: out[k]["p"] < alpha for k in ("positional", "semantic")}
        out["verdict"] = ("positional and semantic" if all(sig.values()) else "positional" if sig["positional"]
                          else "semantic" if sig["semantic"] else "neither beyond chance (random)")
    return out


def verdicts(conditions, effects, cfg) -> dict:
    """Essential heads and the joint set against the random controls, for one knockout scope."""
    alpha = cfg["alpha"]
    by_kind = {k: [c for c in conditions if c["kind"] == k] for k in ("single", "joint", "random_set", "random_single")}
    drop = lambda c: effects[c["name"]]["drop"]["value"]  # noqa: E731
    rs_drops = np.array([drop(c) for c in by_kind["random_single"]])
    set_drops = np.array([drop(c) for c in by_kind["random_set"]])
    rs_p95 = float(np.percentile(rs_drops, 95)) if len(rs_drops) else None
    set_p95 = float(np.percentile(set_drops, 95)) if len(set_drops) else None
    p_holm = holm([effects[c["name"]]["drop"]["p"] for c in by_kind["single"]])
    heads = []
    for i, (c, ph) in enumerate(zip(by_kind["single"], p_holm)):
        e = effects[c["name"]]
        (l, h), = c["members"]
        heads.append({"head": head_name(l, h), "layer": l, "head_index": h, "selection_rank": i + 1, **e,
                      "p_holm": float(ph), "essential": bool(e["drop"]["value"] > cfg["drop_threshold"] and ph < alpha
                                                            and rs_p95 is not None and e["drop"]["value"] > rs_p95)})
    joint = effects[by_kind["joint"][0]["name"]] if by_kind["joint"] else None
    out = {"top_heads": heads, "essential_heads": [h["head"] for h in heads if h["essential"]], "joint": joint,
           "random_singles": {"n": int(len(rs_drops)), "drop_p95": rs_p95,
                              "drop_mean": float(rs_drops.mean()) if len(rs_drops) else None,
                              "margin_change_mean": float(np.mean([effects[c["name"]]["margin_change"]["value"]
                                                                   for c in by_kind["random_single"]]))
                              if by_kind["random_single"] else None,
                              "drops": rs_drops.tolist(),
                              "margin_changes": [effects[c["name"]]["margin_change"]["value"]
                                                 for c in by_kind["random_single"]]},
           "random_sets": {"n": int(len(set_drops)), "drop_p95": set_p95, "drops": set_drops.tolist(),
                           "margin_changes": [effects[c["name"]]["margin_change"]["value"] for c in by_kind["random_set"]]}}
    out["n_essential"] = len(out["essential_heads"])
    if heads:
        best = max(heads, key=lambda x: x["drop"]["value"])
        out["max_head_drop"] = {**best["drop"], "head": best["head"]}
    if joint is not None and len(set_drops):
        out["joint_empirical_p"] = (1 + int((set_drops >= joint["drop"]["value"]).sum())) / (1 + len(set_drops))
        out["joint_beyond_random"] = bool(joint["drop"]["value"] > set_p95)
        ms = np.array(out["random_sets"]["margin_changes"])
        out["joint_margin_empirical_p"] = (1 + int((ms <= joint["margin_change"]["value"]).sum())) / (1 + len(ms))
    return out


def summarise(run: Run, cfg, parts, conditions, top, L, H, sim, core_index, est, gd, groups, exhaustive, ex) -> None:
    names = [t.name for t in core_tools()]
    n_boot, seed, alpha = cfg["n_bootstrap"], cfg["seed"], cfg["alpha"]
    clean = np.concatenate([p["clean"] for p in parts])
    gold = np.concatenate([[[t.name for t in p["tools"]].index(r["gold"]) for r in p["rows"]] for p in parts])
    scores = {c["name"]: np.concatenate([p["scores"][c["name"]] for p in parts]) for c in conditions}
    effects = {c["name"]: effect(clean, scores[c["name"]], gold, seed, n_boot) for c in conditions}
    scopes = list(dict.fromkeys(c["keys"] for c in conditions))
    by_keys = {k: verdicts([c for c in conditions if c["keys"] == k], effects, cfg) for k in scopes}
    primary = by_keys[cfg["keys"][0]]

    # What is picked instead, on decisions that go from correct to wrong.
    rep_keys = cfg["replacement_keys"]
    flips = {"joint": [], "singles": [], "random": []}
    for p in parts:
        tools = [t.name for t in p["tools"]]
        idx = [core_index[t] for t in tools]
        s_list = sim[np.ix_(idx, idx)]  # similarity in this order's list positions
        for c in conditions:
            group = ("joint" if c["kind"] == "joint" and c["keys"] == rep_keys else
                     "singles" if c["kind"] == "single" else
                     "random" if c["kind"] in ("random_set", "random_single") else None)
            if group is None:
                continue
            kn = p["scores"][c["name"]]
            for b, r in enumerate(p["rows"]):
                g, c0, c1 = tools.index(r["gold"]), int(p["clean"][b].argmax()), int(kn[b].argmax())
                if c0 != g or c1 == g:
                    continue
                wrong = [j for j in range(len(tools)) if j != g]
                ends = {0, len(tools) - 1}
                rank = neighbour_rank(s_list, g, c1)
                flips[group].append({
                    "condition": c["name"], "id": r["id"], "order": p["order"], "gold": r["gold"],
                    "gold_position": g + 1, "replacement": tools[c1], "replacement_position": c1 + 1,
                    "similarity": float(s_list[g, c1]), "similarity_rank": rank,
                    "positional": c1 in ends, "positional_chance": len(ends - {g}) / len(wrong),
                    "semantic": rank <= cfg["similar_k"], "semantic_chance": cfg["similar_k"] / len(wrong)})
    replacements = {k: replacement_summary(v, alpha) for k, v in flips.items()}

    # AtP against exhaustive knockout.
    truth = np.array(ex["change"])
    atp_vals = np.array([est[l, h] for l, h in exhaustive])
    gd_vals = np.array([gd[l, h] for l, h in exhaustive]) if gd is not None else None
    layers_set = sorted({l for l, _ in exhaustive if sum(1 for x, _ in exhaustive if x == l) == H})
    in_layers = np.array([l in layers_set for l, _ in exhaustive])

    def overlap(a, b, k):
        k = min(k, len(a))
        return len(set(np.argsort(-np.abs(a), kind="stable")[:k]) & set(np.argsort(-np.abs(b), kind="stable")[:k])) / k

    def rho(a, b):
        return float(sps.spearmanr(a, b).statistic) if len(a) > 2 and np.std(a) > 0 and np.std(b) > 0 else None

    atp_cmp = {"n_heads": len(exhaustive), "n_requests": ex["n_requests"],
               "spearman": rho(atp_vals, truth), "spearman_abs": rho(np.abs(atp_vals), np.abs(truth)),
               "spearman_in_layers": rho(atp_vals[in_layers], truth[in_layers]) if in_layers.any() else None,
               "layers": layers_set, "top10_overlap": overlap(atp_vals, truth, 10),
               "top20_overlap": overlap(atp_vals, truth, 20),
               "graddrop_spearman_abs": rho(gd_vals, np.abs(truth)) if gd_vals is not None else None,
               "graddrop_top20_overlap": overlap(gd_vals, truth, 20) if gd_vals is not None else None,
               "graddrop_groups": len(groups), "mean_abs_error": float(np.mean(np.abs(atp_vals - truth))),
               "max_abs_knockout": float(np.abs(truth).max())}
    n_cond = sum(len(p["rows"]) for p in parts) * len(conditions)
    seconds = run.timings.get("knockout_s", 0.0)
    run.timing("seconds_per_head_condition", seconds / max(len(conditions) * len(parts), 1))
    run.timing("seconds_per_request_condition", seconds / max(n_cond, 1))

    # Tables.
    def row(c):
        e = effects[c["name"]]
        return {"condition": c["name"], "kind": c["kind"], "keys": c["keys"],
                "heads": " ".join(head_name(*x) for x in c["members"]), "accuracy": e["accuracy"]["value"],
                "drop": e["drop"]["value"], "drop_lo": e["drop"]["lo"], "drop_hi": e["drop"]["hi"], "p": e["drop"]["p"],
                "margin_change": e["margin_change"]["value"], "margin_change_lo": e["margin_change"]["lo"],
                "margin_change_hi": e["margin_change"]["hi"], "flips": e["flips"]}
    run.write_csv("conditions", [row(c) for c in conditions])
    run.write_csv("replacements", [{"group": k, **f} for k, v in flips.items() for f in v])
    ko_change = {hd: float(v) for hd, v in zip(exhaustive, truth)}
    run.write_csv("atp", [{"layer": l, "head": h, "atp": float(est[l, h]),
                           "graddrop": float(gd[l, h]) if gd is not None else "",
                           "knockout": ko_change.get((l, h), "")} for l in range(L) for h in range(H)])

    joint = primary["joint"]
    metrics = {
        "n_requests": int(len(gold)), "n_orders": len(parts), "n_tools": len(names), "n_heads": L * H,
        "keys": cfg["keys"][0], "scopes": scopes,
        "clean_accuracy": accuracy(clean.argmax(1) == gold),
        "clean_margin": bootstrap_ci(margin(torch.as_tensor(clean), torch.as_tensor(gold)).numpy(),
                                     n_resamples=n_boot, seed=seed),
        **{k: primary[k] for k in ("top_heads", "essential_heads", "n_essential", "max_head_drop", "random_singles",
                                   "joint_empirical_p", "joint_beyond_random", "joint_margin_empirical_p")},
        "drop_threshold": cfg["drop_threshold"], "alpha": alpha,
        "top10_joint_drop": joint["drop"], "joint": joint,
        "random10_drop_p95": primary["random_sets"]["drop_p95"], "random10_drops": primary["random_sets"]["drops"],
        "random10_margin_changes": primary["random_sets"]["margin_changes"],
        "by_keys": by_keys,
        "variants": {k: v["joint"] for k, v in by_keys.items() if k != cfg["keys"][0]},
        "replacement_keys": rep_keys, "replacements": replacements,
        "default_behaviour": replacements["joint"]["verdict"],
        "semantic_excess": replacements["joint"]["semantic"]["excess"],
        "positional_excess": replacements["joint"]["positional"]["excess"],
        "similar_k": cfg["similar_k"],
        "atp": atp_cmp, "atp_spearman": atp_cmp["spearman"], "atp_top20_overlap": atp_cmp["top20_overlap"],
        "atp_top_heads": [head_name(int(i // H), int(i % H)) for i in np.argsort(-np.abs(est).reshape(-1))[:10]],
        "atp_top_values": [float(est.reshape(-1)[i]) for i in np.argsort(-np.abs(est).reshape(-1))[:10]],
        "full_prompt_agrees": bool(ex["full_prompt_max_abs_diff"] < 1e-2),
        "n_conditions": len(conditions), "n_exhaustive": len(exhaustive),
    }
    figures(run, by_keys, cfg["keys"], atp_vals, gd_vals, truth, exhaustive, replacements, cfg)
    run.result(metrics)
    for k, v in by_keys.items():
        best = v.get("max_head_drop")
        print(f"[head_knockout] {run.model} @{k}: max single-head drop "
              f"{best['value'] if best else 'n/a'} ({best['head'] if best else ''}); joint drop "
              f"{v['joint']['drop']['value']:+.2f}, margin {v['joint']['margin_change']['value']:+.3f}; "
              f"essential: {v['essential_heads'] or 'none'}")
    print(f"[head_knockout] {run.model}: clean accuracy {metrics['clean_accuracy']['value']:.2f} on {len(gold)} "
          f"requests; AtP rho {atp_cmp['spearman']}")


# --- figures ---------------------------------------------------------------------------------------

def figures(run: Run, by_keys, keys, atp_vals, gd_vals, truth, exhaustive, replacements, cfg) -> None:
    model = run.model
    fig, axes = plt.subplots(len(keys), 3, figsize=(14, 3.8 * len(keys)), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 3, 1.4]})
    for row, k in enumerate(keys):
        v = by_keys[k]
        heads = v["top_heads"]
        x = np.arange(len(heads))
        for ax, key, label, rand in ((axes[row, 0], "drop", "accuracy drop", v["random_singles"]["drops"]),
                                     (axes[row, 1], "margin_change", "margin change (nats)",
                                      v["random_singles"]["margin_changes"])):
            val = np.array([h[key]["value"] for h in heads])
            err = np.array([[h[key]["value"] - h[key]["lo"], h[key]["hi"] - h[key]["value"]] for h in heads]).T
            ax.errorbar(x, val, yerr=err, fmt="o", c="tab:red", label="top head (95% interval)")
            jit = np.random.default_rng(0).uniform(-0.3, 0.3, len(rand))
            ax.scatter(len(heads) + 0.5 + jit, rand, s=10, c="grey", label="random single heads")
            ax.axhline(0, c="black", lw=0.5)
            if key == "drop":
                ax.axhline(cfg["drop_threshold"], c="tab:red", ls=":", lw=0.8, label="essential threshold")
            ax.set_xticks(list(x) + [len(heads) + 0.5], [h["head"] for h in heads] + ["random"], rotation=60,
                          fontsize=7)
            ax.set_ylabel(f"{label}\n(knockout at {SCOPE_NAMES.get(k, k)})", fontsize=8)
        axes[row, 0].legend(fontsize=7)
        ax = axes[row, 2]
        ax.hist(v["random_sets"]["margin_changes"], bins=10, color="grey", orientation="horizontal",
                label="random sets")
        ax.axhline(v["joint"]["margin_change"]["value"], c="tab:red", label="top heads together")
        ax.set_ylabel("margin change (nats)")
        ax.set_xlabel("random sets")
        ax.legend(fontsize=7)
    fig.tight_layout()
    run.save_figure("knockout_effects", fig, f"Knockout of the Phase 1 top heads on confirmation requests ({model}), "
                    f"one row per knockout scope. Left and middle: each head alone (accuracy drop with its Newcombe "
                    f"interval; change of the gold-vs-runner-up margin with a bootstrap interval) beside random single "
                    f"heads of the same layers. Right: margin change with all top heads knocked out together (red) "
                    f"against random head sets of the same size and layers (grey).")
    plt.close(fig)

    fig, axes = plt.subplots(1, 2 if gd_vals is not None else 1, figsize=(10 if gd_vals is not None else 5, 4),
                             squeeze=False)
    layer = np.array([l for l, _ in exhaustive])
    sc = axes[0, 0].scatter(truth, atp_vals, c=layer, cmap="viridis", s=12)
    lim = [min(truth.min(), atp_vals.min()), max(truth.max(), atp_vals.max())]
    axes[0, 0].plot(lim, lim, c="grey", ls="--", lw=0.6)
    axes[0, 0].set_xlabel("knockout: margin change")
    axes[0, 0].set_ylabel("AtP estimate")
    if gd_vals is not None:
        axes[0, 1].scatter(np.abs(truth), gd_vals, c=layer, cmap="viridis", s=12)
        axes[0, 1].set_xlabel("knockout: |margin change|")
        axes[0, 1].set_ylabel("AtP* GradDrop estimate")
    fig.colorbar(sc, ax=axes[0, -1], label="layer")
    fig.tight_layout()
    run.save_figure("atp_vs_knockout", fig, f"Attribution patching against exhaustive knockout of single heads "
                    f"({model}; mean change of the margin over the same requests). Dashed: equality.")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.2))
    groups = [g for g in ("joint", "singles", "random") if replacements[g]["n"]]
    for i, g in enumerate(groups):
        r = replacements[g]
        for j, kind in enumerate(("positional", "semantic")):
            v = r[kind]
            ax.bar(i * 3 + j, v["value"], yerr=[[v["value"] - v["lo"]], [v["hi"] - v["value"]]],
                   color=("tab:blue", "tab:orange")[j], label=kind if i == 0 else None)
            ax.plot([i * 3 + j - 0.4, i * 3 + j + 0.4], [v["chance"]] * 2, c="black", lw=1.5,
                    label="chance" if i == 0 and j == 0 else None)
    ax.set_xticks([i * 3 + 0.5 for i in range(len(groups))], [f"{g} (n={replacements[g]['n']})" for g in groups])
    ax.set_ylabel("share of replacements")
    if groups:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no knockout turned a correct choice wrong", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    run.save_figure("replacements", fig, f"What the model picks instead when a knockout turns a correct choice "
                    f"wrong ({model}): share of replacements listed first or last (positional) and among the gold "
                    f"tool's {cfg['similar_k']} nearest neighbours by the model's own tool representations "
                    f"(semantic), with Wilson intervals; black bars: chance.")
    plt.close(fig)


if __name__ == "__main__":
    from toolattn.errors import analysis_main

    analysis_main(run, __doc__, "qwen2.5-coder-1.5b")
