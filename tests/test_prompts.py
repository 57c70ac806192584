"""Token spans map to exactly each tool's text, for every tokenizer family."""

import pytest

from conftest import real_tokenizer
from toolattn.models import get_spec
from toolattn.prompts import PromptFormatter
from toolattn.tools import load_catalog

DELIMITERS = ' \n\t"\':,{}<>'
REQUESTS = ["What's the weather like in Oslo right now?", "hi", "Please email Sam that the build is green."]


def formatters(tiny_models):
    out = [(lm.name, PromptFormatter(lm.tokenizer, lm.spec.prompt_format, lm.spec.family)) for lm in tiny_models]
    for name in ("qwen2.5-coder-1.5b", "gemma-3-270m"):
        spec = get_spec(name)
        out.append((name, PromptFormatter(real_tokenizer(name), spec.prompt_format, spec.family,
                                          spec.call_prefix or None)))
    return out


@pytest.fixture(scope="module")
def all_formatters():
    from toolattn.models import load_model

    return formatters([load_model(n) for n in ("tiny-qwen2", "tiny-qwen3", "tiny-gemma3")])


@pytest.mark.parametrize("n_tools", [10, 50])
def test_spans_decode_to_tool_text(all_formatters, n_tools):
    tools = load_catalog()[:n_tools]
    for name, fm in all_formatters:
        f = fm.format(REQUESTS[0], tools)
        assert [s.name for s in f.tools] == [t.name for t in tools]
        for t, s in zip(tools, f.tools):
            name_text = fm.tok.decode(f.input_ids[slice(*s.name_span)])
            desc_text = fm.tok.decode(f.input_ids[slice(*s.description_span)])
            # spans are whole tokens: they may carry a delimiter (quote, space) fused into the first token
            assert name_text.strip(DELIMITERS) == t.name, (name, name_text)
            assert desc_text.strip(DELIMITERS) == t.description, (name, desc_text)
            assert s.name_span[1] <= s.description_span[0]
        spans = [s.span for s in f.tools]
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), "tool spans overlap"
        assert spans[-1][1] <= f.tool_block_end <= f.prefix_len < f.prompt_len


def test_prefix_is_shared_and_positions(all_formatters, tools):
    for name, fm in all_formatters:
        fs = [fm.format(r, tools) for r in REQUESTS]
        p = fs[0].prefix_len
        assert all(f.prefix_len == p and f.input_ids[:p] == fs[0].input_ids[:p] for f in fs), name
        for f, r in zip(fs, REQUESTS):
            # the request text lies after the prefix; the call prefix ends the input
            assert r.split()[-1].strip("?.!") in fm.tok.decode(f.input_ids[p : f.prompt_len]), name
            assert fm.tok.decode(f.input_ids[f.prompt_len :]).strip() == fm.call_prefix.strip(), name
            assert f.decision_position == len(f.input_ids) - 1 and f.reply_position == f.prompt_len - 1


def test_candidates_are_closed_names(all_formatters, tools):
    for name, fm in all_formatters:
        f = fm.format(REQUESTS[1], tools)
        for t in tools:
            text = fm.tok.decode(fm.candidate_ids(f, t.name))
            assert text.strip() == (t.name + fm.name_suffix).strip(), (name, text)
