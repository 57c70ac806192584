"""Prompt formatting with token spans.

Two formats:

* ``chat`` -- the tokenizer's own chat template, ``apply_chat_template(messages, tools=...,
  add_generation_prompt=True)`` with thinking disabled where the template has it. The call
  prefix is the template family's (Qwen: ``<tool_call>\\n{"name": "``) unless the registry records
  that the model writes its calls differently (Qwen2.5-Coder: a JSON code fence).
* ``chat`` with FunctionGemma's own call format (``call_format="functiongemma"``, ``CALL_FORMATS``):
  a developer turn with the trigger sentence and one ``<start_function_declaration>declaration:NAME{...}
  <end_function_declaration>`` per tool (rendered by the model's template), and calls written
  ``<start_function_call>call:NAME{key:<escape>value<escape>}<end_function_call>``. The forced
  choice scores the name after ``call:`` (closed by ``{``).
* ``text`` -- a few-shot text format for base models (documented in ``TEXT_FORMAT`` below):
  a tool list of ``name: description`` lines, an instruction, four worked examples (two tool
  calls with tools from the list, two plain answers), then ``Request: ...\\nResponse:``. A call
  is written `` CALL <tool_name>`` on the response line.

For every prompt we return token spans (``[start, end)`` token indices) of each tool's name and
description, taken from the tokenizer's offset mapping, the end of the tool block, the length of
the shared prefix (identical for every request with the same tool list, so its keys/values can be
computed once), the reply position (whose output is the first reply token) and the decision
position (last token of the call prefix, whose output is the first token of the tool name).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .tools import Tool

TEXT_FORMAT = {
    "header": "The assistant can call these tools:\n",
    "line": "{name}: {description}\n",
    "instruction": ("\nWhen a request needs one of the tools, the assistant replies with CALL followed by "
                    "the tool name. Otherwise it answers directly.\n"),
    "turn": "\nRequest: {request}\nResponse:",
    "call_prefix": " CALL",
    "name_prefix": " ",
    "name_suffix": "\n",
}

# Few-shot examples for the text format: tool examples are used only for tools in the list.
FEW_SHOT_TOOL = {
    "get_weather": "Is it raining in Lisbon right now?",
    "search_web": "Look up who won the most recent Tour de France.",
    "read_file": "Show me what is inside notes/todo.txt.",
    "write_file": "Save the text 'meeting moved to 3pm' into memo.txt.",
    "run_code": "Run this snippet and tell me the output: print(sum(range(10)))",
    "send_email": "Email Priya that the report is ready.",
    "get_calendar": "What do I have scheduled on March 3rd?",
    "create_reminder": "Remind me at 6pm to call the plumber.",
    "search_database": "Query the orders table for rows where status is 'late'.",
    "translate_text": "Put 'good morning' into Italian.",
}
FEW_SHOT_PLAIN = [
    ("Why do cats purr?", " Cats purr when they are relaxed, and sometimes to calm themselves."),
    ("Thanks, that helps a lot!", " You're welcome, glad it helped."),
]

CHAT_CALL_PREFIX = {"qwen2": '<tool_call>\n{"name": "', "qwen3": '<tool_call>\n{"name": "',
                    "gemma3": "<start_function_call>"}
CHAT_NAME_SUFFIX = {"qwen2": '"', "qwen3": '"', "gemma3": "\n"}
# How a reply that makes a call starts, per format family: P(tool) is the probability mass of the
# first tokens of these openings. Qwen2.5-Coder writes its calls as a ```json fence or a bare JSON
# object more often than in the template's <tool_call> tags (see the baseline's reply openings).
CHAT_CALL_OPEN = {"qwen2": ["<tool_call>", "```", "{", "{\n"], "qwen3": ["<tool_call>"],
                  "gemma3": ["<start_function_call>"]}
# Call formats of particular models, when they differ from their template family's default.
FUNCTIONGEMMA_SYSTEM = "You are a model that can do function calling with the following functions"
CALL_FORMATS = {
    "functiongemma": {"call_prefix": "<start_function_call>call:", "name_suffix": "{",
                      "call_open": ["<start_function_call>"], "system": FUNCTIONGEMMA_SYSTEM},
}


@dataclass
class ToolSpan:
    """Token spans of one tool in a formatted prompt, ``[start, end)``."""

    name: str
    name_span: tuple[int, int]
    description_span: tuple[int, int]

    @property
    def span(self) -> tuple[int, int]:
        """Name + description (and what lies between them)."""
        return (min(self.name_span[0], self.description_span[0]), max(self.name_span[1], self.description_span[1]))


@dataclass
class Formatted:
    """One formatted prompt, up to and including the call prefix.

    ``input_ids`` is ``prompt_ids + call_prefix_ids``: the prompt ends where the reply starts.
    """

    text: str
    input_ids: list[int]
    prompt_len: int  # tokens before the call prefix
    prefix_len: int  # shared tool-block prefix (same for every request with this tool list)
    tool_block_end: int
    tools: list[ToolSpan]
    offsets: list[tuple[int, int]] = field(repr=False, default_factory=list)

    @property
    def reply_position(self) -> int:
        """Token whose output is the first reply token (tool / no-tool decision)."""
        return self.prompt_len - 1

    @property
    def decision_position(self) -> int:
        """Token whose output is the first token of the tool name (forced choice)."""
        return len(self.input_ids) - 1


class PromptFormatter:
    """Formats requests for one model: ``format(request, tools) -> Formatted``."""

    def __init__(self, tokenizer, prompt_format: str, family: str, call_prefix: str | None = None,
                 call_format: str | None = None):
        self.tok = tokenizer
        self.prompt_format = prompt_format
        self.family = family
        self.system = None  # a system / developer message before the request (call formats that need one)
        if prompt_format == "chat":
            if not getattr(tokenizer, "chat_template", None):
                raise ValueError(f"the tokenizer of this {family} model has no chat template; use the text format")
            if family not in CHAT_CALL_PREFIX:
                raise ValueError(f"no call prefix known for chat family {family!r}")
            self.call_prefix = CHAT_CALL_PREFIX[family]
            self.name_suffix = CHAT_NAME_SUFFIX[family]
            self.call_open = CHAT_CALL_OPEN[family]
        else:
            self.call_prefix = TEXT_FORMAT["call_prefix"]
            self.name_suffix = TEXT_FORMAT["name_suffix"]
            self.call_open = [TEXT_FORMAT["call_prefix"]]
        if call_format:
            if call_format not in CALL_FORMATS:
                raise ValueError(f"unknown call format {call_format!r}; known: {', '.join(CALL_FORMATS)}")
            fmt = CALL_FORMATS[call_format]
            self.call_prefix, self.name_suffix, self.call_open = fmt["call_prefix"], fmt["name_suffix"], fmt["call_open"]
            self.system = fmt.get("system")
        if call_prefix:
            self.call_prefix = call_prefix

    @classmethod
    def for_model(cls, lm) -> "PromptFormatter":
        """The formatter of a loaded registry model (its format, family, own call prefix and call format)."""
        return cls(lm.tokenizer, lm.spec.prompt_format, lm.spec.family, lm.spec.call_prefix or None,
                   getattr(lm.spec, "call_format", "") or None)

    # -- text rendering --------------------------------------------------------------------

    def render(self, request: str, tools: list[Tool], thinking: bool = False) -> tuple[str, int]:
        """The prompt text and the char index where the request text starts.

        ``thinking``: leave the template's thinking switch on (Qwen3: the prompt ends at the assistant
        turn's start, and the model opens ``<think>`` itself); off by default (an empty thinking block)."""
        if self.prompt_format == "chat":
            messages = [{"role": "user", "content": request}]
            if self.system:
                messages.insert(0, {"role": "developer", "content": self.system})
            text = self.tok.apply_chat_template(
                messages, tools=[t.schema() for t in tools],
                add_generation_prompt=True, tokenize=False, enable_thinking=thinking)
            # the request is the last one before the generation prompt (which may hold it as a substring:
            # "hi" in Qwen3's "<think>")
            turns = self.tok.apply_chat_template(messages, tools=[t.schema() for t in tools],
                                                 add_generation_prompt=False, tokenize=False, enable_thinking=thinking)
            end = len(turns) if text.startswith(turns) else len(text)
        else:
            text = self.text_prompt(request, tools)
            end = len(text)
        start = text.rfind(request, 0, end)
        if start < 0:
            raise ValueError(f"request text not found in the rendered prompt: {request!r}")
        return text, start

    def text_prompt(self, request: str, tools: list[Tool]) -> str:
        f = TEXT_FORMAT
        s = f["header"] + "".join(f["line"].format(name=t.name, description=t.description) for t in tools)
        s += f["instruction"]
        shots = [(FEW_SHOT_TOOL[t.name], f["call_prefix"] + f["name_prefix"] + t.name)
                 for t in tools if t.name in FEW_SHOT_TOOL][:2]
        examples = []
        for i in range(max(len(shots), len(FEW_SHOT_PLAIN))):
            if i < len(shots):
                examples.append(shots[i])
            if i < len(FEW_SHOT_PLAIN):
                examples.append(FEW_SHOT_PLAIN[i])
        for q, a in examples:
            s += f["turn"].format(request=q) + a + "\n"
        return s + f["turn"].format(request=request)

    # -- tokenisation with spans -------------------------------------------------------------

    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self.tok(text, add_special_tokens=self.prompt_format == "text", return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]

    def format(self, request: str, tools: list[Tool], after: str = "", thinking: bool | None = None) -> Formatted:
        """``request`` formatted with ``tools``; ``after``: text that continues the prompt before the call
        prefix (the reasoning of a thinking reply, closed by ``</think>``, which implies ``thinking``)."""
        text, req_start = self.render(request, tools, thinking=bool(after) if thinking is None else thinking)
        text += after
        ids, offsets = self.encode(text)
        # Shared prefix: every token that ends before the request text starts.
        prefix_len = _count_before(offsets, req_start)
        spans, cursor = [], _tool_block_start(text)
        for t in tools:
            n0, n_len = _find_rendered(text, t.name, cursor, req_start)
            d0, d_len = _find_rendered(text, t.description, n0 + n_len, req_start)
            if n0 < 0 or d0 < 0 or d0 > req_start:
                raise ValueError(f"tool {t.name!r} not found in the tool block of the rendered prompt")
            cursor = d0 + d_len
            spans.append(ToolSpan(t.name, _token_span(offsets, n0, n0 + n_len),
                                  _token_span(offsets, d0, cursor)))
        block_end_char = _tool_block_end(text, cursor)
        tool_block_end = _count_before(offsets, block_end_char)
        call_ids = self.continuation_ids(ids, text, self.call_prefix)
        return Formatted(text, ids + call_ids, len(ids), prefix_len, tool_block_end, spans, offsets)

    def continuation_ids(self, ids: list[int], text: str, continuation: str) -> list[int]:
        """Token ids of ``continuation`` as the model would tokenise it after ``text``.

        Tokenises ``text + continuation`` and checks that the prompt's tokens are unchanged, so the
        continuation starts on a token boundary.
        """
        full, _ = self.encode(text + continuation)
        if full[: len(ids)] != ids:
            raise ValueError(f"continuation {continuation!r} does not start on a token boundary")
        return full[len(ids):]

    def candidate_ids(self, f: Formatted, name: str) -> list[int]:
        """Tokens of a candidate tool name after the call prefix, closed by the name delimiter."""
        base = f.text + self.call_prefix
        return self.continuation_ids(f.input_ids, base, (TEXT_FORMAT["name_prefix"] if self.prompt_format == "text"
                                                         else "") + name + self.name_suffix)

    def call_open_ids(self) -> list[int]:
        """Token ids that open a call as the first reply token (for P(tool))."""
        first = {self.tok(s, add_special_tokens=False)["input_ids"][0] for s in self.call_open}
        return sorted(first)


