"""Baseline: does the model pick the right tool, and does it know when no tool is needed?

Method. The 10 core tools are declared in the model's own format. For every request we read
(a) the forced choice -- the candidate tool name with the highest summed token log-probability
after the model's call prefix; (b) P(tool) -- the probability that the first reply token opens a
call; (c) the model's free greedy reply, parsed for the tool it calls. We report forced-choice
and generation accuracy on tool requests (per tool and overall, 95% Wilson intervals), their
agreement, tool / no-tool accuracy (the greedy first token opens a call -- P(tool) exceeds every
other first token; P(tool) > 0.5; and whether the free reply makes a call) with the AUC of P(tool), and the plan's requirement of > 90% forced-choice accuracy.

Thinking on (models with a thinking switch, Qwen3; profile key ``thinking_max_new_tokens``). The
default condition above has thinking off (the template's empty ``<think></think>`` block). In the
second condition the model first reasons: its greedy reasoning is generated up to ``</think>`` (or
the token budget, where ``</think>`` is added), and the decision is read after it: the forced choice
after the call prefix, P(tool) at the first token after ``</think>``. Reported beside the first
condition, with the agreement of the two forced choices.
"""

from __future__ import annotations

import collections
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from toolattn import paths  # noqa: E402
from toolattn.artifacts import Run, load_profile, sha256_file  # noqa: E402
from toolattn.datasets import load_prompts, select  # noqa: E402
from toolattn.models import load_model  # noqa: E402
from toolattn.parsing import opening, parse_call  # noqa: E402
from toolattn.scoring import ToolChoiceEngine  # noqa: E402
from toolattn.stats import accuracy, roc_auc  # noqa: E402
from toolattn.tools import core_tools  # noqa: E402

PLAN_THRESHOLD = 0.9
CHUNK = 32  # requests per resumable chunk


def run(profile: str, model: str, prof: dict | None = None) -> None:
    """``prof``: the profile's settings (default: ``profiles.toml``), e.g. a tiny one in tests."""
    prof = prof or load_profile(profile)
    cfg = dict(prof["baseline"], batch_size=prof["batch_size"], seed=prof["seed"])
    split = None if cfg["split"] == "all" else cfg["split"]
    requests = select(load_prompts(), split=split, n_per_tool=cfg["n_per_tool"], n_no_tool=cfg["n_no_tool"],
                      seed=cfg["seed"])
    tools = core_tools()
    lm = load_model(model, profile=profile)
    engine = ToolChoiceEngine(lm, batch_size=cfg["batch_size"])
    inputs = {"data/prompts.json": sha256_file(paths.PROMPTS_FILE), "data/tools.json": sha256_file(paths.TOOLS_FILE),
              **lm.files}
    with Run(profile, model, "baseline", cfg, inputs, seed=cfg["seed"]) as run:
        names = [f"chunk-{c0:04d}" for c0 in range(0, len(requests), CHUNK)]

        def compute(name):
            c0 = int(name.split("-")[1])
            part = requests[c0 : c0 + CHUNK]
            t0 = time.time()
            choices = engine.score([r.text for r in part], tools, desc=f"{model} scoring {c0}+")
            t1 = time.time()
            replies = engine.generate([r.text for r in part], tools, max_new_tokens=cfg["max_new_tokens"],
                                      desc=f"{model} generating {c0}+")
            return {"score_s": t1 - t0, "rows": [
                {"id": r.id, "category": r.category, "gold": r.tool or "", "forced": c.choice,
                 "p_tool": c.p_tool, "decides_tool": c.decides_tool, "gold_logprob": c.logprobs.get(r.tool, float("nan")) if r.tool else None,
                 "reply": reply, "opening": opening(reply), "generated": parse_call(reply).name or ""}
                for r, c, reply in zip(part, choices, replies)]}

        # chunks split between the processes of `accelerate launch` (all of them in one process)
        done_all = run.chunks(names, compute)
        rows = [row for done in done_all or [] for row in done["rows"]]
        t_score = sum(done["score_s"] for done in done_all or [])
        # --- thinking on: a second condition (Qwen3) ---------------------------------------------------
        conditions = {}
        if cfg.get("thinking_max_new_tokens") and lm.spec.family == "qwen3":
            conditions["thinking_on"] = thinking_condition(run, engine, requests, tools, cfg, rows)
        # --- end of thinking on -----------------------------------------------------------------------
        if done_all is None:
            return  # a helper process of `accelerate launch`: its chunks are written, the main one summarises
        summarise(run, rows, [t.name for t in tools], t_score, conditions)


