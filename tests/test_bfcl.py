"""BFCL data: the pinned wheel's files, functions as tools, request filtering, grouping, sampling,
and formatting of BFCL tools (names with dots, descriptions that need JSON escaping)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import zipfile
from collections import Counter

import pytest

from toolattn import bfcl
from toolattn.bfcl import BfclRequest
from toolattn.errors import one_line
from toolattn.prompts import PromptFormatter, _find_rendered, _token_span
from toolattn.tools import Tool, core_tools

DELIMITERS = ' \n\t"\':,{}<>'


def fn(name, description="Does a thing.", params=None):
    params = params if params is not None else {
        "type": "dict", "properties": {"x": {"type": "float", "description": "A number."}}, "required": ["x"]}
    return {"name": name, "description": description, "parameters": params}


def user(text):
    return [[{"role": "user", "content": text}]]


TRIANGLE = fn("math.triangle_area", "Area of a triangle from base and height.", {
    "type": "dict", "properties": {"base": {"type": "integer", "description": "Base."},
                                   "height": {"type": "integer", "description": "Height."}},
    "required": ["base", "height"]})
CIRCLE = fn("math.circle_area", "Area of a circle from its radius.")
TWO = [TRIANGLE, CIRCLE]

# (request line, gold calls or None when the id has no line in possible_answer)
MULTIPLE = [
    ({"id": "m_0", "question": user("Area of a triangle with base 3 and height 4?"), "function": TWO},
     [{"math.triangle_area": {"base": [3], "height": [4]}}]),
    ({"id": "m_1", "question": user("Area of a circle of radius 2?"), "function": TWO},
     [{"math.circle_area": {"x": [2.0]}}]),
    ({"id": "m_2", "question": [[{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "Circle of radius 1?"}]], "function": TWO},
     [{"math.circle_area": {"x": [1.0]}}]),
    ({"id": "m_3", "question": [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                 {"role": "user", "content": "Circle of radius 1?"}]], "function": TWO},
     [{"math.circle_area": {"x": [1.0]}}]),
    ({"id": "m_4", "question": user("Circle of radius 1?"), "function": []}, [{"math.circle_area": {}}]),
    ({"id": "m_5", "question": user("Circle of radius 1?"), "function": [TRIANGLE, fn("math.circle_area", "")]},
     [{"math.circle_area": {}}]),
    ({"id": "m_6", "question": user("Circle of radius 1?"), "function": [CIRCLE, CIRCLE]},
     [{"math.circle_area": {}}]),
    ({"id": "m_7", "question": user("Circle of radius 1?"), "function": TWO}, None),
    ({"id": "m_8", "question": user("Both areas?"), "function": TWO},
     [{"math.circle_area": {}}, {"math.triangle_area": {}}]),
    ({"id": "m_9", "question": user("Square of side 2?"), "function": TWO}, [{"math.square_area": {}}]),
    ({"id": "m_10", "question": user("Circle of radius 1?"),
      "function": [TRIANGLE, fn("math.circle_area", params={"type": "dict", "properties": {
          "r": {"type": "Widget", "description": "?"}}})]}, [{"math.circle_area": {}}]),
    # same names and descriptions as m_0, other parameters: another tool list
    ({"id": "m_11", "question": user("Triangle, base 5, height 6?"),
      "function": [fn("math.triangle_area", TRIANGLE["description"]), CIRCLE]},
     [{"math.triangle_area": {}}]),
    ({"id": "m_12", "question": user("Triangle, base 1, height 1?"), "function": TWO},
     [{"math.triangle_area": {}}]),
]
EXPECTED = {"not a single user message": ["m_2", "m_3"], "no function declared": ["m_4"],
            "function does not parse": ["m_5"], "duplicate function name": ["m_6"],
            "no gold answer": ["m_7", "m_8"], "gold not among the functions": ["m_9"],
            "unknown parameter type": ["m_10"]}

IRRELEVANCE = [
    {"id": "i_0", "question": user("Tell me a joke."), "function": [CIRCLE]},
    {"id": "i_1", "question": user("What is love?"), "function": TWO},
    {"id": "i_2", "question": [[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]],
     "function": TWO},
    {"id": "i_3", "question": user("Nothing at all."), "function": []},
]


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def fixture_files() -> dict[str, bytes]:
    """The five data files (names relative to the wheel's data folder)."""
    gold = [{"id": r["id"], "ground_truth": g} for r, g in MULTIPLE if g is not None]
    return {
        "BFCL_v4_multiple.json": jsonl([r for r, _ in MULTIPLE]),
        "BFCL_v4_live_multiple.json": jsonl([r for r, _ in MULTIPLE[:2]]),
        "BFCL_v4_live_irrelevance.json": jsonl(IRRELEVANCE),
        "possible_answer/BFCL_v4_multiple.json": jsonl(gold),
        "possible_answer/BFCL_v4_live_multiple.json": jsonl(gold[:2]),
    }


@pytest.fixture
def data_folder(tmp_path):
    for name, data in fixture_files().items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    return tmp_path


def make_wheel(path, files=None) -> str:
    """A zip shaped like the bfcl-eval wheel; returns its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("bfcl_eval/__init__.py", "")
        for name, data in (files or fixture_files()).items():
            z.writestr(bfcl.MEMBER_ROOT + name, data)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def no_pip(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pip must not run when a wheel is placed")
    monkeypatch.setattr(bfcl.subprocess, "run", refuse)


# -- schemas and tools ---------------------------------------------------------------------------

def test_to_schema_converts_types_recursively():
    params = {"type": "dict", "required": ["point"], "properties": {
        "point": {"type": "tuple", "description": "x, y", "items": {"type": "float"}, "default": [0.5, 1]},
        "opts": {"type": "dict", "description": "Options.", "properties": {
            "type": {"type": "str", "enum": ["a", "b"]},  # a property named "type"
            "data": {"type": "any", "description": "Anything."},
            "rows": {"type": "list", "items": {"type": "dict", "properties": {"n": {"type": "int"}}}},
            "flag": {"type": "bool", "default": False, "optional": True},
            "ok": {"type": "number"}}}}}
    unknown: list[str] = []
    out = bfcl.to_schema(params, unknown)
    assert out == {"type": "object", "required": ["point"], "properties": {
        "point": {"type": "array", "description": "x, y", "items": {"type": "number"}, "default": [0.5, 1]},
        "opts": {"type": "object", "description": "Options.", "properties": {
            "type": {"type": "string", "enum": ["a", "b"]},
            "data": {"description": "Anything."},
            "rows": {"type": "array", "items": {"type": "object", "properties": {"n": {"type": "integer"}}}},
            "flag": {"type": "boolean", "default": False, "optional": True},
            "ok": {"type": "number"}}}}}
    assert unknown == []
    assert params["type"] == "dict" and params["properties"]["point"]["type"] == "tuple"  # input untouched
    assert list(out["properties"]["opts"]["properties"]) == ["type", "data", "rows", "flag", "ok"]


def test_to_tool_records_unknown_types_and_rejects_bad_functions():
    tool, unknown = bfcl.to_tool(fn("a.b", params={"type": "dict", "properties": {"w": {"type": "Widget"}}}))
    assert tool == Tool("a.b", "Does a thing.", {"type": "object", "properties": {"w": {"type": "Widget"}}},
                        False, "bfcl")
    assert unknown == ["Widget"]
    for bad in (fn("", "x"), fn("a", "  "), {"name": "a", "description": "x", "parameters": []}, "a"):
        with pytest.raises(ValueError):
            bfcl.to_tool(bad)


def test_the_child_format_declares_untyped_and_union_parameters():
    """BFCL's "any" drops a parameter's type and a list of types stays a list (JSON Schema); the tuned
    child's template, which writes a type per parameter, declares them as "any" and "a or b"."""
    from transformers.utils.chat_template_utils import render_jinja_template

    from toolattn.finetune import TEMPLATE_FILE

    tool, unknown = bfcl.to_tool(fn("a.b", params={"type": "dict", "properties": {
        "x": {"type": "any", "description": "anything"}, "y": {"type": ["string", "integer"]}, "z": {"type": "str"}}}))
    assert unknown == [] and "type" not in tool.parameters["properties"]["x"]
    out, _ = render_jinja_template(conversations=[[{"role": "user", "content": "hi"}]], tools=[tool.schema()],
                                   chat_template=TEMPLATE_FILE.read_text(), add_generation_prompt=True, bos_token="")
    assert "a.b: Does a thing. (x: any, y: string or integer, z: string)\n" in out[0]


# -- loading -------------------------------------------------------------------------------------

def test_load_keeps_good_requests_and_names_every_exclusion(data_folder):
    s = bfcl.load("multiple", folder=data_folder)
    assert [r.id for r in s.requests] == ["m_0", "m_1", "m_11", "m_12"]
    assert {k: v for k, v in s.excluded.items() if v} == EXPECTED
    counts = s.counts()
    assert counts["raw"] == s.n_raw == len(MULTIPLE) and counts["kept"] == 4
    assert {k: counts[k] for k in bfcl.REASONS} == {k: len(EXPECTED.get(k, [])) for k in bfcl.REASONS}
    assert counts["kept"] + sum(counts[k] for k in bfcl.REASONS) == counts["raw"]


def test_load_reads_text_tools_and_gold(data_folder):
    r0, r1 = bfcl.load("multiple", folder=data_folder).requests[:2]
    assert r0 == BfclRequest("m_0", "multiple", "Area of a triangle with base 3 and height 4?", r0.tools,
                             "math.triangle_area")
    assert r1.gold == "math.circle_area"
    assert [t.name for t in r0.tools] == ["math.triangle_area", "math.circle_area"]  # file order
    assert r0.tools[0].description == TRIANGLE["description"]
    assert r0.tools[1].parameters == {"type": "object", "properties": {
        "x": {"type": "number", "description": "A number."}}, "required": ["x"]}
    assert all(not t.core and t.group == "bfcl" for t in r0.tools)


def test_irrelevance_has_no_gold(data_folder):
    s = bfcl.load("live_irrelevance", folder=data_folder)
    assert [(r.id, r.gold, len(r.tools)) for r in s.requests] == [("i_0", None, 1), ("i_1", None, 2)]
    assert {k: v for k, v in s.excluded.items() if v} == {"not a single user message": ["i_2"],
                                                          "no function declared": ["i_3"]}


def test_bad_files_raise_one_line(data_folder):
    path = data_folder / "BFCL_v4_live_multiple.json"
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(ValueError, match=r"BFCL_v4_live_multiple\.json: line 3 is not JSON") as e:
        bfcl.load("live_multiple", folder=data_folder)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="unknown BFCL subset"):
        bfcl.load("simple", folder=data_folder)
    (data_folder / "BFCL_v4_multiple.json").unlink()
    with pytest.raises(FileNotFoundError, match="BFCL_v4_multiple.json: file not found"):
        bfcl.load("multiple", folder=data_folder)


