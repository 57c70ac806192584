"""Scaling analysis: the list design (every list holds the gold of its requests, counts and sizes as
asked, seeded) and the analysis end to end on tiny Qwen2 after Phase 1, resuming from its chunks."""

import json
from collections import Counter

import numpy as np
import pytest

import analyses.retrieval_heads as rh
import analyses.scaling as sc
from toolattn.datasets import load_prompts
from toolattn.tools import CORE_NAMES, load_catalog

CFG = {"seed": 0, "counts": [2, 5, 50], "n_requests": 12, "per_gold": 3}


def pool():
    prompts = load_prompts()
    return {g: [p for p in prompts if p.tool == g and p.split == "heldout"] for g in CORE_NAMES}


def test_lists_hold_their_gold_and_are_seeded():
    catalog = [t.name for t in load_catalog()]
    lists = sc.design(catalog, pool(), CFG)
    by_id = {p.id: p for p in load_prompts()}
    for k in CFG["counts"]:
        mine = [s for s in lists.values() if s["count"] == k]
        assert sum(len(s["requests"]) for s in mine) == 12
        for s in mine:
            assert len(s["tools"]) == len(set(s["tools"])) == k
            assert all(by_id[i].tool in s["tools"] for i in s["requests"])
            assert max(Counter(by_id[i].tool for i in s["requests"]).values()) <= 3
    ids = [i for s in lists.values() if s["count"] == 50 for i in s["requests"]]
    assert len(ids) == len(set(ids))
    assert sc.design(catalog, pool(), CFG) == lists


def test_gold_positions_are_uniform_given_the_list():
    """Over many draws the gold's list position is uniform (a chi-square test at 1%)."""
    catalog = [t.name for t in load_catalog()]
    by_id = {p.id: p for p in load_prompts()}
    positions = []
    for seed in range(200):
        lists = sc.design(catalog, pool(), {**CFG, "seed": seed, "counts": [5], "n_requests": 10, "per_gold": 1})
        positions += [s["tools"].index(by_id[i].tool) for s in lists.values() for i in s["requests"]]
    counts = np.bincount(positions, minlength=5)
    from scipy.stats import chisquare

    assert chisquare(counts).pvalue > 0.01, counts


def test_position_bins():
    assert [sc.position_bin(p, 2) for p in range(2)] == ["first", "last"]
    assert [sc.position_bin(p, 8) for p in range(8)] == ["first", "early", "early", "middle", "middle", "late",
                                                          "late", "last"]


def test_entropy_of_uniform_and_one_hot():
    sh = np.zeros((2, 4, 1))
    sh[0] = 0.25
    sh[1, 2] = 1.0
    assert sc.entropy_bits(sh)[:, 0] == pytest.approx([2.0, 0.0])


def test_analysis_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLATTN_ARTIFACTS", str(tmp_path))
    prof = {"seed": 0, "batch_size": 8,
            "retrieval_heads": {"split": "heldout", "n_per_tool": 2, "n_orders": 2, "min_tool_block_share": 0.001,
                                "n_permutations": 200},
            "scaling": {"split": "heldout", "counts": [2, 10, 50], "n_requests": 6, "per_gold": 3, "top": 4,
                        "knockout_counts": [2, 50], "n_random_sets": 2, "max_rows": 16, "row_tokens": 100000, "n_bootstrap": 50}}
    rh.run("smoke", "tiny-qwen2", prof)
    sc.run("smoke", "tiny-qwen2", prof)
    out = tmp_path / "smoke" / "tiny-qwen2" / "scaling"
    result = json.loads((out / "result.json").read_text())
    m = result["metrics"]
    assert m["counts"] == [2, 10, 50] and set(m["accuracy_by_count"]) == {"2", "10", "50"}
    assert all(v["n"] == 6 for v in m["accuracy_by_count"].values())
    assert set(m["knockout_by_count"]) == {"2", "50"} and m["knockout_margin_loss_grows"]["to"] == 50
    for k in ("2", "10", "50"):
        e = m["entropy_by_count"][k]
        assert 0 <= e["value"] <= np.log2(int(k)) + 1e-9
    assert m["head_rank_spearman_10_vs_50"] is not None
    timings = json.loads((out / "manifest.json").read_text())["timings"]  # wall clock and memory: manifest only
    assert {"seconds_per_request_2", "seconds_per_request_50", "peak_rss_gb"} <= set(timings)
    assert "peak_rss_gb" not in m and "seconds_per_request" not in json.dumps(result)
    rows = (out / "requests.csv").read_text().splitlines()
    assert len(rows) == 1 + 18
    selection = {r.split(",")[0] for r in (tmp_path / "smoke" / "tiny-qwen2" / "retrieval_heads" /
                                           "requests.csv").read_text().splitlines()[1:] if ",selection," in r}
    assert not selection & {r.split(",")[2] for r in rows[1:]}  # never a request that chose the heads
    before = (out / "result.json").read_text()
    sc.run("smoke", "tiny-qwen2", prof)  # resumes from the saved chunks
    assert (out / "result.json").read_text() == before