def thinking_condition(run: Run, engine: ToolChoiceEngine, requests, tools, cfg: dict, off_rows: list[dict]) -> dict:
    """Thinking on: greedy reasoning (bounded), then forced choice and P(tool) read after ``</think>``."""
    def compute(name):
        c0 = int(name.split("-")[1])
        part = requests[c0 : c0 + CHUNK]
        texts = [r.text for r in part]
        thoughts = engine.think(texts, tools, cfg["thinking_max_new_tokens"], desc=f"thinking {c0}+")
        choices = engine.score(texts, tools, desc=f"scoring after thinking {c0}+", after=[t["after"] for t in thoughts])
        return [{"id": r.id, "gold": r.tool or "", "forced": c.choice, "p_tool": c.p_tool,
                 "decides_tool": c.decides_tool, "reasoning_tokens": t["tokens"], "closed": t["closed"],
                 "reasoning": t["after"]} for r, c, t in zip(part, choices, thoughts)]

    done_all = run.chunks([f"thinking-{c0:04d}" for c0 in range(0, len(requests), CHUNK)], compute)
    if done_all is None:
        return None  # a helper process
    rows = [row for done in done_all for row in done]
    run.write_csv("requests_thinking", rows)
    off = {r["id"]: r for r in off_rows}
    tool_rows = [r for r in rows if r["gold"]]
    needs = np.array([bool(r["gold"]) for r in rows])
    return {
        "forced_choice_accuracy": accuracy([r["forced"] == r["gold"] for r in tool_rows]),
        "tool_no_tool_accuracy": accuracy(np.array([r["decides_tool"] for r in rows]) == needs),
        "forced_agreement_with_thinking_off": accuracy([r["forced"] == off[r["id"]]["forced"] for r in tool_rows]),
        "decision_agreement_with_thinking_off": accuracy([r["decides_tool"] == off[r["id"]]["decides_tool"]
                                                          for r in rows]),
        "mean_reasoning_tokens": float(np.mean([r["reasoning_tokens"] for r in rows])),
        "reasoning_closed_share": float(np.mean([r["closed"] for r in rows])),
        "max_reasoning_tokens": cfg["thinking_max_new_tokens"],
    }


