"""Phase 1 statistics on synthetic shares (planted and null heads, the position-only control, the
halves) and the analysis end to end on tiny Qwen2 with shuffled tool orders."""

import json
import sys

import numpy as np
import pytest
import torch
from scipy import stats

from toolattn import paths
from toolattn.prompts import PromptFormatter
from toolattn.tools import core_tools

if str(paths.ROOT) not in sys.path:
    sys.path.insert(0, str(paths.ROOT))
from analyses import retrieval_heads as rh  # noqa: E402

DELIMITERS = ' \n\t"\':,{}<>'


def synthetic(n_req=120, n_tools=10, n_heads=20, seed=0):
    """Chosen tools ``[requests]``, shuffled list positions ``[requests, tools]`` and null shares
    ``[requests, tools, heads]`` (Dirichlet, independent of the choice)."""
    rng = np.random.default_rng(seed)
    chosen = rng.integers(0, n_tools, n_req)
    positions = np.stack([rng.permutation(n_tools) for _ in range(n_req)])
    x = rng.dirichlet(np.ones(n_tools), size=(n_req, n_heads)).transpose(0, 2, 1)
    return chosen, positions, x


def identity_head(chosen, n_tools, rng):
    """Shares ``[requests, tools]`` of a head that looks at the chosen tool, wherever it is listed."""
    share = rng.dirichlet(np.ones(n_tools), size=len(chosen))
    share[np.arange(len(chosen)), chosen] += 1.0
    return share / share.sum(1, keepdims=True)


def test_planted_head_ranks_first_and_only_it_survives_bh():
    chosen, _, x = synthetic()
    x[:, :, 7] = identity_head(chosen, x.shape[1], np.random.default_rng(1))
    s = rh.head_stats({"span": x, "name": x, "desc": x}, chosen, n_perm=2000, seed=0)
    eligible, p_bh, ranked = rh.rank_eligible(s["corr"], s["p"], np.ones(x.shape[2]), 0.02)
    assert eligible.all() and ranked[0] == 7
    assert p_bh[7] < 0.05
    assert (np.delete(p_bh, 7) >= 0.05).all()
    assert s["top1_rate"][7] > 0.5 > np.delete(s["top1_rate"], 7).max()


def test_null_permutation_p_values_are_uniform():
    chosen, _, x = synthetic(n_req=60, n_heads=300, seed=3)
    y = np.eye(x.shape[1])[chosen]
    p = rh.permutation_p(x, y, n=1000, seed=0)
    assert stats.kstest(p, "uniform").pvalue > 0.01


def test_eligibility_excludes_heads_below_the_tool_block_threshold():
    chosen, _, x = synthetic(n_heads=5)
    x[:, :, 0] = identity_head(chosen, x.shape[1], np.random.default_rng(1))
    corr = rh.pearson(x, np.eye(x.shape[1])[chosen])
    p = np.full(5, 0.01)
    block = np.array([0.001, 0.5, 0.03, 0.02, 0.0199])
    eligible, p_bh, ranked = rh.rank_eligible(corr, p, block, 0.02)
    assert eligible.tolist() == [False, True, True, True, False]
    assert 0 not in ranked and sorted(ranked) == [1, 2, 3]
    assert np.isnan(p_bh[[0, 4]]).all() and not np.isnan(p_bh[[1, 2, 3]]).any()


def test_position_only_control():
    """A purely positional head keeps its correlation; an identity head's positional part has none."""
    chosen, positions, x = synthetic(n_req=400, seed=5)
    rng = np.random.default_rng(2)
    n_tools = x.shape[1]
    x[:, :, 0] = np.where(positions == 0, 0.55, 0.05)  # always on the first listed tool
    x[:, :, 1] = identity_head(chosen, n_tools, rng)
    y = np.eye(n_tools)[chosen]
    real = rh.pearson(x, y)
    control = rh.pearson(rh.position_only(x, positions), y)
    assert control[0] == pytest.approx(real[0], abs=1e-9)
    assert real[1] > 0.5 and abs(control[1]) < 0.05
    # a model that picks the first listed tool a third of the time: the positional head now correlates
    first = np.argsort(positions, 1)[:, 0]
    biased = np.where(rng.random(len(chosen)) < 1 / 3, first, chosen)
    yb = np.eye(n_tools)[biased]
    assert rh.pearson(x, yb)[0] > 0.2
    assert rh.pearson(rh.position_only(x, positions), yb)[0] == pytest.approx(rh.pearson(x, yb)[0], abs=1e-9)


