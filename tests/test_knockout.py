"""Head knockout and attribution patching (tiny models).

Equivalences, each side built from the same tiny weights:
* the runner's clean scores equal the engine's forced choice;
* a knockout condition (layers below it skipped, the shared tail run once per condition, several
  conditions in one pass) equals the engine caching only the tool block with the knockout applied to
  every later query, and equals recomputing the whole prompt;
* the AtP forward at alpha = one-hot(l, h) equals knocking out head (l, h); the AtP estimate equals
  the derivative of the margin (central difference); GradDrop of a head in the last group equals the
  absolute AtP estimate.
"""

import numpy as np
import pytest
import torch

from toolattn.attention import knockout_kwargs, span_keys, use_toolattn
from toolattn.knockout import HeadKnockout, certified, full_prompt_scores, margin
from toolattn.models import model_dims
from toolattn.scoring import ToolChoiceEngine

REQUESTS = [
    "What's the weather in Paris today?",
    "Look up the history of the Eiffel tower on the web, I need it for homework and a lot more detail",
    "Translate 'good night' into Spanish",
    "send an email to my boss saying I will be late",
    "remind me to call mum at 6pm",
]
GOLD = ["get_weather", "search_web", "translate_text", "send_email", "create_reminder"]


@pytest.fixture(scope="module")
def runs(tiny, tools):
    missing = set(GOLD) - {t.name for t in tools}
    assert not missing, missing
    return HeadKnockout(tiny, tools, REQUESTS, GOLD, batch_size=2, max_rows=6)


def conditions(lm, seed=0) -> torch.Tensor:
    """[C, L, H]: none, one head in the last layer, one in the first, a random set, every head."""
    d = model_dims(lm.model)
    L, H = d["layers"], d["heads"]
    g = torch.Generator().manual_seed(seed)
    c = torch.zeros(5, L, H, dtype=torch.bool)
    c[1, L - 1, 1] = True
    c[2, 0, 0] = True
    c[3] = torch.rand(L, H, generator=g) < 0.3
    c[4] = True
    return c


def engine_reference(lm, tools, heads, keys_fn=None) -> torch.Tensor:
    """The engine, caching only the tool block, with ``heads`` knocked out for every later query."""
    engine = ToolChoiceEngine(lm, batch_size=3, progress=False, prefix_end="tool_block")
    kw = knockout_kwargs(heads) if keys_fn is None else knockout_kwargs(heads, keys_fn)
    with use_toolattn(lm.model):
        out = engine.score(REQUESTS, tools, forward_kwargs=kw)
    return torch.tensor([[c.logprobs[t.name] for t in tools] for c in out])


def test_clean_equals_engine(runs, tiny, tools):
    got = ToolChoiceEngine(tiny, progress=False).score(REQUESTS, tools)
    ref = torch.tensor([[c.logprobs[t.name] for t in tools] for c in got])
    assert torch.allclose(runs.clean_scores, ref, atol=1e-4), (runs.clean_scores - ref).abs().max()


def test_knockout_equals_engine_and_full_prompt(runs, tiny, tools):
    cond = conditions(tiny)
    got = runs.run(cond)  # several conditions per pass, grouped by their lowest layer
    assert got.shape == (len(cond), len(REQUESTS), len(tools))
    for c in range(len(cond)):
        ref = engine_reference(tiny, tools, cond[c])
        assert torch.allclose(got[c], ref, atol=1e-4), (tiny.name, c, (got[c] - ref).abs().max())
    full, _ = full_prompt_scores(tiny, tools, REQUESTS, cond[3])
    assert torch.allclose(got[3], full, atol=1e-4), (tiny.name, (got[3] - full).abs().max())
    assert torch.allclose(got[0], runs.clean_scores, atol=1e-5)  # nothing knocked out
    assert (got[4] - runs.clean_scores).abs().max() > 1e-3  # every head: the scores move
    # one condition at a time gives the same numbers as the grouped pass
    for c in (1, 2):
        assert torch.allclose(runs.run(cond[c : c + 1])[0], got[c], atol=1e-5)