# -- groups and sampling -------------------------------------------------------------------------

def test_groups_key_on_parameters_too(data_folder):
    s = bfcl.load("multiple", folder=data_folder)
    gs = bfcl.groups(s.requests)
    assert [[r.id for r in rs] for _, rs in gs] == [["m_0", "m_1", "m_12"], ["m_11"]]
    assert hash(gs[0][0]) == hash(gs[1][0])  # same names and descriptions, so the same hash ...
    assert gs[0][0] != gs[1][0] and bfcl.tools_key(gs[0][0]) != bfcl.tools_key(gs[1][0])  # ... other parameters
    assert all(r.tools == tools for tools, rs in gs for r in rs)


def synthetic(sizes: list[int]) -> list[BfclRequest]:
    tools = [Tool(f"f{k}", "d", {}, False, "bfcl") for k in range(12)]
    return [BfclRequest(f"r{i}", "multiple", "q", tuple(tools[:k]), "f0") for i, k in enumerate(sizes)]


def test_stratified_sample_is_deterministic_proportional_and_in_file_order():
    sizes = [2] * 40 + [3] * 30 + [4] * 20 + [5, 6, 7, 8, 9, 5, 6, 7] + [10, 11]
    sizes = [sizes[(i * 37) % 100] for i in range(100)]  # bins interleaved in file order
    reqs = synthetic(sizes)
    pos = {r.id: i for i, r in enumerate(reqs)}
    for n, want in ((10, {"2": 4, "3": 3, "4": 2, "5-9": 1}), (7, {"2": 3, "3": 2, "4": 1, "5-9": 1})):
        a = bfcl.stratified_sample(reqs, n, seed=0)
        assert a == bfcl.stratified_sample(reqs, n, seed=0)
        assert len(a) == n and Counter(bfcl.size_bin(len(r.tools)) for r in a) == want
        assert [pos[r.id] for r in a] == sorted(pos[r.id] for r in a)
    assert bfcl.stratified_sample(reqs, 30, 0) != bfcl.stratified_sample(reqs, 30, 1)
    assert bfcl.stratified_sample(reqs, 100, 0) == reqs == bfcl.stratified_sample(reqs, 500, 0)
    assert bfcl.stratified_sample(reqs, 0, 0) == []


