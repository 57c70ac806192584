from toolattn.parsing import opening, parse_call


def test_call_forms():
    assert parse_call('<tool_call>\n{"name": "get_weather", "arguments": {"location": "Oslo"}}\n</tool_call>').name == "get_weather"
    assert parse_call('<tool_call>\n{"name": "get_weather", "arguments": {"location": "Oslo"}}\n</tool_call>').valid_json
    assert parse_call('```json\n{\n  "name": "search_web",\n  "arguments"').name == "search_web"
    assert parse_call('{"name": "read_file", "arguments": {}}').kind == "json"
    assert parse_call(" CALL send_email\n").name == "send_email"


def test_non_calls():
    assert parse_call("The sky is blue because of Rayleigh scattering.").name is None
    assert parse_call("```python\nprint('hi')\n```").name is None
    assert parse_call("Sure! CALL me later").name is None


def test_opening():
    assert [opening(s) for s in ["<tool_call>x", "```json", "{", " CALL x", "Hello"]] == [
        "tool_call", "fence", "json", "call", "text"]


def test_reply_decided():
    from toolattn.parsing import reply_decided

    assert reply_decided("The sky")  # plain text: no call can follow
    assert not reply_decided("``")  # could still become a fence
    assert not reply_decided('```json\n{\n  "name": "get_wea')
    assert reply_decided('```json\n{\n  "name": "get_weather"')
    assert not reply_decided(" CALL get_weather") and reply_decided(" CALL get_weather\n")
    assert reply_decided("<tool_call>\n{\"name\": \"x\"")
