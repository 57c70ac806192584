"""Fine-tuning: a FunctionGemma-style tool caller made from the Gemma 3 270M base, and how it scores.

Method. ``gemma-3-270m-tools`` is fine-tuned from ``gemma-3-270m`` on requests of the train split
(see ``toolattn/finetune.py`` for the format, data and training), or its saved checkpoint is reused.
On held-out requests, with the 10 core tools declared, we read for the child (its own chat format)
and for the base (its few-shot text format), with the same engine: the 10-way forced choice on
tool requests; the tool / no-tool decision (greedy first reply token: does opening a call beat
every other token) and the AUC of P(tool); and the free greedy reply -- does it parse as a call of
a declared tool (call validity), of the gold tool (generation accuracy), with a closed call and
JSON arguments (well formed; the child's format only). Proportions with 95% Wilson intervals, the AUC with a bootstrap CI. Finally the
weight divergence of child from parent per layer: the relative Frobenius norm of the change of the
attention and MLP weights.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from toolattn import paths  # noqa: E402
from toolattn.artifacts import Run, load_profile, sha256_file  # noqa: E402
from toolattn.datasets import load_prompts, select  # noqa: E402
from toolattn.finetune import (BASE, CHILD, NO_TOOL_REPLIES, call_reply, ensure_child, read_source,  # noqa: E402
                               weight_divergence)
from toolattn.models import get_spec, load_model  # noqa: E402
from toolattn.parsing import opening, parse_call  # noqa: E402
from toolattn.prompts import PromptFormatter  # noqa: E402
from toolattn.scoring import ToolChoiceEngine  # noqa: E402
from toolattn.stats import accuracy, roc_auc  # noqa: E402
from toolattn.tools import core_tools  # noqa: E402

TARGETS = {"forced_choice_accuracy": 0.90, "tool_no_tool_accuracy": 0.95}


def run(profile: str) -> None:
    prof = load_profile(profile)
    cfg = dict(prof["finetune"], batch_size=prof["batch_size"], seed=prof["seed"])
    folder = ensure_child(profile, cfg)
    source = read_source(folder)
    requests = select(load_prompts(), split="heldout", n_per_tool=cfg["eval_per_tool"],
                      n_no_tool=cfg["eval_no_tool"], seed=cfg["seed"])
    tools = core_tools()
    child = load_model(CHILD, profile=profile)
    base_spec = get_spec(BASE)
    inputs = {"data/prompts.json": sha256_file(paths.PROMPTS_FILE), "data/tools.json": sha256_file(paths.TOOLS_FILE),
              base_spec.source: base_spec.sha256, **child.files}
    example = {"request": requests[0].text, "tools": [t.name for t in tools[:3]],
               "prompt": PromptFormatter(child.tokenizer, "chat", "gemma3").render(requests[0].text, tools[:3])[0],
               "call": call_reply(requests[0].tool), "no_tool_replies": list(NO_TOOL_REPLIES)}
    with Run(profile, CHILD, "finetune", cfg, inputs, seed=cfg["seed"]) as run:
        rows = {"child": run.chunk("child", lambda: evaluate(child, requests, tools, cfg))}
        base = load_model(BASE)
        rows["base"] = run.chunk("base", lambda: evaluate(base, requests, tools, cfg))
        divergence = run.chunk("divergence", lambda: weight_divergence(base.model, child.model))
        summarise(run, rows, divergence, source, [t.name for t in tools], folder, example)


def evaluate(lm, requests, tools, cfg) -> list[dict]:
    """One row per request: forced choice, P(tool), greedy decision, and the parsed free reply."""
    engine = ToolChoiceEngine(lm, batch_size=cfg["batch_size"])
    engine.stop_when_decided = False  # read the whole call, arguments and closing marker included
    texts = [r.text for r in requests]
    choices = engine.score(texts, tools, desc=f"{lm.name} scoring")
    replies = engine.generate(texts, tools, max_new_tokens=cfg["max_new_tokens"], desc=f"{lm.name} generating")
    names = {t.name for t in tools}
    out = []
    for r, c, reply in zip(requests, choices, replies):
        call = parse_call(reply)
        out.append({"id": r.id, "category": r.category, "gold": r.tool or "", "forced": c.choice,
                    "p_tool": c.p_tool, "decides_tool": c.decides_tool, "reply": reply, "opening": opening(reply),
                    "generated": call.name or "", "valid_call": call.name in names,
                    "well_formed": call.name in names and call.valid_json})
    return out


def scores(rows: list[dict]) -> dict:
    tool_rows = [r for r in rows if r["gold"]]
    needs = np.array([bool(r["gold"]) for r in rows])
    p_tool = np.array([r["p_tool"] for r in rows])
    return {
        "forced_choice_accuracy": accuracy([r["forced"] == r["gold"] for r in tool_rows]),
        "tool_no_tool_accuracy": accuracy(np.array([r["decides_tool"] for r in rows]) == needs),
        "generation_call_validity": accuracy([r["valid_call"] for r in tool_rows]),
        "generation_accuracy": accuracy([r["generated"] == r["gold"] for r in tool_rows]),
        "generation_well_formed": accuracy([r["well_formed"] for r in tool_rows]),
        "no_tool_call_rate": accuracy([bool(r["generated"]) for r in rows if not r["gold"]]),
        "p_tool_auc": roc_auc(p_tool, needs),
    }


def summarise(run: Run, rows: dict, divergence: list[dict], source: dict, names: list[str], folder,
              example: dict) -> None:
    child, base = scores(rows["child"]), scores(rows["base"])
    argmax = max(divergence, key=lambda d: d["attention_mlp"])["layer"]
    losses = source["losses"]
    metrics = {**child, **{f"base_{k}": v for k, v in base.items()},
               "n_tools": len(names),
               "n_tool_requests": sum(bool(r["gold"]) for r in rows["child"]),
               "n_no_tool_requests": sum(not r["gold"] for r in rows["child"]),
               "train_examples": source["train_examples"], "train_no_tool_examples": source["no_tool_examples"],
               "train_requests": source["train_requests"], "train_tokens": source["train_tokens"],
               "train_steps": source["steps"],
               "train_threads": source.get("threads"),
               "learning_rate": source["config"]["lr"],
               "hyperparameter_search": source.get("selection", []),
               "validation_tool_requests": source.get("validation_tool_requests", 0),
               "validation_no_tool_requests": source.get("validation_no_tool_requests", 0),
               "checkpoint_bytes": sum(f.stat().st_size for f in folder.iterdir() if f.is_file()),
               "checkpoint_key": source["key"],
               "final_loss": float(np.mean(losses[-5:])), "first_loss": losses[0],
               "weight_divergence_argmax_layer": argmax,
               "weight_divergence_max": max(d["attention_mlp"] for d in divergence),
               "targets": TARGETS,
               "targets_hold": {k: bool(child[k]["value"] >= t) for k, t in TARGETS.items()}}
    table = [{"metric": k, "child": child[k]["value"], "child_lo": child[k]["lo"], "child_hi": child[k]["hi"],
              "base": base[k]["value"], "base_lo": base[k]["lo"], "base_hi": base[k]["hi"], "n": child[k]["n"]}
             for k in child]
    run.write_csv("scores", table)
    run.write_csv("requests", [dict(r, model=m) for m, rs in (("child", rows["child"]), ("base", rows["base"]))
                               for r in rs])
    run.write_csv("weight_divergence", divergence)
    run.write_csv("training_curve", [{"step": i + 1, "loss": v} for i, v in enumerate(losses)])
    if source.get("selection"):
        run.write_csv("hyperparameter_search", [
            {k: (v["value"] if isinstance(v, dict) else v) for k, v in c.items()} for c in source["selection"]])

    fig, ax = plt.subplots(figsize=(5.5, 3))
    ax.plot(range(1, len(losses) + 1), losses, lw=1, alpha=0.5, label="batch loss")
    k = min(5, len(losses))
    ax.plot(range(k, len(losses) + 1), np.convolve(losses, np.ones(k) / k, "valid"), lw=2, label=f"mean of {k}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("reply cross-entropy (nats/token)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    run.save_figure("training_curve", fig, f"Training loss of {CHILD} on the reply tokens, per step "
                    f"({source['train_examples']} examples, batch {source['config']['train_batch_size']}).")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3))
    layers = [d["layer"] for d in divergence]
    for key, label in (("attention", "attention (q, k, v, o)"), ("mlp", "MLP (gate, up, down)"),
                       ("attention_mlp", "both")):
        ax.plot(layers, [d[key] for d in divergence], marker="o", ms=3, label=label)
    ax.set_xticks(layers)
    ax.set_xlabel("layer")
    ax.set_ylabel("||W_child - W_base|| / ||W_base||")
    ax.legend(fontsize=8)
    fig.tight_layout()
    run.save_figure("weight_divergence", fig, f"Weight divergence of {CHILD} from {BASE} per layer: relative "
                    "Frobenius norm of the change of the attention and MLP weights.")
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(9, 3), sharey=True)
    bins = np.linspace(0, 1, 21)
    for ax, (m, rs) in zip(axes, ((BASE, rows["base"]), (CHILD, rows["child"]))):
        p = np.array([r["p_tool"] for r in rs])
        needs = np.array([bool(r["gold"]) for r in rs])
        ax.hist(p[needs], bins=bins, alpha=0.7, label="tool requests")
        ax.hist(p[~needs], bins=bins, alpha=0.7, label="no-tool requests")
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("P(tool) at the first reply position")
    axes[0].set_ylabel("held-out requests")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    run.save_figure("p_tool", fig, "P(tool) on held-out requests: the base in its few-shot text format (left) and "
                    "the tuned child in its chat format (right).")
    plt.close(fig)

    where = folder.relative_to(paths.ROOT) if folder.is_relative_to(paths.ROOT) else folder
    run.result(metrics, base=BASE, format_example=example, checkpoint=str(where))
    run.timing("training", source["seconds"])  # wall clock of the (possibly earlier) training run
    if source.get("selection"):
        run.timing("hyperparameter_search", source["search_seconds"])  # every candidate, the chosen one included
    fc, tn = child["forced_choice_accuracy"], child["tool_no_tool_accuracy"]
    print(f"[finetune] {CHILD}: forced {fc['value']:.3f} [{fc['lo']:.3f}, {fc['hi']:.3f}] tool/no-tool "
          f"{tn['value']:.3f} [{tn['lo']:.3f}, {tn['hi']:.3f}]; base forced "
          f"{base['forced_choice_accuracy']['value']:.3f} tool/no-tool {base['tool_no_tool_accuracy']['value']:.3f};"
          f" trained {metrics['train_steps']} steps in {source['seconds']:.0f}s")


if __name__ == "__main__":
    from toolattn.errors import analysis_main

    analysis_main(lambda profile, model: run(profile), __doc__, CHILD, [CHILD])