def test_size_bins():
    assert [bfcl.size_bin(k) for k in (1, 2, 3, 4, 5, 9, 10, 37)] == ["1", "2", "3", "4", "5-9", "5-9", "10+", "10+"]


# -- the wheel -----------------------------------------------------------------------------------

def test_data_dir_follows_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TOOLATTN_CACHE", str(tmp_path))
    assert bfcl.data_dir() == tmp_path / "bfcl" / bfcl.VERSION


def test_ensure_data_from_a_placed_wheel(monkeypatch, tmp_path, no_pip):
    folder = tmp_path / "bfcl" / bfcl.VERSION
    monkeypatch.setattr(bfcl, "WHEEL_SHA256", make_wheel(folder / bfcl.WHEEL_NAME))
    assert bfcl.ensure_data(folder) == folder
    for name, data in fixture_files().items():
        assert (folder / name).read_bytes() == data
    source = json.loads((folder / "source.json").read_text())
    assert source["wheel_sha256"] == bfcl.WHEEL_SHA256 and set(source["files"]) == set(bfcl.FILES)
    assert bfcl.load("multiple", folder=folder).counts()["kept"] == 4
    # a complete folder is used as it is; a changed file makes it incomplete, and it is extracted again
    monkeypatch.setattr(bfcl, "_extract", lambda *a: pytest.fail("extracted a complete folder"))
    bfcl.ensure_data(folder)
    monkeypatch.undo()
    monkeypatch.setattr(bfcl, "WHEEL_SHA256", source["wheel_sha256"])
    (folder / "BFCL_v4_multiple.json").write_text("changed\n")
    assert not bfcl.is_complete(folder)
    bfcl.ensure_data(folder)
    assert bfcl.is_complete(folder) and (folder / "BFCL_v4_multiple.json").read_bytes() == \
        fixture_files()["BFCL_v4_multiple.json"]