def summarise(run: Run, rows: list[dict], names: list[str], t_score: float, conditions: dict | None = None) -> None:
    tool_rows = [r for r in rows if r["gold"]]
    forced_ok = [r["forced"] == r["gold"] for r in tool_rows]
    gen_ok = [r["generated"] == r["gold"] for r in tool_rows]
    agree = [r["generated"] == r["forced"] for r in tool_rows]
    needs = np.array([bool(r["gold"]) for r in rows])
    p_tool = np.array([r["p_tool"] for r in rows])
    made_call = np.array([bool(r["generated"]) for r in rows])
    forced_acc = accuracy(forced_ok)

    per_tool = []
    for name in names:
        sub = [r for r in tool_rows if r["gold"] == name]
        fa = accuracy([r["forced"] == name for r in sub])
        ga = accuracy([r["generated"] == name for r in sub])
        per_tool.append({"tool": name, "n": len(sub), "forced_acc": fa["value"], "forced_lo": fa["lo"],
                         "forced_hi": fa["hi"], "gen_acc": ga["value"], "gen_lo": ga["lo"], "gen_hi": ga["hi"]})
    run.write_csv("per_tool", per_tool)
    run.write_csv("requests", rows)

    openings = {cls: dict(collections.Counter(r["opening"] for r in rows if bool(r["gold"]) == cls))
                for cls in (True, False)}
    metrics = {
        "forced_choice_accuracy": forced_acc,
        "generation_accuracy": accuracy(gen_ok),
        "forced_generation_agreement": accuracy(agree),
        "tool_no_tool_accuracy": accuracy(np.array([r["decides_tool"] for r in rows]) == needs),
        "tool_no_tool_accuracy_p05": accuracy((p_tool > 0.5) == needs),
        "generation_tool_no_tool_accuracy": accuracy(made_call == needs),
        "p_tool_auc": roc_auc(p_tool, needs) if 0 < needs.sum() < len(needs) else None,
        "mean_p_tool_tool": accuracy(p_tool[needs]),
        "mean_p_tool_no_tool": accuracy(p_tool[~needs]),
        "n_tools": len(names),
        "n_tool_requests": len(tool_rows),
        "n_no_tool_requests": int((~needs).sum()),
        "plan_threshold": PLAN_THRESHOLD,
        "plan_threshold_holds": bool(forced_acc["value"] > PLAN_THRESHOLD),
        "reply_openings_tool": openings[True],
        "reply_openings_no_tool": openings[False],
        **(conditions or {}),  # further conditions (thinking on), each its own metrics
    }
    fig = confusion_figure(tool_rows, names, run.model)
    run.save_figure("confusion", fig, f"Confusion of gold tool (rows) and chosen tool (columns) for {run.model}: "
                    "forced choice (left) and the tool named in the free reply (right).")
    plt.close(fig)
    fig = p_tool_figure(p_tool, needs, run.model)
    run.save_figure("p_tool", fig, f"P(tool) at the first reply position for tool and no-tool requests ({run.model}).")
    plt.close(fig)
    run.result(metrics)
    run.timing("scoring", t_score)  # wall clock: in the manifest, so result.json is reproducible
    per_request = run.timing("scoring_per_request", t_score / max(len(rows), 1))
    print(f"[baseline] {run.model}: forced {forced_acc['value']:.3f} generation {metrics['generation_accuracy']['value']:.3f}"
          f" tool/no-tool {metrics['tool_no_tool_accuracy']['value']:.3f} ({per_request:.2f} s/request)")


def confusion_figure(tool_rows, names, model):
    cols = names + ["(none)"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    for ax, key, title in ((axes[0], "forced", "forced choice"), (axes[1], "generated", "free generation")):
        m = np.zeros((len(names), len(cols)))
        for r in tool_rows:
            pred = r[key] if r[key] in names else "(none)"
            m[names.index(r["gold"]), cols.index(pred)] += 1
        m = m / np.maximum(m.sum(1, keepdims=True), 1)
        ax.imshow(m, vmin=0, vmax=1, cmap="Blues")
        ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_title(f"{model}: {title}", fontsize=9)
        for i in range(len(names)):
            for j in range(len(cols)):
                if m[i, j] > 0:
                    ax.text(j, i, f"{m[i, j]:.0%}", ha="center", va="center", fontsize=6,
                            color="white" if m[i, j] > 0.5 else "black")
    fig.tight_layout()
    return fig


def p_tool_figure(p_tool, needs, model):
    fig, ax = plt.subplots(figsize=(5.5, 3))
    bins = np.linspace(0, 1, 21)
    ax.hist(p_tool[needs], bins=bins, alpha=0.7, label="tool requests")
    ax.hist(p_tool[~needs], bins=bins, alpha=0.7, label="no-tool requests")
    ax.set_xlabel("P(tool) at the first reply position")
    ax.set_ylabel("requests")
    ax.set_title(model, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    from toolattn.errors import analysis_main

    analysis_main(run, __doc__, "qwen2.5-coder-1.5b")
