"""Head knockout analysis: the design of the controls, the replacement rule (a planted semantic
fallback is found, random replacements are not called semantic or positional), and the analysis
end to end on tiny Qwen2 (after Phase 1), resuming from its chunks."""

import json

import numpy as np
import pytest

import analyses.head_knockout as hk
import analyses.retrieval_heads as rh

CFG = {"seed": 0, "keys": ["desc", "span"], "variants": ["block"], "n_random_sets": 6, "n_random_singles": 3}


def test_random_controls_match_the_top_heads_layers():
    top = [(3, 1), (3, 4), (5, 0), (7, 2)]
    conds = hk.make_conditions(top, L=8, H=6, cfg=CFG)
    desc = [c for c in conds if c["keys"] == "desc"]
    kinds = [c["kind"] for c in desc]
    assert kinds.count("single") == 4 and kinds.count("joint") == 1
    assert [c["kind"] for c in conds if c["keys"] == "block"] == ["joint"]
    # the same design, with the same random draws, at every scope of `keys`
    span = [c for c in conds if c["keys"] == "span"]
    assert [c["members"] for c in span] == [c["members"] for c in desc]
    sets = [c for c in desc if c["kind"] == "random_set"]
    assert len(sets) == 6
    for c in sets:
        layers = sorted(l for l, _ in c["members"])
        assert layers == [3, 3, 5, 7]  # one random head per top head, from its layer
        assert not set(c["members"]) & set(top) and len(set(c["members"])) == 4
        assert int(c["heads"].sum()) == 4
    singles = [c for c in desc if c["kind"] == "random_single"]
    assert sorted(c["members"][0][0] for c in singles) == [3, 3, 3, 5, 5, 5, 7, 7, 7]
    assert all(c["members"][0] not in top for c in singles)
    again = hk.make_conditions(top, L=8, H=6, cfg=CFG)
    assert [c["members"] for c in again] == [c["members"] for c in conds]  # seeded


def flip(semantic: bool, positional: bool) -> dict:
    return {"semantic": semantic, "semantic_chance": 2 / 9, "positional": positional, "positional_chance": 2 / 9}


def test_planted_semantic_fallback_is_found():
    flips = [flip(True, False)] * 14 + [flip(False, False)] * 4
    out = hk.replacement_summary(flips, alpha=0.05)
    assert out["verdict"] == "semantic" and out["semantic"]["p"] < 0.001
    assert out["semantic"]["excess"]["lo"] > 0 and out["other"]["value"] == pytest.approx(4 / 18)


def test_random_replacements_are_rarely_called_a_pattern():
    rng = np.random.default_rng(0)
    called = 0
    for _ in range(300):
        n = 20
        sem, pos = rng.random(n) < 2 / 9, rng.random(n) < 2 / 9
        out = hk.replacement_summary([flip(bool(s), bool(p)) for s, p in zip(sem, pos)], alpha=0.05)
        called += out["verdict"] != "neither beyond chance (random)"
    assert called / 300 <= 0.10 + 0.03  # two one-sided tests at 5%: at most ~10% by chance
    assert hk.replacement_summary([], 0.05)["verdict"] == "no flips"


def test_exhaustive_heads_take_atp_top_and_whole_layers():
    est = np.zeros((6, 4))
    est[5, 3], est[1, 2] = -2.0, 1.5
    cfg = {"exhaustive_all": False, "atp_top": 2, "exhaustive_layers": 2, "n_random_exhaustive": 3, "seed": 0}
    heads = hk.exhaustive_heads(est, 6, 4, cfg)
    assert heads[:2] == [(5, 3), (1, 2)]
    assert {(0, h) for h in range(4)} <= set(heads) and {(5, h) for h in range(4)} <= set(heads)
    assert len(heads) == len(set(heads)) == 2 + 8 - 1 + 3
    assert len(hk.exhaustive_heads(est, 6, 4, {**cfg, "exhaustive_all": True})) == 24


def test_analysis_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLATTN_ARTIFACTS", str(tmp_path))
    prof = {"seed": 0, "batch_size": 8,
            "retrieval_heads": {"split": "heldout", "n_per_tool": 2, "n_orders": 3, "min_tool_block_share": 0.001,
                                "n_permutations": 200},
            "head_knockout": {"n_orders": 2, "top": 4, "keys": ["desc", "span"], "variants": ["block"],
                              "replacement_keys": "block",
                              "n_random_sets": 4, "n_random_singles": 2, "drop_threshold": 0.1, "alpha": 0.05,
                              "similar_k": 2, "atp_requests": 3, "graddrop": 2, "atp_top": 3, "exhaustive_layers": 2,
                              "n_random_exhaustive": 1, "exhaustive_all": False, "max_rows": 16, "n_bootstrap": 50}}
    rh.run("smoke", "tiny-qwen2", prof)
    hk.run("smoke", "tiny-qwen2", prof)
    out = tmp_path / "smoke" / "tiny-qwen2" / "head_knockout"
    result = json.loads((out / "result.json").read_text())
    m = result["metrics"]
    assert m["n_orders"] == 2 and m["n_requests"] == len(
        [r for r in (tmp_path / "smoke" / "tiny-qwen2" / "retrieval_heads" / "requests.csv").read_text().splitlines()[1:]
         if r.split(",")[4] == "confirmation" and r.split(",")[3] in ("0", "1")])
    assert len(m["top_heads"]) == 4 and m["random_singles"]["n"] >= 2 and len(m["random10_drops"]) == 4
    assert set(m["variants"]) == {"span", "block"} and m["full_prompt_agrees"]
    assert m["by_keys"]["desc"]["top_heads"] == m["top_heads"] and len(m["by_keys"]["span"]["top_heads"]) == 4
    assert m["atp"]["n_heads"] == m["n_exhaustive"] >= 2 * 4 and m["atp"]["graddrop_groups"] == 2
    assert m["atp"]["n_requests"] == 3
    conds = (out / "conditions.csv").read_text().splitlines()
    assert len(conds) == 1 + m["n_conditions"]
    assert len((out / "atp.csv").read_text().splitlines()) == 1 + 16
    for h in m["top_heads"]:  # a drop is the paired difference of the same requests
        assert h["drop"]["n"] == m["n_requests"] and h["drop"]["b"] - h["drop"]["c"] == pytest.approx(
            h["drop"]["value"] * m["n_requests"])
    assert set(result["figures"]) == {"knockout_effects", "atp_vs_knockout", "replacements"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["timings"]["seconds_per_request_condition"] > 0 and "seconds_per_head_condition" not in m
    before = (out / "result.json").read_text()
    hk.run("smoke", "tiny-qwen2", prof)  # resumes from the saved chunks
    assert (out / "result.json").read_text() == before
