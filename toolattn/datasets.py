"""The prompt sets: user requests that need one core tool, and requests that need none.

``data/prompts.json`` is written by ``data/build_prompts.py`` (hand-written texts, a
seeded train/held-out split). Tool requests have ``category == "tool"``; no-tool
requests have one of ``NO_TOOL_CATEGORIES`` and ``tool is None``.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from . import paths
from .tools import CORE_NAMES, Tool

SPLITS = ("train", "heldout")
NO_TOOL_CATEGORIES = ("factual", "explanatory", "opinion", "chitchat", "creative")
CATEGORIES = ("tool",) + NO_TOOL_CATEGORIES
PER_TOOL = 50
MIN_NO_TOOL = 200
MIN_HELDOUT_SHARE = 0.30
NO_TOOL = "none"  # class label of the no-tool requests


@dataclass(frozen=True)
class Request:
    id: str
    text: str
    tool: str | None
    category: str
    split: str

    @property
    def needs_tool(self) -> bool:
        return self.tool is not None


def normalise(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed (for duplicate checks)."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _bad(path: Path, what: str) -> ValueError:
    return ValueError(f"{path}: {what}. Regenerate it with `python data/build_prompts.py` (or fix the JSON).")


def load_prompts(path: Path | None = None, validate: bool = True) -> list[Request]:
    """All requests of the prompt file, in file order (default ``paths.PROMPTS_FILE``).

    With ``validate`` (the default) every entry is checked as it loads (unique id, known split and
    category, a gold tool that is a core tool, non-empty text): a bad entry raises a ``ValueError``
    naming the file, the entry and the fix, before any model is loaded.
    """
    path = Path(path) if path is not None else paths.PROMPTS_FILE
    if not path.is_file():
        raise _bad(path, "file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise _bad(path, f"not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from e
    except json.JSONDecodeError as e:
        raise _bad(path, f"invalid JSON ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("prompts"), list):
        raise _bad(path, "expected an object with a 'prompts' list")
    out = []
    for i, p in enumerate(data["prompts"]):
        if not isinstance(p, dict):
            raise _bad(path, f"prompt #{i} is not an object")
        for key in ("id", "text", "category", "split"):
            if not isinstance(p.get(key), str):
                raise _bad(path, f"prompt #{i} ({p.get('id', '?')}): field '{key}' missing or not a string")
        if "tool" not in p or not (p["tool"] is None or isinstance(p["tool"], str)):
            raise _bad(path, f"prompt #{i} ({p['id']}): field 'tool' must be a tool name or null")
        out.append(Request(p["id"], p["text"], p["tool"], p["category"], p["split"]))
    if validate:
        problems = entry_problems(out)
        if not out:
            problems.insert(0, "the 'prompts' list is empty")
        if problems:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise ValueError(f"{path}: {problems[0]}{more}. Fix or remove that entry, or regenerate the file "
                             "with `python data/build_prompts.py`.")
    return out


def _class(r: Request) -> str:
    return r.tool if r.tool is not None else NO_TOOL


def entry_problems(requests: list[Request], core: list[str] | tuple[str, ...] = CORE_NAMES) -> list[str]:
    """Problems of single entries that would silently change the numbers (empty list = fine):
    duplicate ids, empty texts, unknown splits or categories, gold tools outside ``core``."""
    problems = []
    first_id: dict[str, int] = {}
    for i, r in enumerate(requests):
        where = f"prompt #{i} (id {r.id!r})"
        if r.id in first_id:
            problems.append(f"{where}: duplicate id (first used by prompt #{first_id[r.id]})")
        else:
            first_id[r.id] = i
        if not normalise(r.text):
            problems.append(f"{where}: empty text")
        if r.split not in SPLITS:
            problems.append(f"{where}: unknown split {r.split!r} (use one of {', '.join(SPLITS)})")
        if r.category not in CATEGORIES:
            problems.append(f"{where}: unknown category {r.category!r} (use one of {', '.join(CATEGORIES)})")
        if r.tool is not None and r.tool not in core:
            problems.append(f"{where}: gold tool {r.tool!r} is not a core tool of the catalog "
                            f"(core tools: {', '.join(core)})")
        if (r.tool is not None) != (r.category == "tool"):
            problems.append(f"{where}: category {r.category!r} does not fit tool {r.tool!r}")
    return problems


def validate_prompts(requests: list[Request], catalog: list[Tool] | None = None) -> list[str]:
    """Problems with a prompt set (empty list = fine)."""
    core = [t.name for t in catalog if t.core] if catalog is not None else list(CORE_NAMES)
    problems = []
    for rid, k in Counter(r.id for r in requests).items():
        if k > 1:
            problems.append(f"duplicate id {rid!r} ({k} times)")
    first: dict[str, str] = {}
    for r in requests:
        key = normalise(r.text)
        if not key:
            problems.append(f"{r.id}: empty text")
        elif key in first:
            problems.append(f"{r.id}: same text as {first[key]} ({r.text!r})")
        else:
            first[key] = r.id
        if r.split not in SPLITS:
            problems.append(f"{r.id}: unknown split {r.split!r}")
        if r.category not in CATEGORIES:
            problems.append(f"{r.id}: unknown category {r.category!r}")
        if r.tool is not None and r.tool not in core:
            problems.append(f"{r.id}: gold tool {r.tool!r} is not a core tool")
        if (r.tool is not None) != (r.category == "tool"):
            problems.append(f"{r.id}: category {r.category!r} does not fit tool {r.tool!r}")
    counts = Counter(_class(r) for r in requests)
    for name in core:
        if counts[name] != PER_TOOL:
            problems.append(f"tool {name!r} has {counts[name]} requests, expected {PER_TOOL}")
    if counts[NO_TOOL] < MIN_NO_TOOL:
        problems.append(f"only {counts[NO_TOOL]} no-tool requests, expected at least {MIN_NO_TOOL}")
    held = Counter(_class(r) for r in requests if r.split == "heldout")
    for cls, n in counts.items():
        if held[cls] < MIN_HELDOUT_SHARE * n:
            problems.append(f"class {cls!r}: {held[cls]}/{n} held out, below {MIN_HELDOUT_SHARE:.0%}")
    return problems


def check_inputs(prompts: Path | None = None, tools: Path | None = None) -> tuple[list[Request], list[Tool]]:
    """Load and validate the tool catalog and the prompt set (what every analysis reads), so a bad
    file fails in one line before any model is loaded."""
    from .tools import load_catalog

    catalog = load_catalog(tools)
    return load_prompts(prompts), catalog


def _pick(pool: list[Request], n: int | None, seed: int, label: str) -> list[Request]:
    """The first ``n`` of ``pool`` after a shuffle seeded by (seed, label), in pool order."""
    order = list(range(len(pool)))
    random.Random(f"{seed}/{label}").shuffle(order)
    if n is not None:
        if n > len(pool):
            raise ValueError(f"asked for {n} requests of {label!r} but only {len(pool)} are available")
        order = order[:n]
    return [pool[i] for i in sorted(order)]


def select(
    requests: list[Request],
    *,
    split: str | None = None,
    tools: list[str] | None = None,
    n_per_tool: int | None = None,
    n_no_tool: int | None = 0,
    seed: int = 0,
) -> list[Request]:
    """A deterministic subset: ``n_per_tool`` requests of each tool in ``tools`` (default
    all core tools; ``None`` = all), then ``n_no_tool`` no-tool requests (``None`` = all,
    0 = none). ``split=None`` uses both splits. Tool groups follow catalog order and
    each group keeps file order; a smaller ``n`` gives a subset of a larger one."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS} or None")
    wanted = list(CORE_NAMES) if tools is None else list(tools)
    unknown = [t for t in wanted if t not in CORE_NAMES]
    if unknown:
        raise ValueError(f"not core tools: {unknown}; known: {list(CORE_NAMES)}")
    pool = [r for r in requests if split is None or r.split == split]
    out = []
    for name in CORE_NAMES:
        if name in wanted:
            out += _pick([r for r in pool if r.tool == name], n_per_tool, seed, name)
    if n_no_tool != 0:
        out += _pick([r for r in pool if r.tool is None], n_no_tool, seed, NO_TOOL)
    return out


def file_sha256(path: Path | str) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
