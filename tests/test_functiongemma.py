"""FunctionGemma's own format: developer turn with declarations, `call:NAME{...}` replies with
<escape>-delimited strings; forced choice scores the name after `call:`; parsing and stopping."""

import pytest

from toolattn.models import get_spec, load_model
from toolattn.parsing import functiongemma_args, parse_call, reply_decided
from toolattn.prompts import FUNCTIONGEMMA_SYSTEM, PromptFormatter
from toolattn.scoring import ToolChoiceEngine, naive_choice

REQUESTS = ["What's the weather in Paris today?", "hi",
            "Look up the history of the Eiffel tower on the web, I need it for homework and a lot more detail"]


@pytest.fixture(scope="module")
def fg():
    return load_model("tiny-functiongemma")


def test_registry_entry_uses_the_format():
    assert get_spec("functiongemma-270m").call_format == "functiongemma"


def test_prompt_has_developer_turn_and_declarations(fg, tools):
    fm = PromptFormatter.for_model(fg)
    f = fm.format(REQUESTS[0], tools)
    assert f.text.startswith("<bos><start_of_turn>developer\n" + FUNCTIONGEMMA_SYSTEM + "<start_function_declaration>")
    assert f.text.count("<start_function_declaration>declaration:") == len(tools)
    assert "description:<escape>" + tools[0].description + "<escape>" in f.text
    for t, span in zip(tools, f.tools):
        assert fg.tokenizer.decode(f.input_ids[slice(*span.name_span)]) == t.name
        assert fg.tokenizer.decode(f.input_ids[slice(*span.description_span)]) == t.description
    assert fg.tokenizer.decode(f.input_ids[: f.tool_block_end]).endswith("<end_function_declaration>")
    # the prompt ends in the call prefix; the candidate is the name, closed by "{"
    assert fg.tokenizer.decode(f.input_ids[f.prompt_len:]) == "<start_function_call>call:"
    assert fg.tokenizer.decode(fm.candidate_ids(f, "get_weather")) == "get_weather{"
    assert fm.call_open_ids() == [fg.tokenizer.convert_tokens_to_ids("<start_function_call>")]


def test_engine_equals_naive(fg, tools):
    got = ToolChoiceEngine(fg, batch_size=2, progress=False).score(REQUESTS, tools)
    for r, g in zip(REQUESTS, got):
        ref = naive_choice(fg, r, tools)
        assert all(abs(ref.logprobs[k] - g.logprobs[k]) < 1e-4 for k in ref.logprobs)
        assert abs(ref.p_tool - g.p_tool) < 1e-5 and ref.choice == g.choice


def test_generation_stops_at_the_end_of_a_call(fg):
    engine = ToolChoiceEngine(fg, progress=False)
    vocab = fg.tokenizer.get_vocab()
    assert {vocab["<end_function_call>"], vocab["<start_function_response>"], vocab["<end_of_turn>"]} <= engine.stop_ids()


def test_parse_functiongemma_calls():
    reply = "<start_function_call>call:get_weather{location:<escape>Tokyo, {Japan}<escape>,days:3}<end_function_call>"
    p = parse_call(reply)
    assert (p.kind, p.name, p.valid_json) == ("function_call", "get_weather", True)
    assert functiongemma_args("{location:<escape>Tokyo, {Japan}<escape>,days:3}") == {"location": "Tokyo, {Japan}",
                                                                                        "days": 3}
    assert parse_call("<start_function_call>call:search_web{query:<escape>x").name == "search_web"  # truncated
    assert not parse_call("<start_function_call>call:search_web{query:<escape>x").valid_json
    assert parse_call("<start_function_call>read_file\n{}<end_function_call>").name == "read_file"  # the child's
    assert not reply_decided("<start_function_call>cal")
    assert not reply_decided("<start_function_call>call:get_wea")
    assert reply_decided("<start_function_call>call:get_weather{")