def test_a_wrong_wheel_raises_with_both_hashes(monkeypatch, tmp_path, no_pip):
    folder = tmp_path / "data"
    got = make_wheel(folder / bfcl.WHEEL_NAME)
    monkeypatch.setattr(bfcl, "WHEEL_SHA256", "0" * 64)
    with pytest.raises(ValueError) as e:
        bfcl.ensure_data(folder)
    msg = one_line(e.value)
    assert got in msg and "0" * 64 in msg and str(folder / bfcl.WHEEL_NAME) in msg and "\n" not in str(e.value)
    assert not (folder / "source.json").exists() and not (folder / "BFCL_v4_multiple.json").exists()


def test_an_interrupted_extraction_is_not_complete(monkeypatch, tmp_path, no_pip):
    folder = tmp_path / "data"
    monkeypatch.setattr(bfcl, "WHEEL_SHA256", make_wheel(folder / bfcl.WHEEL_NAME))
    real, calls = bfcl.atomic_write, []

    def failing(path, data):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        real(path, data)

    monkeypatch.setattr(bfcl, "atomic_write", failing)
    with pytest.raises(OSError, match="disk full"):
        bfcl.ensure_data(folder)
    assert (folder / bfcl.FILES[0]).exists() and not (folder / "source.json").exists()
    assert not bfcl.is_complete(folder)
    monkeypatch.setattr(bfcl, "atomic_write", real)
    bfcl.ensure_data(folder)
    assert bfcl.is_complete(folder)


def test_no_network_says_where_to_place_the_wheel(monkeypatch, tmp_path):
    folder = tmp_path / "cache" / "data"
    seen = []

    def offline(cmd, **kwargs):
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "WARNING: Retrying...\nERROR: No matching distribution "
                                                        "found for bfcl-eval==2026.3.23\n")

    monkeypatch.setattr(bfcl.subprocess, "run", offline)
    with pytest.raises(OSError) as e:
        bfcl.ensure_data(folder)
    msg = str(e.value)
    assert "\n" not in msg and f"bfcl-eval=={bfcl.VERSION}" in msg and "PyPI" in msg
    assert str(folder / bfcl.WHEEL_NAME) in msg and "No matching distribution" in msg
    assert "download" in seen[0] and f"bfcl-eval=={bfcl.VERSION}" in seen[0]
    assert sorted(p.name for p in folder.parent.iterdir()) == ["data"]  # the temporary folder is gone


