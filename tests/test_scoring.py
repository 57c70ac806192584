"""The batched, prefix-cached engine equals a naive full forward; generation equals HF greedy decoding."""

import pytest
import torch

from toolattn.scoring import ToolChoiceEngine, naive_choice

# Long enough that prompts exceed the tiny Gemma3 sliding window (32 tokens) several times over.
REQUESTS = [
    "What's the weather in Paris today?",
    "Look up the history of the Eiffel tower on the web, I need it for homework and a lot more detail",
    "hi",
    "Open notes.txt and show me what it says",
    "Translate 'good night' into Spanish",
]


@pytest.mark.parametrize("batch_size,prefix_end", [(1, "shared"), (3, "shared"), (3, "tool_block")])
def test_engine_equals_naive(tiny, tools, batch_size, prefix_end):
    engine = ToolChoiceEngine(tiny, batch_size=batch_size, progress=False, prefix_end=prefix_end)
    got = engine.score(REQUESTS, tools)
    for r, g in zip(REQUESTS, got):
        ref = naive_choice(tiny, r, tools)
        for name in ref.logprobs:
            assert abs(ref.logprobs[name] - g.logprobs[name]) < 1e-4, (tiny.name, r, name)
        assert abs(ref.p_tool - g.p_tool) < 1e-4
        assert ref.choice == g.choice


def test_generation_equals_hf_greedy(tiny, tools):
    engine = ToolChoiceEngine(tiny, batch_size=3, progress=False)
    got = engine.generate(REQUESTS[:3], tools, max_new_tokens=6, return_ids=True)
    for r, ids_got in zip(REQUESTS[:3], got):
        f = engine.formatter.format(r, tools)
        ids = torch.tensor([f.input_ids[: f.prompt_len]], device=tiny.model.device)
        with torch.inference_mode():
            out = tiny.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                                      pad_token_id=0)
        ref = out[0, ids.shape[1]:].tolist()
        assert len(ids_got) >= 1 and ids_got == ref[: len(ids_got)], (tiny.name, r)


def test_a_request_whose_first_token_is_a_space_shares_the_shorter_prefix(tools):
    """The tiny Gemma3 tokenizer gives "Why ..." a token of its own for the space before it, so that
    request's prefix is one token longer; whichever request comes first, the engine caches what all
    share and scores, generates and knocks out as a naive forward does."""
    from toolattn.models import load_model

    lm = load_model("tiny-gemma3")
    texts = ["Why is the sky blue?", "Tell me a joke"]
    engine = ToolChoiceEngine(lm, batch_size=2, progress=False)
    lens = [f.prefix_len for f in engine.format(texts, tools)]
    assert lens[0] == lens[1] + 1  # the case under test
    for order in (texts, texts[::-1]):
        for r, g in zip(order, engine.score(order, tools)):
            ref = naive_choice(lm, r, tools)
            assert max(abs(ref.logprobs[n] - g.logprobs[n]) for n in ref.logprobs) < 1e-4
        assert engine.generate(order, tools, max_new_tokens=3) == [engine.generate([r], tools, max_new_tokens=3)[0]
                                                                   for r in order]


def test_prefix_mismatch_is_an_error(tiny, tools):
    engine = ToolChoiceEngine(tiny, batch_size=2, progress=False)
    fs = engine.format(REQUESTS[:1], tools) + engine.format(REQUESTS[:1], tools[::-1])
    prefix = engine.prefix(tools, fs[0])
    with pytest.raises(ValueError, match="prefix"):
        engine._score_batch(fs, prefix, tools, [[1]] * len(tools), [0])


def test_partial_scoring_gives_exact_scores_and_upper_bounds(tiny, tools):
    """Candidates scored in full equal the full engine; the others carry their first-token log-probability,
    which is never below their full score."""
    engine = ToolChoiceEngine(tiny, batch_size=2, progress=False)
    ref = engine.score(REQUESTS, tools)
    only = [tools[3].name, tools[7].name]
    got = engine.score(REQUESTS, tools, only=only)
    for r, g in zip(ref, got):
        assert sorted(g.logprobs) == sorted(only) and set(g.bounds) == {t.name for t in tools} - set(only)
        for name in only:
            assert abs(g.logprobs[name] - r.logprobs[name]) < 1e-4
        for name, bound in g.bounds.items():
            assert bound >= r.logprobs[name] - 1e-4
        assert g.certified == (max(g.bounds.values()) < max(g.logprobs.values()))
        assert abs(g.p_tool - r.p_tool) < 1e-4


@pytest.mark.parametrize("slack", [0.0, 4.0])
def test_choose_equals_full_forced_choice(tiny, catalog_tools, slack):
    """On the 50-tool catalog, pruned forced choice gives the full choice, gold score and best other score
    (slack 0 leaves the fewest candidates, so certification and the fallback are exercised)."""
    engine = ToolChoiceEngine(tiny, batch_size=3, progress=False)
    gold = [t.name for t in catalog_tools[: len(REQUESTS)]]
    ref = engine.score(REQUESTS, catalog_tools)
    got = engine.choose(REQUESTS, catalog_tools, gold, slack=slack)
    for r, g, name in zip(ref, got, gold):
        assert g.choice == r.choice and g.certified and g.runner_up_certified()
        assert abs(g.logprobs[name] - r.logprobs[name]) < 1e-4
        best_other = lambda c: max(v for n, v in c.logprobs.items() if n != name)  # noqa: E731
        assert abs(best_other(g) - best_other(r)) < 1e-4
    assert engine.fallbacks == 0  # the deepening round certifies the best and the second best


def test_rescoring_on_kept_keys_equals_scoring_again(tiny, catalog_tools):
    """Scoring more candidates on each request's kept keys/values (only the name tokens run) equals
    scoring them with the request run again: every candidate of the 50-tool catalog, and a subset."""
    engine = ToolChoiceEngine(tiny, batch_size=3, progress=False)
    ref = engine.score(REQUESTS, catalog_tools)
    kept: list = []
    first = engine.score(REQUESTS, catalog_tools, only=[], keep=kept)
    assert len(kept) == len(REQUESTS)
    names = [t.name for t in catalog_tools]
    per_row = [names[i : i + 3 * (i + 1)] for i in range(len(REQUESTS))]  # each request its own candidates
    for only in (names, names[5:9], per_row):
        got = engine.rescore(REQUESTS, catalog_tools, first, kept, only)
        if only is per_row:  # a row scores its own candidates (and the one-token names), not its batch's
            assert all(set(g.logprobs) == set(o) | set(f.logprobs) for g, o, f in zip(got, only, first))
            only = []
        for r, g in zip(ref, got):
            assert set(only) <= set(g.logprobs) and set(g.logprobs) | set(g.bounds) == set(names)
            assert all(abs(g.logprobs[n] - r.logprobs[n]) < 1e-4 for n in g.logprobs)
            assert all(b >= r.logprobs[n] - 1e-4 for n, b in g.bounds.items())
            assert g.p_tool == r.p_tool or abs(g.p_tool - r.p_tool) < 1e-4