def test_key_variants(tiny, tools):
    ko = HeadKnockout(tiny, tools, REQUESTS[:3], GOLD[:3], keys="span", batch_size=3)
    cond = conditions(tiny)[3:4]
    ref = engine_reference(tiny, tools, cond[0], span_keys)
    assert torch.allclose(ko.run(cond)[0], ref[:3], atol=1e-4)
    # a runner sharing the tool block of another, knocking out at other keys per call
    again = HeadKnockout(tiny, tools, REQUESTS[:3], GOLD[:3], batch_size=2, share=ko)
    assert again.tool_kv is ko.tool_kv
    assert torch.allclose(again.run(cond, keys="span")[0], ref[:3], atol=1e-4)
    with pytest.raises(ValueError, match="unknown knockout keys"):
        HeadKnockout(tiny, tools, REQUESTS[:1], GOLD[:1], keys="names")


def test_partial_candidates_under_knockout(runs, tiny, tools):
    """Scoring only some candidates in full: those equal the full runner under every condition, the others
    are upper bounds, and ``certified`` is true exactly where the best two of the full scores are the best
    two overall."""
    only = [{g, "read_file"} for g in GOLD]
    ko = HeadKnockout(tiny, tools, REQUESTS, GOLD, batch_size=2, max_rows=6, only=only, share=runs)
    cond = conditions(tiny)
    full, part = runs.run(cond), ko.run(cond)
    exact = ko.exact
    assert exact.shape == (len(REQUESTS), len(tools)) and exact.sum(1).min() >= 2
    for i, names in enumerate(only):
        assert {tools[j].name for j in range(len(tools)) if exact[i, j]} >= names
    assert torch.allclose(part[:, exact], full[:, exact], atol=1e-4)
    assert (part[:, ~exact] >= full[:, ~exact] - 1e-4).all()
    ok = certified(part, exact)
    top2 = full.topk(2, -1).indices
    truth = exact.expand_as(full).gather(-1, top2).all(-1)  # the true best two were scored in full
    assert (ok <= truth).all()  # certified implies exact
    assert torch.equal(ok[0], certified(ko.clean_scores, exact))


def test_atp_interpolation_and_derivative(runs, tiny, tools):
    cond = conditions(tiny)
    L, H = cond.shape[1:]
    for c in (1, 2):
        alpha = cond[c].float()
        assert torch.allclose(runs.interpolated(alpha), runs.run(cond[c : c + 1])[0], atol=1e-4)
    assert torch.allclose(runs.interpolated(torch.zeros(L, H)), runs.clean_scores, atol=1e-4)
    est = runs.atp()["atp"]
    gold = runs.gold
    eps = 1e-2
    for l, h in ((L - 1, 1), (0, 0), (L // 2, H - 1)):
        a = torch.zeros(L, H)
        a[l, h] = eps
        up, down = margin(runs.interpolated(a), gold).mean(), margin(runs.interpolated(-a), gold).mean()
        fd = float(up - down) / (2 * eps)
        assert est[l, h] == pytest.approx(fd, rel=0.05, abs=2e-4), (tiny.name, l, h, est[l, h], fd)


def test_graddrop_last_group_is_absolute_atp(runs, tiny):
    L = model_dims(tiny.model)["layers"]
    out = runs.atp(graddrop=2)
    last = out["groups"][-1]
    assert np.allclose(out["graddrop"][last], np.abs(out["atp"][last]), atol=1e-5)
    first = out["groups"][0]  # below the last group, dropping a later group changes the estimate
    seen = np.abs(out["atp"][first]) > 1e-5  # heads that can see the tool block (not sliding-window ones)
    if seen.any():
        assert not np.allclose(out["graddrop"][first][seen], np.abs(out["atp"][first][seen]), atol=1e-6)
    else:
        assert np.abs(out["graddrop"][first]).max() < 1e-5
    assert runs.atp(graddrop=L)["graddrop"].shape == out["atp"].shape


def test_atp_tracks_knockout(runs, tiny):
    """On a tiny random model the knockout effects are small, so the linear estimate should rank the
    heads almost as the exhaustive knockout does."""
    from scipy.stats import spearmanr

    d = model_dims(tiny.model)
    L, H = d["layers"], d["heads"]
    heads = torch.eye(L * H, dtype=torch.bool).reshape(L * H, L, H)
    scores = runs.run(heads)
    actual = (margin(scores, runs.gold) - margin(runs.clean_scores, runs.gold)).mean(1).numpy()
    est = runs.atp()["atp"].reshape(-1)
    moved = np.abs(actual) > 1e-5  # heads of sliding-window layers cannot see the tool block: no effect
    assert np.abs(est[~moved]).max(initial=0) < 1e-4
    rho = spearmanr(est[moved], actual[moved]).statistic
    assert rho > 0.8 and np.corrcoef(est, actual)[0, 1] > 0.9, (tiny.name, rho)