def test_a_downloaded_wheel_is_verified_and_removed(monkeypatch, tmp_path):
    folder = tmp_path / "cache" / "data"
    source = tmp_path / "pypi" / bfcl.WHEEL_NAME
    monkeypatch.setattr(bfcl, "WHEEL_SHA256", make_wheel(source))

    def download(cmd, **kwargs):
        into = cmd[cmd.index("-d") + 1]
        (tmp_path / into / bfcl.WHEEL_NAME).write_bytes(source.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(bfcl.subprocess, "run", download)
    bfcl.ensure_data(folder)
    assert bfcl.is_complete(folder) and not (folder / bfcl.WHEEL_NAME).exists()
    assert sorted(p.name for p in folder.parent.iterdir()) == ["data"]


# -- formatting ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_formatters():
    from toolattn.models import load_model

    return {n: PromptFormatter.for_model(load_model(n)) for n in ("tiny-qwen2", "tiny-qwen3")}


def old_spans(fm, text, tools):
    """Spans by the raw-text search alone (the behaviour for text that needs no escaping)."""
    from toolattn.prompts import _tool_block_start

    _, offsets = fm.encode(text)
    out, cursor = [], _tool_block_start(text)
    for t in tools:
        n0 = text.find(t.name, cursor)
        d0 = text.find(t.description, n0 + len(t.name))
        cursor = d0 + len(t.description)
        out.append((_token_span(offsets, n0, n0 + len(t.name)), _token_span(offsets, d0, cursor)))
    return out


def test_escaped_description_span(tiny_formatters):
    fm = tiny_formatters["tiny-qwen2"]
    core = core_tools()
    quoted = Tool("say_quote", 'Say "hello" to someone\nthen stop.', {"type": "object", "properties": {}},
                  False, "bfcl")
    request = "What's the weather like in Oslo right now?"
    f = fm.format(request, core + [quoted])
    s = f.tools[-1]
    escaped = json.dumps(quoted.description, ensure_ascii=False)[1:-1]
    assert escaped in f.text and quoted.description not in f.text
    assert fm.tok.decode(f.input_ids[slice(*s.description_span)]).strip(DELIMITERS) == escaped
    assert fm.tok.decode(f.input_ids[slice(*s.name_span)]).strip(DELIMITERS) == "say_quote"
    # the core tools' spans are those of the raw search, and those of the prompt without the new tool
    assert [(s.name_span, s.description_span) for s in f.tools[:10]] == old_spans(fm, f.text, core)
    f0 = fm.format(request, core)
    assert [(s.name_span, s.description_span) for s in f0.tools] == old_spans(fm, f0.text, core)
    assert [(s.name_span, s.description_span) for s in f.tools[:10]] == \
        [(s.name_span, s.description_span) for s in f0.tools]


def test_find_rendered_forms():
    s = 'a "b" é\\c'
    escaped, ascii_escaped = json.dumps(s, ensure_ascii=False)[1:-1], json.dumps(s)[1:-1]
    for text, form in ((f"x{s}y", s), (json.dumps({"d": s}, ensure_ascii=False), escaped),
                       (json.dumps({"d": s}), ascii_escaped)):
        i, n = _find_rendered(text, s, 0, len(text))
        assert text[i:i + n] == form
    assert _find_rendered("plain text", "missing", 0, 10) == (-1, len("missing"))
    # the raw form after the limit (in the request) loses to the escaped form in the tool block
    text = json.dumps({"d": s}, ensure_ascii=False) + " request: " + s
    i, n = _find_rendered(text, s, 0, text.index(" request"))
    assert text[i:i + n] == json.dumps(s, ensure_ascii=False)[1:-1]


@pytest.mark.parametrize("model", ["tiny-qwen2", "tiny-qwen3"])
def test_bfcl_tools_format(tiny_formatters, data_folder, model):
    fm = tiny_formatters[model]
    for r in bfcl.load("multiple", folder=data_folder).requests:
        f = fm.format(r.text, list(r.tools))
        assert [s.name for s in f.tools] == [t.name for t in r.tools]
        for t, s in zip(r.tools, f.tools):
            assert fm.tok.decode(f.input_ids[slice(*s.name_span)]).strip(DELIMITERS) == t.name  # math.triangle_area
            assert fm.tok.decode(f.input_ids[slice(*s.description_span)]).strip(DELIMITERS) == t.description
        assert json.dumps(r.tools[0].parameters, ensure_ascii=False) in f.text  # converted schema is rendered
        assert f.tools[-1].span[1] <= f.tool_block_end <= f.prefix_len < f.prompt_len
        assert fm.tok.decode(fm.candidate_ids(f, r.gold)).strip() == (r.gold + fm.name_suffix).strip()
