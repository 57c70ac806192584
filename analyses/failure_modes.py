"""Failure modes (Phase 4): when the model picks the wrong tool, is it the position, the meaning, or
something else?

Failures: every tool request whose forced choice is not its gold tool, in the baseline (the core
tools in catalog order) and in the scaling runs (``scaling``: random lists of 2 to 50 tools).

1. Position shuffle. Each failure is run again under ``n_shuffles`` other seeded orders of the same
   list (the failures of one list share them, so one new prefix per order). In a shuffle the tool
   that was picked moves and another tool takes its position (shuffles that leave it in place are
   not counted). A failure *follows the position* when, in at least half of its counted shuffles,
   the model picks whatever tool sits at the originally picked position; it *follows the tool* when
   it keeps picking the same wrong tool wherever it goes.
2. Semantic confusion. Tool similarity is the model's own (``toolattn.similarity``: standardised
   mean hidden states of "name: description"). A failure is *semantic* when the picked tool is one
   of the gold tool's ``similar_k`` nearest neighbours in the catalog; its chance rate is the share
   of the list's wrong tools that are. Also, the picked tool's similarity rank among the list's
   wrong tools (0 = most similar to the gold, 1 = least), against 0.5 for a random wrong tool.
3. Breakdown, the rule: *positional* if the failure follows the position (shuffled failures only);
   else *semantic* if the picked tool is a near neighbour of the gold; else *other*. Shares with
   Wilson intervals, per source (baseline or tool count).
4. Looking vs picking, at Phase 1's top heads (mean share of the decision position's attention over
   the listed tools, from ``scaling``): how often the gold tool is the most attended tool on
   failures and on successes, and the attention on the gold and on the picked tool on failures.

Over all scaling requests: the picked position's distribution (primacy / recency) against the gold
positions, as the share of failures whose picked tool is listed first or last against chance.
"""

from __future__ import annotations

import csv

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats as sps  # noqa: E402

from toolattn import paths  # noqa: E402
from toolattn.artifacts import Run, load_profile, sha256_file  # noqa: E402
from toolattn.datasets import load_prompts  # noqa: E402
from toolattn.models import load_model  # noqa: E402
from toolattn.scoring import ToolChoiceEngine  # noqa: E402
from toolattn.similarity import tool_similarity  # noqa: E402
from toolattn.stats import bootstrap_ci, empty, proportion  # noqa: E402
from toolattn.tools import core_tools, load_catalog  # noqa: E402

UPSTREAM = ("scaling", "baseline")
KINDS = ("positional", "semantic", "other")


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run(profile: str, model: str, prof: dict | None = None) -> None:
    """``prof``: the profile's settings (default: ``profiles.toml``), e.g. a tiny one in tests."""
    prof = prof or load_profile(profile)
    cfg = dict(prof["failure_modes"], batch_size=prof["batch_size"], seed=prof["seed"])
    dirs = {u: paths.artifact_dir(profile, model, u) for u in UPSTREAM}
    for u, d in dirs.items():
        if not (d / "manifest.json").exists():
            raise FileNotFoundError(f"no finished {u} artifact at {d}; run `make {profile}` (or the {u} analysis) first")
    scaled = read_csv(dirs["scaling"] / "requests.csv")
    lists = {r["list"]: r["tools"].split() for r in read_csv(dirs["scaling"] / "lists.csv")}
    attention = read_csv(dirs["scaling"] / "failure_attention.csv")
    base_list = [t.name for t in core_tools()]
    lists["baseline"] = base_list
    failures = [{"source": "baseline", "list": "baseline", "id": r["id"], "gold": r["gold"], "chosen": r["forced"],
                 "chosen_position": base_list.index(r["forced"])}
                for r in read_csv(dirs["baseline"] / "requests.csv") if r["gold"] and r["forced"] != r["gold"]]
    failures += [{"source": r["count"], "list": r["list"], "id": r["id"], "gold": r["gold"], "chosen": r["chosen"],
                  "chosen_position": int(r["chosen_position"])} for r in scaled if r["correct"] == "False"]
    catalog = load_catalog()
    by_name = {t.name: t for t in catalog}
    prompts = {p.id: p for p in load_prompts()}
    lm = load_model(model, profile=profile)
    engine = ToolChoiceEngine(lm, batch_size=cfg["batch_size"])
    inputs = {"data/prompts.json": sha256_file(paths.PROMPTS_FILE), "data/tools.json": sha256_file(paths.TOOLS_FILE),
              **{f"{u}/{f}": sha256_file(dirs[u] / f) for u, fs in
                 (("scaling", ("requests.csv", "lists.csv", "failure_attention.csv")), ("baseline", ("requests.csv",)))
                 for f in fs}, **lm.files}
    with Run(profile, model, "failure_modes", cfg, inputs, seed=cfg["seed"]) as run:
        shuffled = [n for n in dict.fromkeys(f["list"] for f in failures)
                    if len(lists[n]) in cfg["shuffle_counts"] or n == "baseline"]

        def compute(name):
            tools = lists[name]
            mine = [f for f in failures if f["list"] == name]
            rng = np.random.default_rng([cfg["seed"], 41, *map(ord, name)])
            out = []
            for s in range(cfg["n_shuffles"]):
                order = [tools[i] for i in rng.permutation(len(tools))]
                choices = engine.choose([prompts[f["id"]].text for f in mine], [by_name[n] for n in order],
                                        [f["gold"] for f in mine], desc=f"{model} {name} shuffle {s}")
                out.append({"order": order, "chosen": [c.choice for c in choices]})
            return out

        chunks = run.chunks(shuffled, compute)
        if chunks is None:
            return  # a helper process: its chunks are written
        shuffles = dict(zip(shuffled, chunks))
        sim = np.array(run.chunk("similarity", lambda: tool_similarity(lm, catalog).tolist()))
        summarise(run, cfg, failures, lists, shuffles, sim, [t.name for t in catalog], scaled, attention)


