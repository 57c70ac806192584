"""How alike two tools are, as the model itself represents them.

Each tool is written as ``"<name>: <description>"`` and run through the model alone (no chat
template, no other tool); its representation is the mean hidden state over those tokens after a
middle layer (the output of the last layers is shaped for next-token prediction, the first layers
are close to the embeddings). Similarity is the cosine of two representations after standardising
each dimension over the whole tool catalog (mean 0, variance 1): the residual stream has a few very
large dimensions, which otherwise decide every cosine alone (raw cosines are all near 1, centred ones
near +-1). Standardising over the catalog, not over the tools compared, keeps a pair's similarity
the same whatever list it appears in.

Why the model's own states: no embedding model ships with its weights on the package index (they
download from a model hub, which this project cannot reach), and a confusion between two tools is
a fact about how this model represents them. The knockout replacement analysis and the failure
modes use this one measure.
"""

from __future__ import annotations

import numpy as np
import torch

from .device import model_device, to_numpy_ready
from .models import LoadedModel
from .tools import Tool


def tool_text(t: Tool) -> str:
    return f"{t.name}: {t.description}"


def tool_vectors(lm: LoadedModel, tools: list[Tool], layer: int | None = None, batch_size: int = 16) -> np.ndarray:
    """``[N, D]``: mean hidden state over each tool's tokens after ``layer`` (default: the middle one)."""
    n_layers = lm.model.config.get_text_config().num_hidden_layers
    layer = n_layers // 2 if layer is None else layer
    tok = lm.tokenizer
    out = []
    with torch.inference_mode():
        for b0 in range(0, len(tools), batch_size):  # right-padded batches; padding is masked and not averaged
            enc = [tok(tool_text(t)).input_ids for t in tools[b0 : b0 + batch_size]]
            n = max(len(e) for e in enc)
            ids = torch.tensor([e + [0] * (n - len(e)) for e in enc], device=model_device(lm.model))
            valid = torch.tensor([[True] * len(e) + [False] * (n - len(e)) for e in enc], device=ids.device)
            hs = lm.model(input_ids=ids, attention_mask=valid.long(), output_hidden_states=True).hidden_states[layer + 1]
            keep = valid & (ids != tok.bos_token_id) if tok.bos_token_id is not None else valid  # not the BOS token
            pooled = (hs.float() * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)
            out.append(to_numpy_ready(pooled).numpy())
    return np.concatenate(out)


def tool_similarity(lm: LoadedModel, tools: list[Tool], layer: int | None = None,
                    catalog: list[Tool] | None = None) -> np.ndarray:
    """``[N, N]`` cosine similarity of the tools' representations (``tool_vectors``), each dimension
    standardised over ``catalog`` (default: the tool catalog, ``data/tools.json``, plus ``tools``)."""
    from .tools import load_catalog

    catalog = list(catalog if catalog is not None else load_catalog())
    names = [t.name for t in catalog]
    catalog += [t for t in tools if t.name not in names]
    names = [t.name for t in catalog]
    v = tool_vectors(lm, catalog, layer)
    v = (v - v.mean(0)) / np.where(v.std(0) > 0, v.std(0), 1.0)
    v = v[[names.index(t.name) for t in tools]]
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    return v @ v.T


def neighbour_rank(sim: np.ndarray, gold: int, other: int) -> int:
    """Rank (1 = most similar) of tool ``other`` among every tool but ``gold``, by similarity to ``gold``."""
    order = [j for j in np.argsort(-sim[gold], kind="stable") if j != gold]
    return order.index(other) + 1


__all__ = ["tool_vectors", "tool_similarity", "neighbour_rank", "tool_text"]
