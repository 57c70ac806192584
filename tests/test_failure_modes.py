"""Failure modes: the shuffle rule (a planted positional failure is called positional, a tool-following
one is not), the semantic rule, and the analysis end to end on tiny Qwen2 after Phases 1 and 3 and the
baseline, resuming from its chunks."""

import json

import numpy as np
import pytest

import analyses.baseline as bl
import analyses.failure_modes as fm
import analyses.retrieval_heads as rh
import analyses.scaling as sc

TOOLS = ["a", "b", "c", "d", "e"]


def shuffles_picking(rule, n=6, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        order = [TOOLS[i] for i in rng.permutation(5)]
        out.append({"order": order, "chosen": [rule(order)]})
    return out


def test_planted_positional_failure_follows_the_position():
    f = {"id": "x", "gold": "a", "chosen": "c", "chosen_position": 2}
    pos = fm.follow(f, 0, shuffles_picking(lambda order: order[2]))  # always whatever is third
    assert pos["position_share"] == 1.0 and pos["tool_share"] < 0.5
    tool = fm.follow(f, 0, shuffles_picking(lambda order: "c"))  # always the same wrong tool
    assert tool["tool_share"] == 1.0 and tool["position_share"] == 0.0
    sim = np.eye(5)
    sim[0, 2] = sim[2, 0] = 0.9  # c is a's nearest neighbour
    assert fm.classify({**f, **pos}, sim, TOOLS, TOOLS, 1)["kind"] == "positional"
    c = fm.classify({**f, **tool}, sim, TOOLS, TOOLS, 1)
    assert c["kind"] == "semantic" and c["similarity_rank"] == 0.0 and c["semantic_chance"] == pytest.approx(0.25)
    far = fm.classify({**f, **tool, "chosen": "e"}, sim, TOOLS, TOOLS, 1)
    assert far["kind"] == "other"


def test_analysis_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLATTN_ARTIFACTS", str(tmp_path))
    prof = {"seed": 0, "batch_size": 8,
            "baseline": {"split": "heldout", "n_per_tool": 1, "n_no_tool": 2, "max_new_tokens": 4},
            "retrieval_heads": {"split": "heldout", "n_per_tool": 2, "n_orders": 2, "min_tool_block_share": 0.001,
                                "n_permutations": 200},
            "scaling": {"split": "heldout", "counts": [2, 5, 50], "n_requests": 6, "per_gold": 3, "top": 4,
                        "knockout_counts": [], "n_random_sets": 2, "max_rows": 16, "row_tokens": 100000, "n_bootstrap": 50},
            "failure_modes": {"n_shuffles": 2, "shuffle_counts": [2, 5], "similar_k": 2, "n_bootstrap": 50}}
    bl.run("smoke", "tiny-qwen2", prof)
    rh.run("smoke", "tiny-qwen2", prof)
    sc.run("smoke", "tiny-qwen2", prof)
    fm.run("smoke", "tiny-qwen2", prof)
    out = tmp_path / "smoke" / "tiny-qwen2" / "failure_modes"
    m = json.loads((out / "result.json").read_text())["metrics"]
    scaled = (tmp_path / "smoke" / "tiny-qwen2" / "scaling" / "requests.csv").read_text().splitlines()[1:]
    n_fail = sum(",False," in r for r in scaled)
    assert m["n_failures"] >= n_fail > 0  # a random tiny model fails often
    b = m["breakdown"]
    assert sum(b[k]["value"] for k in fm.KINDS) == pytest.approx(1.0) and b["n"] == m["n_failures"]
    import csv

    with open(out / "failures.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == m["n_failures"]
    shuffled = [r for r in rows if r["source"] == "baseline" or int(r["count"]) in (2, 5)]
    assert m["n_shuffled"] == len(shuffled) and all(r["shuffled"] == "True" for r in shuffled)
    assert all(r["kind"] != "positional" for r in rows if r["shuffled"] == "False")
    assert 0 <= m["gold_most_attended_on_failures"]["value"] <= 1
    before = (out / "result.json").read_text()
    fm.run("smoke", "tiny-qwen2", prof)
    assert (out / "result.json").read_text() == before
