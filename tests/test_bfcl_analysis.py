"""BFCL analysis: the statistics it rests on (pair correlation, the within-request null, the combination
margin) find planted signals and not nulls, and the analysis runs end to end on tiny models from a BFCL-
shaped wheel, resuming from its chunks; the retrieval-head parts only where Phase 1 ran."""

from __future__ import annotations

import hashlib
import json
import zipfile

import numpy as np
import pytest

import analyses.bfcl as ab
import analyses.retrieval_heads as rh
from toolattn import bfcl
from toolattn.tools import load_catalog


def test_pair_corr_is_the_correlation_of_within_request_deviations():
    """Shares and the chosen indicator, each minus its request's mean, correlated over all pairs
    (uncentred: both have mean zero); a uniform head has no correlation whatever the list sizes."""
    rng = np.random.default_rng(0)
    x = [rng.random((k, 3)) for k in (2, 3, 5, 4)]
    chosen = np.array([1, 0, 4, 2])
    xw = np.concatenate([a - a.mean(0) for a in x])
    y = np.concatenate([np.eye(len(a))[c] - 1 / len(a) for a, c in zip(x, chosen)])
    expect = [xw[:, j] @ y / np.sqrt((xw[:, j] ** 2).sum() * (y ** 2).sum()) for j in range(3)]
    assert ab.pair_corr(x, chosen) == pytest.approx(expect, abs=1e-12)
    uniform = [np.full((len(a), 1), 1 / len(a)) for a in x]
    assert ab.pair_corr(uniform, chosen) == pytest.approx([0.0])


def test_within_request_null_finds_a_planted_head_and_not_a_random_one():
    """Head 0 puts more attention on the chosen function; head 1 is noise. Lists of 2-6 functions."""
    rng = np.random.default_rng(1)
    sizes = rng.integers(2, 7, 60)
    chosen = np.array([rng.integers(k) for k in sizes])
    x = []
    for k, c in zip(sizes, chosen):
        a = rng.random((k, 2))
        a[c, 0] += 0.5
        x.append(a / a.sum(0))
    corr = ab.pair_corr(x, chosen)
    null = ab.within_request_null(x, chosen, 500, seed=0)
    p = (1 + (np.abs(null) >= np.abs(corr) - 1e-12).sum(0)) / 501
    assert p[0] < 0.01 and p[1] > 0.05
    assert abs(null.mean()) < 0.02  # centred at zero under the null, whatever the list sizes


def test_null_correlation_equals_pair_corr_of_the_redrawn_choice():
    """Each null draw is the correlation of a redrawn "chosen" vector (one 1 per request)."""
    rng = np.random.default_rng(2)
    x = [rng.random((k, 2)) for k in (2, 3, 4)]
    chosen = np.array([0, 2, 1])
    null = ab.within_request_null(x, chosen, 3, seed=5)
    rng2 = np.random.default_rng(5)
    sizes = np.array([2, 3, 4])
    for k in range(3):
        pick = (rng2.random(3) * sizes).astype(int)
        assert null[k] == pytest.approx(ab.pair_corr(x, pick), abs=1e-12)


def test_best_margin_maximises_accuracy_and_prefers_keeping_the_model():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.5], [0.3, 0.35]])
    model = np.array([1, 1, 1, 0])
    gold = np.array([0, 1, 1, 0])
    m = ab.best_margin(model, scores, gold)
    # request 0: lead 0.8 -> overrule (right); request 2: lead 0.1 -> keep (right); request 3: lead 0.05 -> keep
    assert 0.1 <= m < 0.8
    assert (ab.combined_choice(model, scores, m) == gold).all()
    assert ab.best_margin(model, scores, model) == np.inf  # the selector never helps: never overrule


# -- end to end on tiny models -------------------------------------------------------------------

def functions(tools, k0, k):
    """``k`` catalog tools from ``k0`` as BFCL functions (dotted names, Python-style types)."""
    out = []
    for t in tools[k0 : k0 + k]:
        props = {n: {**p, "type": {"object": "dict", "number": "float"}.get(p["type"], p["type"])}
                 for n, p in t.parameters["properties"].items()}
        out.append({"name": t.group + "." + t.name, "description": t.description,
                    "parameters": {"type": "dict", "properties": props, "required": t.parameters.get("required", [])}})
    return out