def _find_rendered(text: str, s: str, start: int, limit: int) -> tuple[int, int]:
    """(index, length) of ``s`` as rendered in ``text`` from ``start``: the raw string, or, where the
    raw string is not found before ``limit`` (the request), its JSON-escaped form (chat templates
    render tools as JSON, so quotes, backslashes and newlines appear escaped), then its ASCII-escaped
    form. When no form lies before ``limit``: the raw string's search result (-1 when absent)."""
    raw = text.find(s, start)
    if 0 <= raw <= limit:
        return raw, len(s)
    for form in (json.dumps(s, ensure_ascii=False)[1:-1], json.dumps(s, ensure_ascii=True)[1:-1]):
        if form != s:
            i = text.find(form, start)
            if 0 <= i <= limit:
                return i, len(form)
    return raw, len(s)


def _count_before(offsets, char: int) -> int:
    """Number of leading tokens that end at or before ``char`` (offsets are monotonic)."""
    return sum(1 for _, e in offsets if e <= char)


def _token_span(offsets, c0: int, c1: int) -> tuple[int, int]:
    """Tokens overlapping the char range ``[c0, c1)``."""
    toks = [i for i, (s, e) in enumerate(offsets) if e > c0 and s < c1 and e > s]
    return (toks[0], toks[-1] + 1)


def _tool_block_start(text: str) -> int:
    for marker in ("<tools>", "<start_function_declaration>"):
        i = text.find(marker)
        if i >= 0:
            return i
    return 0


def _tool_block_end(text: str, after: int) -> int:
    """Char index just past the tool listing."""
    for marker in ("</tools>", "<end_function_declaration>"):
        i = text.find(marker, after)
        if i >= 0:
            return i + len(marker)
    i = text.find("\n", after)
    return i + 1 if i >= 0 else after
