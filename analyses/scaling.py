"""Scaling (Phase 3): how tool selection changes from 2 to 50 tools in the list.

Design. For each tool count k (``counts``), tool lists are uniform random k-subsets of the 50-tool
catalog in random order (seeded per count). A list serves the requests whose gold tool it contains:
up to ``per_gold`` requests of each such core tool, until the count has ``n_requests``. Given that a
list contains a request's gold, the other k - 1 tools are a uniform draw from the rest of the
catalog and the gold's list position is uniform, so every request sees "its gold plus random
distractors at a random position"; sharing a list between the requests of its core tools is what
lets a 50-tool prefix (thousands of tokens) be computed once per list. Requests come from the
held-out split, never from Phase 1's selection half (which chose the top heads).

Per request: the forced choice over every tool of the list (``ToolChoiceEngine.choose``: the
candidates that cannot win are bounded by their first-token log-probability and not scored in
full; the result equals scoring them all), the margin (gold minus best other), and the attention of
the decision position over the tools at every head (name + description tokens; shares renormalised
over the tools of the list).

Per count: accuracy (Wilson) and accuracy by the gold's list position; attention entropy over the
tools (bits; also divided by log2 k) at Phase 1's top heads and averaged over all heads, bootstrap
intervals over requests; every head's correlation between its share on a tool and that tool being
chosen (Phase 1's statistic), compared between counts by Spearman correlation and top-10 overlap;
and, at ``knockout_counts``, the joint knockout of Phase 1's top heads (description keys, every
query after the tool block) against ``n_random_sets`` random sets of as many heads from the same
layers: accuracy drop (paired, exact McNemar), margin change, and the share of random sets with at
least the joint set's margin loss. Prompt length; wall time per request and the run's peak memory go to
the manifest's timings.
"""

from __future__ import annotations

import csv
import resource
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import stats as sps  # noqa: E402

from analyses.head_knockout import effect, make_conditions  # noqa: E402
from analyses.retrieval_heads import decode, encode, pearson  # noqa: E402
from toolattn import paths  # noqa: E402
from toolattn.artifacts import Run, load_profile, load_result, sha256_file  # noqa: E402
from toolattn.attention import capture_attention, decision_rows  # noqa: E402
from toolattn.datasets import load_prompts  # noqa: E402
from toolattn.knockout import HeadKnockout, certified, margin  # noqa: E402
from toolattn.models import load_model  # noqa: E402
from toolattn.scoring import ToolChoiceEngine  # noqa: E402
from toolattn.selector import tool_shares  # noqa: E402
from toolattn.stats import accuracy, bootstrap_ci, empty, independent_difference  # noqa: E402
from toolattn.tools import CORE_NAMES, load_catalog  # noqa: E402

UPSTREAM = "retrieval_heads"
POSITION_BINS = ("first", "early", "middle", "late", "last")


