"""The tool catalog and prompt sets: committed files, loaders, validators, selection."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections import Counter

import pytest

from toolattn import paths
from toolattn.datasets import (
    Request,
    file_sha256,
    load_prompts,
    normalise,
    select,
    validate_prompts,
)
from toolattn.tools import core_tools, get_tool, load_catalog, tool_list, validate_catalog

# The plan's tool table, copied here on purpose (independent of toolattn.tools).
PLAN = [
    ("get_weather", "Get current weather for a location"),
    ("search_web", "Search the web for information"),
    ("read_file", "Read contents of a file"),
    ("write_file", "Write content to a file"),
    ("run_code", "Execute Python code"),
    ("send_email", "Send an email to a recipient"),
    ("get_calendar", "Get calendar events for a date"),
    ("create_reminder", "Create a reminder for a specific time"),
    ("search_database", "Query a database"),
    ("translate_text", "Translate text between languages"),
]


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@pytest.fixture(scope="module")
def requests():
    return load_prompts()


# --- catalog ------------------------------------------------------------------------

def test_catalog_validates(catalog):
    assert validate_catalog(catalog) == []


def test_catalog_shape(catalog):
    assert len(catalog) == 50
    assert [(t.name, t.description) for t in catalog[:10]] == PLAN
    assert [(t.name, t.description) for t in core_tools(catalog)] == PLAN
    assert all(t.core for t in catalog[:10]) and not any(t.core for t in catalog[10:])
    assert len({t.name for t in catalog}) == 50
    for t in catalog[10:]:
        assert 4 <= len(t.description.split()) <= 12, t.name


def test_near_neighbours_share_groups(catalog):
    group = {t.name: t.group for t in catalog}
    assert group["get_weather_forecast"] == group["get_weather"]
    assert group["search_news"] == group["search_web"]
    assert group["send_sms"] == group["send_email"]
    assert group["set_timer"] == group["create_reminder"]
    assert group["list_directory"] == group["read_file"] == group["write_file"]


def test_schema_and_get_tool(catalog):
    s = get_tool("send_email", catalog).schema()
    assert s["type"] == "function"
    assert s["function"]["name"] == "send_email"
    assert s["function"]["parameters"]["required"] == ["to", "body"]
    with pytest.raises(KeyError, match="get_weather"):
        get_tool("teleport", catalog)


def test_validate_catalog_catches_problems(catalog):
    dup = catalog[:-1] + [catalog[3]]
    assert any("duplicate" in p for p in validate_catalog(dup))
    assert any("50" in p for p in validate_catalog(catalog[:-1]))
    renamed = [dataclasses.replace(catalog[0], description="Get the weather")] + catalog[1:]
    assert validate_catalog(renamed)
    bad_schema = catalog[:-1] + [dataclasses.replace(catalog[-1], parameters={"type": "string"})]
    assert any("parameters" in p for p in validate_catalog(bad_schema))
    bad_required = dict(catalog[-1].parameters, required=["nope"])
    assert validate_catalog(catalog[:-1] + [dataclasses.replace(catalog[-1], parameters=bad_required)])


def test_load_catalog_malformed(tmp_path):
    bad = tmp_path / "tools.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="tools.json.*invalid JSON"):
        load_catalog(bad)
    bad.write_text(json.dumps({"tools": [{"name": "x"}]}))
    with pytest.raises(ValueError, match="description"):
        load_catalog(bad)
    with pytest.raises(ValueError, match="not found"):
        load_catalog(tmp_path / "missing.json")


# --- tool_list ----------------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 5, 10, 20, 50])
def test_tool_list(catalog, n):
    for gold in ("get_weather", "translate_text", "run_code"):
        lists = [tool_list(n, gold=gold, seed=s, catalog=catalog) for s in range(8)]
        for tools in lists:
            names = [t.name for t in tools]
            assert len(names) == n == len(set(names))
            assert gold in names
            if n <= 10:
                assert all(t.core for t in tools)
            else:
                assert sum(t.core for t in tools) == 10
        assert tool_list(n, gold=gold, seed=3, catalog=catalog) == lists[3]
        assert len({tuple(t.name for t in tools) for tools in lists}) > 1


def test_tool_list_gold_position_varies(catalog):
    positions = {[t.name for t in tool_list(5, "get_weather", s, catalog)].index("get_weather") for s in range(20)}
    assert len(positions) > 1


def test_tool_list_rejects_bad_input(catalog):
    with pytest.raises(ValueError):
        tool_list(51, catalog=catalog)
    with pytest.raises(ValueError):
        tool_list(5, gold="send_sms", catalog=catalog)
    assert "send_sms" in [t.name for t in tool_list(20, gold="send_sms", catalog=catalog)]


# --- prompts ------------------------------------------------------------------------

def test_prompts_validate(requests, catalog):
    assert validate_prompts(requests, catalog) == []


def test_prompt_counts(requests, catalog):
    per_tool = Counter(r.tool for r in requests if r.needs_tool)
    assert per_tool == {t.name: 50 for t in core_tools(catalog)}
    none = [r for r in requests if not r.needs_tool]
    assert len(none) >= 200
    cats = Counter(r.category for r in none)
    for cat in ("factual", "explanatory", "opinion", "chitchat"):
        assert cats[cat] >= 40
    assert set(cats) == {"factual", "explanatory", "opinion", "chitchat", "creative"}


def test_heldout_share(requests):
    classes = Counter(r.tool or "none" for r in requests)
    held = Counter(r.tool or "none" for r in requests if r.split == "heldout")
    for cls, n in classes.items():
        assert held[cls] / n >= 0.30, cls
        assert held[cls] == -(-35 * n // 100), cls  # exactly 35%, rounded up


def test_no_duplicate_texts(requests):
    keys = [normalise(r.text) for r in requests]
    assert len(keys) == len(set(keys))
    assert normalise("Hello,  World!") == normalise("hello world")


def test_build_script_reproduces_file(tmp_path):
    script = paths.DATA / "build_prompts.py"
    outs = []
    for i in range(2):
        out = tmp_path / f"p{i}.json"
        subprocess.run([sys.executable, str(script), "--out", str(out)], check=True, capture_output=True)
        outs.append(out)
    assert outs[0].read_bytes() == outs[1].read_bytes() == paths.PROMPTS_FILE.read_bytes()
    assert file_sha256(outs[0]) == file_sha256(paths.PROMPTS_FILE)


def test_load_prompts_malformed(tmp_path):
    bad = tmp_path / "prompts.json"
    bad.write_text('{"prompts": [')
    with pytest.raises(ValueError, match="build_prompts.py"):
        load_prompts(bad)
    bad.write_text(json.dumps({"prompts": [{"id": "a", "text": "b", "category": "tool", "split": "train"}]}))
    with pytest.raises(ValueError, match="'tool'"):
        load_prompts(bad)


def test_validate_prompts_catches_problems(requests, catalog):
    first = requests[0]
    dup_text = requests + [dataclasses.replace(first, id="extra/001", text=first.text.upper() + "!")]
    assert any("same text" in p for p in validate_prompts(dup_text, catalog))
    dup_id = requests + [dataclasses.replace(first, text="A brand new request text")]
    assert any("duplicate id" in p for p in validate_prompts(dup_id, catalog))
    unknown_gold = [dataclasses.replace(first, tool="teleport")] + requests[1:]
    assert any("not a core tool" in p for p in validate_prompts(unknown_gold, catalog))
    unbalanced = [r for r in requests if r.tool != "run_code" or r.id != "run_code/001"]
    assert any("run_code" in p and "49" in p for p in validate_prompts(unbalanced, catalog))
    no_weather = [r for r in requests if r.tool != "get_weather"]
    assert any("get_weather" in p for p in validate_prompts(no_weather, catalog))
    few_none = [r for r in requests if r.needs_tool or r.category != "creative"][:-20]
    assert any("no-tool" in p for p in validate_prompts(few_none, catalog))
    all_train = [dataclasses.replace(r, split="train") if r.tool == "send_email" else r for r in requests]
    assert any("held out" in p for p in validate_prompts(all_train, catalog))
    odd = [dataclasses.replace(first, split="dev", category="misc")] + requests[1:]
    problems = validate_prompts(odd, catalog)
    assert any("split" in p for p in problems) and any("category" in p for p in problems)


# --- select -------------------------------------------------------------------------

def test_select_deterministic_and_respects_args(requests):
    a = select(requests, split="heldout", n_per_tool=5, n_no_tool=10, seed=1)
    assert a == select(requests, split="heldout", n_per_tool=5, n_no_tool=10, seed=1)
    assert len(a) == 10 * 5 + 10
    assert all(r.split == "heldout" for r in a)
    assert Counter(r.tool for r in a if r.needs_tool) == {name: 5 for name, _ in PLAN}
    # grouped by tool in catalog order, then no-tool
    order = [r.tool or "~none" for r in a]
    assert order == [name for name, _ in PLAN for _ in range(5)] + ["~none"] * 10
    assert a != select(requests, split="heldout", n_per_tool=5, n_no_tool=10, seed=2)
    # a smaller subset is contained in a larger one
    bigger = select(requests, split="heldout", n_per_tool=10, n_no_tool=20, seed=1)
    assert set(r.id for r in a) <= set(r.id for r in bigger)


def test_select_defaults_and_filters(requests):
    assert len(select(requests)) == 500
    assert len(select(requests, n_no_tool=None)) == len(requests)
    train = select(requests, split="train", tools=["read_file", "get_weather"])
    assert [r.tool for r in train] == ["get_weather"] * 32 + ["read_file"] * 32
    assert select(requests, tools=[], n_no_tool=None) == [r for r in requests if not r.needs_tool]
    with pytest.raises(ValueError):
        select(requests, split="heldout", n_per_tool=19)
    with pytest.raises(ValueError):
        select(requests, tools=["send_sms"])


def test_request_needs_tool():
    assert Request("a", "hi", None, "chitchat", "train").needs_tool is False
    assert Request("b", "weather?", "get_weather", "tool", "train").needs_tool is True


def test_file_sha256(tmp_path):
    f = tmp_path / "x.txt"
    f.write_bytes(b"abc")
    assert file_sha256(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