def test_stratified_halves_are_disjoint_balanced_and_deterministic():
    labels = [f"t{i % 10}" for i in range(55)]  # 5 or 6 per label
    a = rh.stratified_groups(labels, 2, seed=0, salt=2)
    assert np.array_equal(a, rh.stratified_groups(labels, 2, seed=0, salt=2))
    assert not np.array_equal(a, rh.stratified_groups(labels, 2, seed=1, salt=2))
    assert set(a.tolist()) == {0, 1}  # every item in exactly one half
    for t in set(labels):
        counts = np.bincount(a[[i for i, x in enumerate(labels) if x == t]], minlength=2)
        assert abs(counts[0] - counts[1]) <= 1
    assert abs(int((a == 0).sum()) - int((a == 1).sum())) <= 1
    orders = rh.stratified_groups(labels, 5, seed=0, salt=1)
    for t in set(labels):
        counts = np.bincount(orders[[i for i, x in enumerate(labels) if x == t]], minlength=5)
        assert counts.max() - counts.min() <= 1


def test_tool_orders_are_seeded_permutations():
    o = rh.tool_orders(10, 5, seed=0)
    assert o.shape == (5, 10) and all(sorted(r) == list(range(10)) for r in o.tolist())
    assert np.array_equal(o, rh.tool_orders(10, 5, seed=0))
    assert len({tuple(r) for r in o.tolist()}) == 5


def test_content_words_and_lexical_overlap():
    assert rh.content_words("Translate these emails into French") == {"translate", "email", "french"}
    tool = rh.content_words("send_email Send an email to a recipient")
    assert rh.content_words("Please email Sam that the build is green") & tool
    assert not rh.content_words("Let Sam know the build is green") & tool


def test_shuffled_order_spans_map_to_each_tools_tokens():
    from toolattn.models import load_model

    core = core_tools()
    names = [t.name for t in core]
    for model in ("tiny-qwen2", "tiny-gemma3", "qwen2.5-coder-1.5b"):
        if model.startswith("tiny"):
            lm = load_model(model)
            fm = PromptFormatter(lm.tokenizer, lm.spec.prompt_format, lm.spec.family)
        else:
            from conftest import real_tokenizer
            from toolattn.models import get_spec

            spec = get_spec(model)
            fm = PromptFormatter(real_tokenizer(model), spec.prompt_format, spec.family, spec.call_prefix or None)
        for perm in rh.tool_orders(len(core), 3, seed=0):
            f = fm.format("What's the weather like in Oslo right now?", [core[i] for i in perm])
            spans = rh.core_spans(f, names)
            for i, t in enumerate(core):
                assert fm.tok.decode(f.input_ids[slice(*spans["name"][i])]).strip(DELIMITERS) == t.name
                assert fm.tok.decode(f.input_ids[slice(*spans["desc"][i])]).strip(DELIMITERS) == t.description
            # synthetic attention: key k carries weight k, so each tool's mass is the sum of its own token indices
            keys = len(f.input_ids)
            w = torch.arange(keys, dtype=torch.float32).expand(1, 1, 1, keys)  # [layers, batch, heads, keys]
            m = rh.tool_masses([w], f, names)["span"][0, 0, 0]  # [tools], core order
            for i in range(len(core)):
                a, b = spans["span"][i]
                assert m[i] == pytest.approx(sum(range(a, b)))


def test_analysis_end_to_end_with_shuffled_orders(tmp_path, monkeypatch):
    """The analysis on tiny Qwen2: artifacts complete, one chunk per order, halves and strata add up,
    and a re-run resumes from the chunks."""
    monkeypatch.setenv("TOOLATTN_ARTIFACTS", str(tmp_path))
    prof = {"seed": 0, "batch_size": 8, "retrieval_heads": {"split": "heldout", "n_per_tool": 2, "n_orders": 3,
                                                            "min_tool_block_share": 0.5, "n_permutations": 200}}
    rh.run("smoke", "tiny-qwen2", prof)
    out = tmp_path / "smoke" / "tiny-qwen2" / "retrieval_heads"
    result = json.loads((out / "result.json").read_text())
    m = result["metrics"]
    assert m["n_heads"] == 16 and m["n_requests"] == 20
    assert m["n_selection"] == m["n_confirmation"] == 10
    assert m["n_eligible"] + m["n_excluded"] == 16 and len(m["top_heads"]) == min(10, m["n_eligible"])
    assert sum(s["n"] for s in m["lexical_strata"].values()) == m["n_confirmation"]
    assert all(h["top1_rate"]["n"] == 10 and h["selection"]["tool_block_share"] >= 0.5 for h in m["top_heads"])
    assert m["tool_span_tokens_mean"] > 0 and len(m["choice_rate_by_position"]) == 10
    assert set(result["figures"]) == {"corr_heatmap", "top_heads_attention", "layer_distribution",
                                      "tool_block_share", "position_control"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["timings"]["capture_bytes_per_request"] > 0
    assert "seconds_per_request" not in m and "capture_bytes_per_request" not in m
    requests = (out / "requests.csv").read_text().splitlines()
    assert len(requests) == 21 and {r.split(",")[3] for r in requests[1:]} == {"0", "1", "2"}
    assert len(list((out / "chunks").glob("order-*.json"))) == 3
    heads = (out / "heads.csv").read_text()
    rh.run("smoke", "tiny-qwen2", prof)  # resumes from the saved chunks
    assert (out / "heads.csv").read_text() == heads