def run(profile: str, model: str, prof: dict | None = None) -> None:
    """``prof``: the profile's settings (default: ``profiles.toml``), e.g. a tiny one in tests."""
    prof = prof or load_profile(profile)
    cfg = dict(prof["scaling"], batch_size=prof["batch_size"], seed=prof["seed"])
    up = load_result(profile, model, UPSTREAM)["metrics"]
    L, H = up["n_layers"], up["n_heads_per_layer"]
    top = [(h["layer"], h["head"]) for h in up["top_heads"]][: cfg["top"]]
    up_dir = paths.artifact_dir(profile, model, UPSTREAM)
    with open(up_dir / "requests.csv", newline="") as f:
        selection = {r["id"] for r in csv.DictReader(f) if r["half"] == "selection"}
    catalog = load_catalog()
    by_name = {t.name: t for t in catalog}
    prompts = {p.id: p for p in load_prompts()}
    pool = {g: [p for p in prompts.values() if p.tool == g and p.split == cfg["split"] and p.id not in selection]
            for g in CORE_NAMES}
    lists = design([t.name for t in catalog], pool, cfg)
    ko_ids = knockout_subset(lists, cfg)
    conditions = [c for c in make_conditions(top, L, H, dict(cfg, n_random_singles=0, keys=["desc"], variants=[]))
                  if c["kind"] in ("joint", "random_set")] if top else []
    lm = load_model(model, profile=profile)
    engine = ToolChoiceEngine(lm, batch_size=cfg["batch_size"])
    inputs = {"data/prompts.json": sha256_file(paths.PROMPTS_FILE), "data/tools.json": sha256_file(paths.TOOLS_FILE),
              f"{UPSTREAM}/result.json": sha256_file(up_dir / "result.json"),
              f"{UPSTREAM}/requests.csv": sha256_file(up_dir / "requests.csv"), **lm.files}
    with Run(profile, model, "scaling", cfg, inputs, seed=cfg["seed"]) as run:

        def compute(name):
            spec = lists[name]
            tools = [by_name[n] for n in spec["tools"]]
            texts = [prompts[i].text for i in spec["requests"]]
            gold = [prompts[i].tool for i in spec["requests"]]
            t0 = time.time()
            sample = engine.formatter.format(texts[0], tools)
            engine.batch_size = rows_for(len(sample.input_ids), cfg["batch_size"], cfg)
            with capture_attention(lm.model) as cap:
                choices = engine.choose(texts, tools, gold, desc=f"{model} {name}",
                                        forward_kwargs=cap.kwargs_for(decision_rows))
            shares = tool_shares(cap.weights, sample)  # [n, tools, L * H]
            out = {"seconds": time.time() - t0, "prompt_tokens": len(sample.input_ids), "fallbacks": engine.fallbacks,
                   "chosen": [c.choice for c in choices],
                   "margin": [c.logprobs[g] - max(v for n, v in c.logprobs.items() if n != g)
                              for c, g in zip(choices, gold)],
                   "shares": encode(shares)}
            sub = [j for j, i in enumerate(spec["requests"]) if i in ko_ids]
            if spec["count"] in cfg["knockout_counts"] and conditions and sub:
                t1 = time.time()
                out.update(knockout(lm, tools, [texts[j] for j in sub], [gold[j] for j in sub],
                                    [choices[j] for j in sub], conditions, engine, cfg))
                out["knockout_rows"] = sub
                out["knockout_seconds"] = time.time() - t1
            out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            return out

        names = list(lists)
        chunks = run.chunks(names, compute)
        if chunks is None:
            return  # a helper process: its chunks are written
        done = dict(zip(names, chunks))
        run.timing("scoring_s", sum(d["seconds"] for d in done.values()))
        run.timing("knockout_s", sum(d.get("knockout_seconds", 0.0) for d in done.values()))
        for k in cfg["counts"]:  # wall clock and memory go to the manifest, never into result.json
            mine = [d for n, d in done.items() if lists[n]["count"] == k]
            if mine:
                run.timing(f"seconds_per_request_{k}", sum(d["seconds"] for d in mine) / sum(len(d["chosen"]) for d in mine))
        run.timing("peak_rss_gb", max(d["peak_rss_gb"] for d in done.values()))
        summarise(run, cfg, lists, done, prompts, top, conditions, L, H)


# --- design ------------------------------------------------------------------------------------

def design(catalog: list[str], pool: dict, cfg: dict) -> dict:
    """The tool lists of every count: ``{name: {"count", "tools" [names in list order], "requests" [ids]}}``.

    Lists are uniform random k-subsets of ``catalog`` in random order (seeded by count); each list takes
    up to ``per_gold`` not yet used requests (seeded order) of each core tool it contains, until the
    count has ``n_requests``. Lists that contain no core tool with requests left are skipped (no cost).
    """
    out = {}
    for k in cfg["counts"]:
        rng = np.random.default_rng([cfg["seed"], 31, k])
        left = {g: [p.id for p in rng.permutation(np.array(pool[g], dtype=object))] for g in sorted(pool)}
        n, j = 0, 0
        for _ in range(100000):
            if n >= cfg["n_requests"] or not any(left.values()):
                break
            tools = [catalog[i] for i in rng.permutation(len(catalog))[:k]]
            ids = []
            for g in [tools[i] for i in rng.permutation(k)]:  # golds in random order: none is favoured by position
                take = min(cfg["per_gold"], len(left.get(g, [])), cfg["n_requests"] - n - len(ids))
                ids += left[g][:take] if take > 0 else []
                if take > 0:
                    left[g] = left[g][take:]
            if ids:
                out[f"n{k:02d}-list{j:02d}"] = {"count": k, "tools": tools, "requests": ids}
                n, j = n + len(ids), j + 1
    return out