# --- classification -------------------------------------------------------------------------------

def follow(f: dict, i: int, shuffles: list[dict]) -> dict:
    """Over the shuffles of a failure's list (``i``: the failure's row in them): the share in which the model
    picks the tool at the originally picked position (counting shuffles that moved the picked tool away),
    keeps the same wrong tool, or picks the gold."""
    pos, chosen = f["chosen_position"], f["chosen"]
    moved = at_pos = same = gold = 0
    for s in shuffles:
        c = s["chosen"][i]
        same += c == chosen
        gold += c == f["gold"]
        if s["order"][pos] != chosen:
            moved += 1
            at_pos += c == s["order"][pos]
    n = len(shuffles)
    return {"moved": moved, "position_share": at_pos / moved if moved else None, "tool_share": same / n,
            "fixed_share": gold / n}


def classify(f: dict, sim: np.ndarray, names: list[str], tools: list[str], k: int) -> dict:
    """Positional / semantic / other (the rule of the module docstring) with the chance rate of semantic."""
    g = names.index(f["gold"])
    near = [names[j] for j in np.argsort(-sim[g], kind="stable") if j != g][:k]
    wrong = [t for t in tools if t != f["gold"]]
    by_sim = sorted(wrong, key=lambda t: -sim[g, names.index(t)])
    rank = by_sim.index(f["chosen"]) / max(1, len(wrong) - 1)  # 0 = most similar wrong tool of the list
    positional = f.get("position_share") is not None and f["position_share"] >= 0.5
    semantic = f["chosen"] in near
    return {"near_neighbour": semantic, "semantic_chance": sum(t in near for t in wrong) / len(wrong),
            "similarity_rank": rank, "similarity": float(sim[g, names.index(f["chosen"])]),
            "kind": "positional" if positional else "semantic" if semantic else "other"}


def breakdown(rows: list[dict]) -> dict:
    return {k: proportion([r["kind"] == k for r in rows]) for k in KINDS} | {"n": len(rows)}


def excess(rate: dict, chance: float | None) -> dict:
    """A rate's Wilson interval shifted by its chance rate (above chance when ``lo > 0``)."""
    if not rate["n"] or chance is None:
        return empty()
    return {"value": rate["value"] - chance, "lo": rate["lo"] - chance, "hi": rate["hi"] - chance, "n": rate["n"]}


# --- the summary ----------------------------------------------------------------------------------------

