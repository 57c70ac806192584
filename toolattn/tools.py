"""The tool catalog: 50 function-calling tools, the first 10 of which are the core set.

``data/tools.json`` holds the catalog. The core tools are the plan's ten, with the
plan's exact names and descriptions; the other 40 are used only for the scaling study
(2/5/10/20/50 tools) and include near neighbours of the core tools.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import paths

# The plan's tool set, in the plan's order: (name, description).
CORE_TOOLS: tuple[tuple[str, str], ...] = (
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
)
CORE_NAMES: tuple[str, ...] = tuple(name for name, _ in CORE_TOOLS)
CATALOG_SIZE = 50

_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
_JSON_TYPES = {"string", "integer", "number", "boolean", "array", "object"}


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict = field(hash=False)  # JSON schema; excluded from the hash
    core: bool
    group: str

    def schema(self) -> dict:
        """OpenAI / Hugging Face chat-template style function schema."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


def _bad(path: Path, what: str) -> ValueError:
    return ValueError(f"{path}: {what}. Fix the JSON in this file (a list of tools under the key 'tools').")


def load_catalog(path: Path | None = None, validate: bool = True) -> list[Tool]:
    """All tools of the catalog file, in file order (default ``paths.TOOLS_FILE``).

    With ``validate`` (the default) the catalog is checked as it loads: at least one tool, unique
    snake_case names, non-empty descriptions, and every core tool present once and marked core. A
    bad entry raises a ``ValueError`` naming the file, the entry and the fix.
    """
    path = Path(path) if path is not None else paths.TOOLS_FILE
    if not path.is_file():
        raise _bad(path, "file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise _bad(path, f"not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from e
    except json.JSONDecodeError as e:
        raise _bad(path, f"invalid JSON ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("tools"), list):
        raise _bad(path, "expected an object with a 'tools' list")
    tools = []
    for i, t in enumerate(data["tools"]):
        if not isinstance(t, dict):
            raise _bad(path, f"tool #{i} is not an object")
        kinds = {"name": str, "description": str, "parameters": dict, "core": bool, "group": str}
        for key, kind in kinds.items():
            if not isinstance(t.get(key), kind):
                raise _bad(path, f"tool #{i} ({t.get('name', '?')}): field '{key}' missing or not a {kind.__name__}")
        tools.append(Tool(**{k: t[k] for k in kinds}))
    if validate:
        problems = entry_problems(tools)
        if problems:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise _bad(path, problems[0] + more)
    return tools


def entry_problems(catalog: list[Tool]) -> list[str]:
    """Problems that would silently change the numbers (empty list = fine): no tools, a duplicate
    name (a later entry would replace a core tool), an empty description, a missing core tool."""
    if not catalog:
        return ["the 'tools' list is empty; it must hold at least the core tools " + ", ".join(CORE_NAMES)]
    problems = []
    first: dict[str, int] = {}
    for i, t in enumerate(catalog):
        where = f"tool #{i} ({t.name!r})"
        if t.name in first:
            problems.append(f"{where}: duplicate tool name (first defined as tool #{first[t.name]}); rename or remove one")
        else:
            first[t.name] = i
        if not _NAME_RE.match(t.name):
            problems.append(f"{where}: the name is not snake_case")
        if not t.description.strip():
            problems.append(f"{where}: empty description")
        if t.core != (t.name in CORE_NAMES):
            problems.append(f"{where}: 'core' must be {str(t.name in CORE_NAMES).lower()} "
                            f"(the core tools are {', '.join(CORE_NAMES)})")
    missing = [n for n in CORE_NAMES if n not in first]
    if missing:
        problems.append(f"core tool(s) {', '.join(missing)} missing; every core tool must be in the catalog")
    return problems


def _catalog(catalog: list[Tool] | None) -> list[Tool]:
    return load_catalog() if catalog is None else list(catalog)


def core_tools(catalog: list[Tool] | None = None) -> list[Tool]:
    """The 10 core tools, in plan order."""
    by_name = {t.name: t for t in _catalog(catalog)}
    return [by_name[name] for name in CORE_NAMES if name in by_name]


def get_tool(name: str, catalog: list[Tool] | None = None) -> Tool:
    """The tool called ``name``; ``KeyError`` listing the known names on a miss."""
    cat = _catalog(catalog)
    for t in cat:
        if t.name == name:
            return t
    raise KeyError(f"unknown tool {name!r}; known tools: {', '.join(t.name for t in cat)}")


def tool_list(n: int, gold: str | None = None, seed: int = 0, catalog: list[Tool] | None = None) -> list[Tool]:
    """``n`` tools for a scaling experiment, deterministic in ``seed``.

    ``n <= 10``: ``gold`` (if given) plus ``n - 1`` other core tools, shuffled.
    ``n > 10``: all core tools plus ``n - 10`` non-core tools (``gold`` among them if it
    is non-core), shuffled.
    """
    cat = _catalog(catalog)
    core = core_tools(cat)
    rest = [t for t in cat if not t.core]
    if not 1 <= n <= len(core) + len(rest):
        raise ValueError(f"n must be between 1 and {len(core) + len(rest)}, got {n}")
    gold_tool = get_tool(gold, cat) if gold is not None else None
    rng = random.Random(seed)
    if n <= len(core):
        if gold_tool is not None and not gold_tool.core:
            raise ValueError(f"gold tool {gold!r} is not a core tool; use n > {len(core)}")
        pool = [t for t in core if t != gold_tool]
        picks = ([gold_tool] if gold_tool else []) + rng.sample(pool, n - (1 if gold_tool else 0))
    else:
        forced = [gold_tool] if gold_tool is not None and not gold_tool.core else []
        pool = [t for t in rest if t not in forced]
        picks = core + forced + rng.sample(pool, n - len(core) - len(forced))
    rng.shuffle(picks)
    return picks


def _schema_problems(t: Tool) -> list[str]:
    p = t.parameters
    where = f"tool {t.name!r}"
    if p.get("type") != "object" or not isinstance(p.get("properties"), dict):
        return [f"{where}: parameters must be {{'type': 'object', 'properties': {{...}}}}"]
    out = []
    required = p.get("required", [])
    if not isinstance(required, list) or not all(r in p["properties"] for r in required):
        out.append(f"{where}: 'required' must list names of declared properties")
    for key, prop in p["properties"].items():
        if not isinstance(prop, dict) or prop.get("type") not in _JSON_TYPES:
            out.append(f"{where}: property {key!r} has no valid JSON type")
        elif not str(prop.get("description", "")).strip():
            out.append(f"{where}: property {key!r} has no description")
    return out


def validate_catalog(catalog: list[Tool]) -> list[str]:
    """Problems with a catalog (empty list = fine)."""
    problems = []
    if len(catalog) != CATALOG_SIZE:
        problems.append(f"catalog has {len(catalog)} tools, expected {CATALOG_SIZE}")
    seen = set()
    for t in catalog:
        if t.name in seen:
            problems.append(f"duplicate tool name {t.name!r}")
        seen.add(t.name)
        if not _NAME_RE.match(t.name):
            problems.append(f"tool name {t.name!r} is not snake_case")
        if not t.description.strip():
            problems.append(f"tool {t.name!r} has an empty description")
        if not t.group.strip():
            problems.append(f"tool {t.name!r} has an empty group")
        problems += _schema_problems(t)
    head = [(t.name, t.description) for t in catalog[: len(CORE_TOOLS)]]
    if head != list(CORE_TOOLS):
        problems.append("the first 10 tools must be the plan's core tools with its exact names and descriptions, in order")
    core_marked = [t.name for t in catalog if t.core]
    if core_marked != list(CORE_NAMES):
        problems.append(f"tools marked core {core_marked} differ from the plan's core tools {list(CORE_NAMES)}")
    return problems