def wheel_files() -> dict[str, bytes]:
    tools = load_catalog()
    texts = ["What's the weather in Oslo?", "Look up the capital of Peru", "Open notes.txt", "Save hello to a.txt",
             "Run print(1)", "Email Ana the report", "What's on my calendar Monday?", "Remind me at 5pm",
             "Find orders over 100 in the db", "Translate hi to Spanish"]
    multiple, live, gold_m, gold_l = [], [], [], []
    for i, text in enumerate(texts):
        fns = functions(tools, (i // 2) * 2, 2 + i % 3)  # 2-4 functions; the gold among them
        g = fns[i % len(fns)]["name"]
        target, gold = (multiple, gold_m) if i < 7 else (live, gold_l)
        rid = f"{'multiple' if i < 7 else 'live_multiple'}_{i}"
        target.append({"id": rid, "question": [[{"role": "user", "content": text}]], "function": fns})
        gold.append({"id": rid, "ground_truth": [{g: {}}]})
    irr = [{"id": f"live_irrelevance_{i}", "question": [[{"role": "user", "content": t}]],
            "function": functions(tools, i, 2)} for i, t in enumerate(["Tell me a joke", "Why is the sky blue?",
                                                                      "Hi there", "Write a haiku"])]
    lines = lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode()  # noqa: E731
    return {"BFCL_v4_multiple.json": lines(multiple), "BFCL_v4_live_multiple.json": lines(live),
            "BFCL_v4_live_irrelevance.json": lines(irr), "possible_answer/BFCL_v4_multiple.json": lines(gold_m),
            "possible_answer/BFCL_v4_live_multiple.json": lines(gold_l)}


@pytest.fixture
def bfcl_wheel(tmp_path, monkeypatch):
    """A BFCL-shaped wheel placed where ``ensure_data`` looks, with its hash pinned."""
    monkeypatch.setenv("TOOLATTN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TOOLATTN_ARTIFACTS", str(tmp_path / "artifacts"))
    path = bfcl.data_dir() / bfcl.WHEEL_NAME
    path.parent.mkdir(parents=True)
    with zipfile.ZipFile(path, "w") as z:
        for name, data in wheel_files().items():
            z.writestr(bfcl.MEMBER_ROOT + name, data)
    monkeypatch.setattr(bfcl, "WHEEL_SHA256", hashlib.sha256(path.read_bytes()).hexdigest())
    return tmp_path / "artifacts"


CFG = {"seed": 0, "batch_size": 4, "n_multiple": 7, "n_live_multiple": 3, "n_irrelevance": 4, "heads": True,
       "top": 3, "min_tool_block_share": 0.001, "n_permutations": 50, "knockout_requests": 4, "n_random_sets": 2,
       "max_rows": 16, "max_new_tokens": 8, "n_bootstrap": 20, "synthetic_counts": [12], "synthetic_orders": 2,
       "n_synthetic": 6}


def test_analysis_end_to_end_with_heads(bfcl_wheel):
    prof = {"seed": 0, "batch_size": 8,
            "retrieval_heads": {"split": "heldout", "n_per_tool": 2, "n_orders": 2, "min_tool_block_share": 0.001,
                                "n_permutations": 100}}
    rh.run("smoke", "tiny-qwen2", prof)
    ab.run("smoke", "tiny-qwen2", CFG)
    out = bfcl_wheel / "smoke" / "tiny-qwen2" / "bfcl"
    result = json.loads((out / "result.json").read_text())
    m = result["metrics"]
    assert (m["n_tool_requests"], m["n_irrelevance"]) == (10, 4)
    assert m["by_subset"]["multiple"]["n"] == 7 and m["by_subset"]["live_multiple"]["n"] == 3
    assert m["data"]["multiple"]["excluded"]["kept"] == 7
    assert m["forced_accuracy"]["n"] == 10 and 0 <= m["forced_accuracy"]["value"] <= 1
    assert len(m["top_heads"]) == 3 and all(0 <= h["p_holm"] <= 1 for h in m["top_heads"])
    s = m["selector"]
    assert s["n_selection"] + s["n_heldout"] == 10 and s["model_accuracy"]["n"] == s["n_heldout"]
    assert m["knockout"]["n"] == 4 and m["knockout"]["n_random_sets"] == 2
    assert m["ranking"]["n_eligible_both"] > 0
    assert m["looking_vs_picking"]["n_failures"] == round(10 * (1 - m["forced_accuracy"]["value"]))
    assert (out / "selector.png").exists() and (out / "heads.csv").exists()
    syn = m["synthetic"]["12"]  # 6 held-out synthetic requests outside Phase 1's selection half, 2 orders
    assert syn["n"] == 6 and syn["model_accuracy"]["n"] == syn["selector_accuracy"]["n"] == 6
    selection = {r.split(",")[0] for r in (bfcl_wheel / "smoke" / "tiny-qwen2" / "retrieval_heads" / "requests.csv")
                 .read_text().splitlines()[1:] if ",selection," in r}
    chunk = json.loads(next((out / "chunks").glob("synthetic-12-0.*.json")).read_text())
    assert chunk["ids"] and not set(chunk["ids"]) & selection
    # resumed from the chunks: the same result, byte for byte
    before = (out / "result.json").read_bytes()
    (out / "manifest.json").unlink()
    ab.run("smoke", "tiny-qwen2", CFG)
    assert (out / "result.json").read_bytes() == before


def test_analysis_without_heads_needs_no_phase_1(bfcl_wheel):
    """The tool / no-tool part alone (the circuit models): no retrieval_heads artifact is read."""
    ab.run("smoke", "tiny-gemma3", dict(CFG, heads=False, knockout_requests=0))
    m = json.loads((bfcl_wheel / "smoke" / "tiny-gemma3" / "bfcl" / "result.json").read_text())["metrics"]
    assert "selector" not in m and "knockout" not in m
    assert m["irrelevance_call_rate"]["n"] == 4 and m["tool_call_rate"]["n"] == 10


def test_the_tuned_child_is_the_one_of_the_run_profile(bfcl_wheel, monkeypatch):
    """Each profile trains its own child: a run of profile P loads P's checkpoint, never another's."""
    asked = {}

    def fake_load(name, **kw):
        asked.update(kw, name=name)
        raise RuntimeError("stop after loading")
    monkeypatch.setattr(ab, "load_model", fake_load)
    with pytest.raises(RuntimeError, match="stop after loading"):
        ab.run("full", "gemma-3-270m-tools", dict(CFG, heads=False, knockout_requests=0))
    assert asked == {"name": "gemma-3-270m-tools", "profile": "full"}