def knockout_subset(lists: dict, cfg: dict) -> set:
    """The requests of each knockout count that the knockout runs on: ``knockout_requests`` of them drawn at
    random (seeded per count) from all its lists; 0 = every request."""
    out = set()
    for k in cfg["knockout_counts"]:
        ids = [i for s in lists.values() if s["count"] == k for i in s["requests"]]
        n = cfg.get("knockout_requests") or len(ids)
        rng = np.random.default_rng([cfg["seed"], 33, k])
        out |= {ids[j] for j in rng.permutation(len(ids))[:n]}
    return out


def rows_for(prompt_tokens: int, rows: int, cfg: dict) -> int:
    """Rows per forward pass on a list whose prompts have ``prompt_tokens`` tokens: at most ``rows`` and at
    most ``row_tokens`` prompt tokens in all (each row's attention logits over the prompt, heads x queries x
    prompt tokens in float32 while a layer runs, grow with rows x prompt length)."""
    return max(1, min(rows, cfg["row_tokens"] // max(1, prompt_tokens)))


def position_bin(position: int, k: int) -> str:
    """``first`` / ``last`` of the list, else the early, middle or late third of the positions between."""
    if position == 0:
        return "first"
    if position == k - 1:
        return "last"
    return POSITION_BINS[1 + min(2, 3 * (position - 1) // max(1, k - 2))]


# --- attention on the tools ------------------------------------------------------------------------

def top_share(shares: np.ndarray, top_idx: list[int]) -> np.ndarray:
    """One request's shares ``[tools, L * H]`` averaged over the top heads (all heads if none) -> ``[tools]``."""
    return shares[:, top_idx].mean(1) if top_idx else shares.mean(1)


def entropy_bits(shares: np.ndarray) -> np.ndarray:
    """Entropy over tools (bits) of shares ``[requests, tools, heads]`` -> ``[requests, heads]``."""
    return -(shares * np.log2(np.clip(shares, 1e-12, None))).sum(1)


# --- knockout ----------------------------------------------------------------------------------------

def knockout(lm, tools, texts, gold, choices, conditions, engine, cfg) -> dict:
    """The joint top-head knockout and the random sets on one list; only the candidates that the clean
    run scored in full are scored in full again, and a request whose choice or runner-up is then not
    certified under some condition is run again with every candidate."""
    only = [set(c.logprobs) for c in choices]
    heads = torch.stack([c["heads"] for c in conditions])
    n_tok = len(engine._prefix) + 64
    batch, rows = engine.batch_size, rows_for(n_tok, cfg["max_rows"], cfg)
    ko = HeadKnockout(lm, tools, texts, gold, batch_size=batch, max_rows=rows, only=only,
                      prefix_kv=engine._prefix.kv)
    scores = ko.run(heads)  # [C, n, N]
    ok = certified(torch.cat([ko.clean_scores[None], scores]), ko.exact).all(0)
    redo = (~ok).nonzero()[:, 0].tolist()
    clean = ko.clean_scores.clone()
    if redo:
        full = HeadKnockout(lm, tools, [texts[i] for i in redo], [gold[i] for i in redo],
                            batch_size=batch, max_rows=rows, share=ko)
        clean[redo], scores[:, redo] = full.clean_scores, full.run(heads)
    return {"clean": encode(clean.numpy()), "knocked": encode(scores.numpy()), "knockout_fallbacks": len(redo)}


# --- the summary ------------------------------------------------------------------------------------

def summarise(run: Run, cfg, lists, done, prompts, top, conditions, L, H) -> None:
    counts = cfg["counts"]
    rows, shares, ent_all, ent_top, corr = [], {}, {}, {}, {}
    top_idx = [l * H + h for l, h in top]
    for name, spec in lists.items():
        d = done[name]
        k = spec["count"]
        sh = decode(d["shares"])  # [n, k, L * H]
        e = entropy_bits(sh)  # [n, L * H]
        shares.setdefault(k, []).append((name, spec, sh, d))
        ent_all.setdefault(k, []).append(e.mean(1))
        ent_top.setdefault(k, []).append(e[:, top_idx].mean(1) if top_idx else np.full(len(e), np.nan))
        for i, (rid, chosen, m) in enumerate(zip(spec["requests"], d["chosen"], d["margin"])):
            g = prompts[rid].tool
            gp, cp = spec["tools"].index(g), spec["tools"].index(chosen)
            top_mean = top_share(sh[i], top_idx)  # [k]
            rows.append({"count": k, "list": name, "id": rid, "gold": g, "chosen": chosen, "correct": g == chosen,
                         "gold_position": gp, "chosen_position": cp, "gold_bin": position_bin(gp, k),
                         "margin": float(m), "top_share_gold": float(top_mean[gp]),
                         "top_share_chosen": float(top_mean[cp]),
                         "most_attended": spec["tools"][int(top_mean.argmax())]})
    run.write_csv("requests", rows)
    run.write_csv("lists", [{"list": n, "count": s["count"], "tools": " ".join(s["tools"]),
                             "requests": len(s["requests"]), "prompt_tokens": done[n]["prompt_tokens"]}
                            for n, s in lists.items()])
    # Attention over every tool of each failure, at the top heads (the looking-vs-picking heat maps).
    att = []
    for k, parts in shares.items():
        for name, spec, sh, d in parts:
            for i, (rid, chosen) in enumerate(zip(spec["requests"], d["chosen"])):
                if chosen != prompts[rid].tool:
                    top_mean = top_share(sh[i], top_idx)
                    att += [{"count": k, "list": name, "id": rid, "position": p, "tool": t,
                             "share": float(top_mean[p])} for p, t in enumerate(spec["tools"])]
    run.write_csv("failure_attention", att)

    seed, nb = cfg["seed"], cfg["n_bootstrap"]
    per = {}
    for k in counts:
        r = [x for x in rows if x["count"] == k]
        if not r:
            continue
        # head scores: Phase 1's correlation, pooled over the lists of this count (each list's tools as columns)
        xs, ys = [], []
        for _, spec, sh, d in shares[k]:
            xs.append(sh)
            ys.append(np.eye(k)[[spec["tools"].index(c) for c in d["chosen"]]])
        corr[k] = np.mean([pearson(x, y) for x, y in zip(xs, ys)], 0) if len(xs) > 1 else pearson(xs[0], ys[0])
        ea, et = np.concatenate(ent_all[k]), np.concatenate(ent_top[k])
        per[str(k)] = {
            "n": len(r), "lists": sum(1 for s in lists.values() if s["count"] == k),
            "accuracy": accuracy([x["correct"] for x in r]),
            "accuracy_by_position": {b: accuracy([x["correct"] for x in r if x["gold_bin"] == b])
                                     for b in POSITION_BINS},
            "entropy_all_heads": bootstrap_ci(ea, n_resamples=nb, seed=seed),
            "entropy_top_heads": bootstrap_ci(et, n_resamples=nb, seed=seed) if top_idx else empty(),
            "entropy_max": float(np.log2(k)),
            "margin": bootstrap_ci([x["margin"] for x in r], n_resamples=nb, seed=seed),
            "prompt_tokens": float(np.mean([done[n]["prompt_tokens"] for n, s in lists.items() if s["count"] == k])),
            "fallbacks": sum(done[n]["fallbacks"] for n, s in lists.items() if s["count"] == k),
        }
        if top_idx:
            rank = np.argsort(np.argsort(-corr[k])) + 1
            per[str(k)]["top_heads_rank"] = [int(rank[j]) for j in top_idx]
        kd = [(spec, d) for _, spec, _, d in shares[k] if "knocked" in d]
        if kd:
            per[str(k)]["knockout"] = knockout_summary(kd, prompts, conditions, cfg)
    # head rankings between counts
    spear = []
    for a in counts:
        for b in counts:
            if a < b and a in corr and b in corr:
                rho = sps.spearmanr(corr[a], corr[b]).statistic
                ta, tb = set(np.argsort(-corr[a])[:10]), set(np.argsort(-corr[b])[:10])
                spear.append({"count_a": a, "count_b": b, "spearman": float(rho), "top10_overlap": len(ta & tb)})
    run.write_csv("head_rank_agreement", spear)
    run.write_csv("heads_by_count", [{"layer": j // H, "head": j % H, **{f"corr_{k}": float(corr[k][j]) for k in corr}}
                                     for j in range(L * H)])
    run.write_csv("counts", [{"count": int(k), "n": v["n"], "lists": v["lists"], "accuracy": v["accuracy"]["value"],
                              "accuracy_lo": v["accuracy"]["lo"], "accuracy_hi": v["accuracy"]["hi"],
                              "entropy_all_heads": v["entropy_all_heads"]["value"],
                              "entropy_top_heads": v["entropy_top_heads"]["value"], "entropy_max": v["entropy_max"],
                              "margin": v["margin"]["value"], "prompt_tokens": v["prompt_tokens"]} for k, v in per.items()])
    pair = next((s for s in spear if (s["count_a"], s["count_b"]) == (10, 50)), None)
    ko = {k: v["knockout"] for k, v in per.items() if "knockout" in v}
    lo_k, hi_k = min(per, key=int), max(per, key=int)
    metrics = {
        "counts": [int(k) for k in per],
        "accuracy_by_count": {k: v["accuracy"] for k, v in per.items()},
        # the smallest count's accuracy minus the largest's (independent requests: Newcombe, one-sided Fisher)
        "accuracy_drop": {"from": int(lo_k), "to": int(hi_k), **independent_difference(
            [x["correct"] for x in rows if str(x["count"]) == lo_k], [x["correct"] for x in rows if str(x["count"]) == hi_k])},
        "entropy_by_count": {k: v["entropy_all_heads"] for k, v in per.items()},
        "entropy_top_heads_by_count": {k: v["entropy_top_heads"] for k, v in per.items()},
        "head_rank_spearman_10_vs_50": pair["spearman"] if pair else None,
        "head_top10_overlap_10_vs_50": pair["top10_overlap"] if pair else None,
        "knockout_by_count": ko,
        "knockout_margin_loss_grows": growth(ko, cfg),
        "per_count": per,
        "top_heads": [{"layer": l, "head": h} for l, h in top],
        "fallbacks": sum(d["fallbacks"] + d.get("knockout_fallbacks", 0) for d in done.values()),
        "n_lists": len(lists),
    }
    run.result(metrics)
    figures(run, per, spear, counts)


def knockout_summary(kd, prompts, conditions, cfg) -> dict:
    """Joint top-head knockout against the random sets, over the lists of one count."""
    clean = [decode(d["clean"]) for _, d in kd]
    knocked = [decode(d["knocked"]) for _, d in kd]
    gold = [np.array([spec["tools"].index(prompts[spec["requests"][j]].tool) for j in d["knockout_rows"]])
            for spec, d in kd]
    loss = {}
    for c, cond in enumerate(conditions):
        ok0 = np.concatenate([cl.argmax(1) == g for cl, g in zip(clean, gold)])
        ok1 = np.concatenate([kn[c].argmax(1) == g for kn, g in zip(knocked, gold)])
        dm = np.concatenate([(margin(torch.as_tensor(kn[c]), torch.as_tensor(g))
                              - margin(torch.as_tensor(cl), torch.as_tensor(g))).numpy()
                             for cl, kn, g in zip(clean, knocked, gold)])
        loss[cond["name"]] = (ok0, ok1, dm)
    joint = next(c["name"] for c in conditions if c["kind"] == "joint")
    rand = [c["name"] for c in conditions if c["kind"] == "random_set"]
    ok0, ok1, dm = loss[joint]
    e = effect(np.eye(2)[ok0.astype(int)], np.eye(2)[ok1.astype(int)], np.ones(len(ok0), int), cfg["seed"],
               cfg["n_bootstrap"])
    e["margin_change"] = bootstrap_ci(dm, n_resamples=cfg["n_bootstrap"], seed=cfg["seed"])
    rmeans = np.array([loss[n][2].mean() for n in rand])
    rdrops = np.array([(loss[n][0].mean() - loss[n][1].mean()) for n in rand])
    out = {"joint": e, "clean_accuracy": accuracy(ok0), "n": int(len(ok0)), "random_margin_change_mean": float(rmeans.mean()) if len(rmeans) else None,
           "random_margin_change_p05": float(np.quantile(rmeans, 0.05)) if len(rmeans) else None,
           "random_drop_mean": float(rdrops.mean()) if len(rdrops) else None,
           "empirical_p_margin": float((1 + (rmeans <= dm.mean()).sum()) / (1 + len(rmeans))),
           "margin_change_beyond_random": float(dm.mean() - rmeans.mean()) if len(rmeans) else None,
           "margin_changes": dm.tolist(), "n_random_sets": len(rand)}
    return out


def growth(ko: dict, cfg) -> dict | None:
    """Does the joint knockout cost more margin at the largest knockout count than at the smallest? The
    difference of the mean margin changes beyond the random sets, with a bootstrap interval (the two counts
    have different requests, so each is resampled on its own)."""
    ks = sorted(ko, key=int)
    if len(ks) < 2:
        return None
    a, b = ko[ks[0]], ko[ks[-1]]
    xa, xb = np.array(a["margin_changes"]) - a["random_margin_change_mean"], \
        np.array(b["margin_changes"]) - b["random_margin_change_mean"]
    rng = np.random.default_rng([cfg["seed"], 32])
    boot = [rng.choice(xb, len(xb)).mean() - rng.choice(xa, len(xa)).mean() for _ in range(cfg["n_bootstrap"])]
    return {"from": int(ks[0]), "to": int(ks[-1]), "value": float(xb.mean() - xa.mean()),
            "lo": float(np.quantile(boot, 0.025)), "hi": float(np.quantile(boot, 0.975)), "n": len(xa) + len(xb)}


def figures(run: Run, per: dict, spear: list, counts: list) -> None:
    ks = [int(k) for k in per]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    acc = [per[str(k)]["accuracy"] for k in ks]
    axes[0].errorbar(ks, [a["value"] for a in acc], yerr=[[a["value"] - a["lo"] for a in acc],
                                                          [a["hi"] - a["value"] for a in acc]], marker="o", capsize=3)
    axes[0].set_xscale("log")
    axes[0].set_xticks(ks, [str(k) for k in ks])
    axes[0].set_xlabel("tools in the list")
    axes[0].set_ylabel("forced-choice accuracy")
    axes[0].set_ylim(0, 1.05)
    for key, label in (("entropy_all_heads", "all heads"), ("entropy_top_heads", "top heads")):
        e = [per[str(k)][key] for k in ks]
        if e[0]["value"] is None:
            continue
        axes[1].errorbar(ks, [x["value"] for x in e], yerr=[[x["value"] - x["lo"] for x in e],
                                                            [x["hi"] - x["value"] for x in e]],
                         marker="o", capsize=3, label=label)
    axes[1].plot(ks, [np.log2(k) for k in ks], ls=":", color="grey", label="uniform (log2 k)")
    axes[1].set_xscale("log")
    axes[1].set_xticks(ks, [str(k) for k in ks])
    axes[1].set_xlabel("tools in the list")
    axes[1].set_ylabel("attention entropy over tools (bits)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    run.save_figure("accuracy_entropy", fig, "Forced-choice accuracy (Wilson 95%) and the decision position's "
                    "attention entropy over the listed tools (bootstrap 95%) against the number of tools.")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for b in POSITION_BINS:
        pts = [(k, per[str(k)]["accuracy_by_position"][b]) for k in ks if per[str(k)]["accuracy_by_position"][b]["n"]]
        if pts:
            ax.plot([k for k, _ in pts], [a["value"] for _, a in pts], marker="o", label=b)
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("tools in the list")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    ax.legend(title="gold position", fontsize=8)
    fig.tight_layout()
    run.save_figure("accuracy_by_position", fig, "Accuracy by the gold tool's list position (first, early, middle "
                    "and late thirds of the positions between, last).")
    plt.close(fig)

    ko = [(k, per[str(k)]["knockout"]) for k in ks if "knockout" in per[str(k)]]
    if ko:
        fig, ax = plt.subplots(figsize=(5, 3.4))
        x = np.arange(len(ko))
        j = [v["joint"]["margin_change"] for _, v in ko]
        ax.errorbar(x - 0.1, [m["value"] for m in j], yerr=[[m["value"] - m["lo"] for m in j],
                                                             [m["hi"] - m["value"] for m in j]],
                    fmt="o", capsize=3, label="top heads (joint)")
        ax.plot(x + 0.1, [v["random_margin_change_mean"] for _, v in ko], "s", label="random sets (mean)")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(x, [str(k) for k, _ in ko])
        ax.set_xlabel("tools in the list")
        ax.set_ylabel("margin change (nats)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        run.save_figure("knockout_by_count", fig, "Margin change (gold minus best other) when Phase 1's top heads "
                        "are knocked out together, against random sets of heads from the same layers.")
        plt.close(fig)


if __name__ == "__main__":
    from toolattn.errors import analysis_main

    analysis_main(run, __doc__, "qwen2.5-coder-1.5b")