def summarise(run: Run, cfg, failures, lists, shuffles, sim, names, scaled, attention) -> None:
    rows = []
    for f in failures:
        tools = lists[f["list"]]
        r = dict(f, count=len(tools), shuffled=f["list"] in shuffles)
        if r["shuffled"]:
            mine = [x for x in failures if x["list"] == f["list"]]
            r.update(follow(f, mine.index(f), shuffles[f["list"]]))
        else:
            r.update({"moved": 0, "position_share": None, "tool_share": None, "fixed_share": None})
        r.update(classify(r, sim, names, tools, cfg["similar_k"]))
        rows.append(r)
    run.write_csv("failures", rows)
    sources = list(dict.fromkeys(r["source"] for r in rows))
    by_source = {s: breakdown([r for r in rows if r["source"] == s]) for s in sources}
    sh = [r for r in rows if r["shuffled"]]
    # semantic beyond chance: exact binomial on the pooled failures (chance = mean per-failure rate)
    n_sem = sum(r["near_neighbour"] for r in rows)
    chance = float(np.mean([r["semantic_chance"] for r in rows])) if rows else None
    sem_p = float(sps.binomtest(n_sem, len(rows), min(max(chance, 1e-9), 1 - 1e-9), alternative="greater").pvalue) \
        if rows else None
    ranks = [r["similarity_rank"] for r in rows if r["count"] > 2]
    rank_p = float(sps.binomtest(sum(x < 0.5 for x in ranks), sum(x != 0.5 for x in ranks), 0.5,
                                 alternative="greater").pvalue) if any(x != 0.5 for x in ranks) else None
    # primacy / recency over the scaling failures: picked tool listed first or last, against chance 2/k
    fails = [r for r in scaled if r["correct"] == "False"]
    edge = [int(r["chosen_position"]) in (0, int(r["count"]) - 1) for r in fails]
    edge_chance = float(np.mean([min(1.0, 2 / (int(r["count"]) - 1)) for r in fails])) if fails else None
    # looking vs picking
    ok = [r for r in scaled if r["correct"] == "True"]
    look = {"gold_most_attended_on_failures": proportion([r["most_attended"] == r["gold"] for r in fails]),
            "gold_most_attended_on_successes": proportion([r["most_attended"] == r["gold"] for r in ok]),
            "chosen_most_attended_on_failures": proportion([r["most_attended"] == r["chosen"] for r in fails]),
            "share_gold_on_failures": bootstrap_ci([float(r["top_share_gold"]) for r in fails],
                                                   n_resamples=cfg["n_bootstrap"], seed=cfg["seed"]) if fails else empty(),
            "share_chosen_on_failures": bootstrap_ci([float(r["top_share_chosen"]) for r in fails],
                                                     n_resamples=cfg["n_bootstrap"], seed=cfg["seed"]) if fails else empty()}
    metrics = {
        "n_failures": len(rows), "n_shuffled": len(sh), "n_shuffles": cfg["n_shuffles"],
        "shuffle_counts": cfg["shuffle_counts"],
        "rule": "positional: in at least half of the shuffles that move the picked tool away, the model picks the "
                "tool now at the picked position; else semantic: the picked tool is one of the gold tool's "
                f"{cfg['similar_k']} nearest neighbours by the model's own tool similarity; else other",
        "breakdown": breakdown(rows), "breakdown_shuffled": breakdown(sh), "breakdown_by_source": by_source,
        "follows_tool": proportion([r["tool_share"] >= 0.5 for r in sh]),
        "fixed_by_shuffle": bootstrap_ci([r["fixed_share"] for r in sh], n_resamples=cfg["n_bootstrap"],
                                         seed=cfg["seed"]) if sh else empty(),
        "semantic": {"share": proportion([r["near_neighbour"] for r in rows]), "chance": chance, "p": sem_p,
                     "excess": excess(proportion([r["near_neighbour"] for r in rows]), chance)},
        "similarity_rank": {**(bootstrap_ci(ranks, n_resamples=cfg["n_bootstrap"], seed=cfg["seed"]) if ranks
                               else empty()), "p_more_similar_than_median": rank_p},
        "picked_first_or_last": {**proportion(edge), "chance": edge_chance, "excess": excess(proportion(edge), edge_chance),
                                 "p": float(sps.binomtest(sum(edge), len(edge), edge_chance, alternative="greater").pvalue)
                                 if edge else None},
        **look,
    }
    run.result(metrics)
    figures(run, rows, by_source, attention, scaled)


def figures(run: Run, rows, by_source, attention, scaled) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.4))
    src = [s for s in by_source if by_source[s]["n"]]
    bottom = np.zeros(len(src))
    for k, colour in zip(KINDS, ("tab:blue", "tab:orange", "tab:grey")):
        v = np.array([by_source[s][k]["value"] for s in src])
        ax.bar(range(len(src)), v, bottom=bottom, color=colour, label=k)
        bottom += v
    ax.set_xticks(range(len(src)), [s if s == "baseline" else f"{s} tools" for s in src])
    for i, s in enumerate(src):
        ax.text(i, 1.01, f"n={by_source[s]['n']}", ha="center", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("share of failures")
    ax.legend(fontsize=8)
    fig.tight_layout()
    run.save_figure("breakdown", fig, "Failures by kind (positional, semantic, other; the rule in the text) for the "
                    "baseline and each tool count of the scaling runs.")
    plt.close(fig)

    ids = list(dict.fromkeys((a["list"], a["id"]) for a in attention))[:8]
    if ids:
        width = max(int(a["count"]) for a in attention if (a["list"], a["id"]) in ids)
        grid = np.full((len(ids), width), np.nan)
        gold_chosen = {(r["list"], r["id"]): r for r in scaled}
        for a in attention:
            if (a["list"], a["id"]) in ids:
                grid[ids.index((a["list"], a["id"])), int(a["position"])] = float(a["share"])
        fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * len(ids)))
        im = ax.imshow(grid, aspect="auto", cmap="viridis")
        for i, key in enumerate(ids):
            r = gold_chosen[key]
            ax.plot(int(r["gold_position"]), i, "w*", ms=9)
            ax.plot(int(r["chosen_position"]), i, "rx", ms=8)
        ax.set_yticks(range(len(ids)), [f"{gold_chosen[k]['gold']} -> {gold_chosen[k]['chosen']} ({gold_chosen[k]['count']})"
                                        for k in ids], fontsize=7)
        ax.set_xlabel("list position")
        fig.colorbar(im, ax=ax, label="attention share (top heads)")
        fig.tight_layout()
        run.save_figure("failure_heatmaps", fig, "Real failures of the scaling runs: the top heads' mean attention share "
                        "on each listed tool (white star: gold tool; red cross: picked tool; label: gold -> picked "
                        "(tools in the list)).")
        plt.close(fig)


if __name__ == "__main__":
    from toolattn.errors import analysis_main

    analysis_main(run, __doc__, "qwen2.5-coder-1.5b")
