"""Parse a model's free-form reply into the tool it calls (or none).

Recognised call forms, in order: a ``<tool_call>`` block holding JSON with a ``name``; a function call,
FunctionGemma's own ``<start_function_call>call:NAME{key:<escape>value<escape>}<end_function_call>`` or
the child's ``<start_function_call>name\n{arguments}<end_function_call>`` (``gemma-3-270m-tools``);
a JSON object with ``name`` (bare or in a code fence); the text format's ``CALL <name>`` line. A
reply that names no declared tool in any of these forms is not a call.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

_NAME = re.compile(r'"name"\s*:\s*"([A-Za-z0-9_\-.]+)')
_CALL = re.compile(r"^\s*CALL\s+([A-Za-z0-9_\-.]+)", re.M)
FUNCTION_CALL_OPEN, FUNCTION_CALL_CLOSE = "<start_function_call>", "<end_function_call>"
FUNCTIONGEMMA_CALL, ESCAPE = "call:", "<escape>"
_FUNCTION_NAME = re.compile(r"[A-Za-z0-9_\-.]+")
_ESCAPED = re.compile(re.escape(ESCAPE) + "(.*?)" + re.escape(ESCAPE), re.S)
_BARE_KEY = re.compile(r"([{,])\s*([A-Za-z_][A-Za-z0-9_]*)\s*:")


def functiongemma_args(args: str):
    """FunctionGemma's arguments ``{key:<escape>text<escape>,n:3}`` as a dict, or None when malformed."""
    strings: list[str] = []

    def stash(m):
        strings.append(m.group(1))
        return f"\x00{len(strings) - 1}\x00"

    body = _BARE_KEY.sub(r'\1"\2":', _ESCAPED.sub(stash, args.strip()))
    body = re.sub("\x00(\\d+)\x00", lambda m: json.dumps(strings[int(m.group(1))]), body)
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


@dataclass
class ParsedCall:
    kind: str  # tool_call | function_call | json | fence | text | none
    name: str | None
    valid_json: bool


def parse_call(reply: str) -> ParsedCall:
    """The tool a reply calls. Tolerates truncation after the name (replies are generated short)."""
    text = reply.strip()
    if text.startswith("<tool_call>"):
        body = text[len("<tool_call>"):].split("</tool_call>")[0]
        m = _NAME.search(body)
        return ParsedCall("tool_call", m.group(1) if m else None, _is_json(body))
    if text.startswith(FUNCTION_CALL_OPEN):
        body = text[len(FUNCTION_CALL_OPEN):]
        own = body.startswith(FUNCTIONGEMMA_CALL)  # FunctionGemma: call:NAME{...}
        if own:
            body = body[len(FUNCTIONGEMMA_CALL):]
        m = _FUNCTION_NAME.match(body)
        closed = FUNCTION_CALL_CLOSE in body
        args = body[m.end() if m else 0:].split(FUNCTION_CALL_CLOSE)[0]
        valid = functiongemma_args(args) is not None if own else _is_json(args)
        return ParsedCall("function_call", m.group(0) if m else None, closed and valid)
    if text.startswith("```"):
        body = text.split("\n", 1)[1] if "\n" in text else ""
        body = body.split("```")[0]
        m = _NAME.search(body)
        if m:
            return ParsedCall("fence", m.group(1), _is_json(body))
        return ParsedCall("none", None, False)
    if text.startswith("{"):
        m = _NAME.search(text)
        if m:
            return ParsedCall("json", m.group(1), _is_json(text))
    m = _CALL.match(text)
    if m:
        return ParsedCall("text", m.group(1), False)
    return ParsedCall("none", None, False)


_NAME_DONE = re.compile(r'"name"\s*:\s*"[^"]*"')


def reply_decided(reply: str) -> bool:
    """True once more tokens cannot change ``parse_call(reply).name``: the reply opened as plain text,
    or the called name is complete, or (text format) the response line has ended."""
    t = reply.lstrip()
    if not t:
        return False
    if opening(t) == "text" and not any(p.startswith(t[: len(p)]) for p in ("<tool_call>", "```", "CALL",
                                                                               FUNCTION_CALL_OPEN)):
        return True
    if _NAME_DONE.search(t):
        return True
    if opening(t) == "function_call":  # the name ends at the first character that cannot be part of it
        body = t[len(FUNCTION_CALL_OPEN):]
        if FUNCTIONGEMMA_CALL.startswith(body):
            return False  # "call:" may still be coming
        if body.startswith(FUNCTIONGEMMA_CALL):
            body = body[len(FUNCTIONGEMMA_CALL):]
        m = _FUNCTION_NAME.match(body)
        return bool(m) and len(body) > m.end()
    return opening(t) == "call" and "\n" in t


def opening(reply: str) -> str:
    """How a reply opens: ``tool_call``, ``function_call``, ``fence``, ``json``, ``call`` or ``text``."""
    t = reply.lstrip()
    for prefix, kind in (("<tool_call>", "tool_call"), (FUNCTION_CALL_OPEN, "function_call"), ("```", "fence"),
                         ("{", "json"), ("CALL", "call")):
        if t.startswith(prefix):
            return kind
    return "text"


def _is_json(s: str) -> bool:
    try:
        json.loads(s.strip())
        return True
    except ValueError:
        return False
