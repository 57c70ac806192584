"""The retrieval heads as a tool selector: rank the listed tools by the attention a few heads pay them.

A tool's score is the share of the chosen heads' attention at the decision position (the token whose
output is the first token of the tool name) that lands on the tool's name and description tokens,
renormalised over the listed tools and averaged over the heads. With calibration (the default), the
share the same heads give the tool for a content-free request (``NEUTRAL_REQUEST``, same tool list) is
subtracted: what a head pays a tool whatever is asked -- its list position, its length -- is taken out,
and what the request moves remains.

>>> ranked = select_tool(lm, "What's the weather in Oslo?", tools, heads=[(17, 3), (20, 5)])
>>> ranked[0]                                   # ("get_weather", 0.41): the best tool and its score

Shapes: ``shares [requests, tools, layers * heads]`` (a head ``(l, h)`` is column ``l * H + h``),
``scores [requests, tools]``.
"""

from __future__ import annotations

import numpy as np

from .attention import capture_attention, decision_rows
from .prompts import Formatted
from .tools import Tool

NEUTRAL_REQUEST = "N/A"


def tool_shares(weights, f: Formatted) -> np.ndarray:
    """Shares of the decision position's attention on each listed tool (name + description tokens),
    renormalised over the tools (uniform where a head sees none of them).

    ``weights``: captured attention per engine batch ``[layers, batch, heads, keys]``; ``f``: a prompt with
    this tool list. Returns ``[requests, tools (list order), layers * heads]``.
    """
    out = []
    for w in weights:
        w = w.permute(1, 0, 2, 3).numpy()  # [batch, layers, heads, keys]
        mass = np.stack([w[..., a:b].sum(-1) for a, b in (t.span for t in f.tools)], 1)  # [batch, tools, L, H]
        out.append(mass.reshape(*mass.shape[:2], -1))
    mass = np.concatenate(out)
    total = mass.sum(1, keepdims=True)
    return np.where(total > 0, mass / np.where(total > 0, total, 1), 1.0 / mass.shape[1])


def block_share(weights, f: Formatted) -> np.ndarray:
    """Share of all attention at the decision position on the whole tool listing (first tool name to the
    end of the tool block): ``[requests, layers * heads]``."""
    start = min(s.name_span[0] for s in f.tools)
    out = [w.permute(1, 0, 2, 3).numpy()[..., start : f.tool_block_end].sum(-1) for w in weights]
    return np.concatenate([o.reshape(o.shape[0], -1) for o in out])


def read_shares(engine, requests: list[str], tools: list[Tool], desc: str = "attention"):
    """Forced choice and the decision position's attention on the tools, in one pass.

    Returns ``(choices, shares [requests, tools, L * H], block [requests, L * H])``."""
    sample = engine.formatter.format(requests[0], tools)
    with capture_attention(engine.model) as cap:
        choices = engine.score(requests, tools, desc=desc, forward_kwargs=cap.kwargs_for(decision_rows))
    return choices, tool_shares(cap.weights, sample), block_share(cap.weights, sample)


def head_columns(heads: list[tuple[int, int]], n_heads: int) -> list[int]:
    """Columns of ``(layer, head)`` pairs in a ``layers * heads`` axis."""
    return [layer * n_heads + head for layer, head in heads]


def selector_scores(shares: np.ndarray, columns: list[int], neutral: np.ndarray | None = None) -> np.ndarray:
    """``shares [requests, tools, L * H]`` averaged over the heads in ``columns`` -> ``[requests, tools]``;
    ``neutral [tools, L * H]`` (the content-free request's shares) is subtracted the same way."""
    s = shares[:, :, columns].mean(-1)
    if neutral is not None:
        s = s - neutral[None, :, columns].mean(-1)
    return s


def combined_choice(model_choice: np.ndarray, scores: np.ndarray, margin: float) -> np.ndarray:
    """The model's choice unless the selector's best tool beats it by more than ``margin``.

    ``model_choice [requests]`` (tool index), ``scores [requests, tools]`` -> ``[requests]``."""
    best = scores.argmax(1)
    lead = scores[np.arange(len(best)), best] - scores[np.arange(len(best)), model_choice]
    return np.where(lead > margin, best, model_choice)


def select_tool(lm, request: str, tools: list[Tool], heads: list[tuple[int, int]], calibrate: bool = True,
                engine=None) -> list[tuple[str, float]]:
    """The tools of ``tools`` ranked by the attention of ``heads`` (``(layer, head)`` pairs) when ``lm`` reads
    ``request``, best first, with their scores (calibrated by a content-free request unless ``calibrate``
    is off). ``engine``: a ``ToolChoiceEngine`` to reuse (its cached tool block too)."""
    from .models import model_dims
    from .scoring import ToolChoiceEngine

    if not heads:
        raise ValueError("select_tool needs at least one (layer, head) pair")
    engine = engine or ToolChoiceEngine(lm, progress=False)
    texts = [request] + ([NEUTRAL_REQUEST] if calibrate else [])
    _, shares, _ = read_shares(engine, texts, tools)
    scores = selector_scores(shares[:1], head_columns(heads, model_dims(lm.model)["heads"]),
                             shares[1] if calibrate else None)[0]
    order = np.argsort(-scores, kind="stable")
    return [(tools[i].name, float(scores[i])) for i in order]
