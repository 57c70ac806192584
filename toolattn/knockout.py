"""Head knockout and attribution patching on the forced tool choice.

Knocking out head ``h`` of layer ``l`` adds -1e9 to its pre-softmax logits at the tool keys (the
description tokens; variants: name + description, the whole tool listing) for every query after the
tool block (``toolattn.attention``). Nothing in the tool block changes, so its keys/values are
computed once per tool list; the tokens after it that every request shares (the tail of the system
turn) run once per condition at batch 1; the request tokens and packed candidate names run as in
``ToolChoiceEngine`` (same ``pack`` and ``read``). Layers below a condition's lowest knocked-out
layer cannot change and are not run again: nnsight's ``skip`` hands them their clean output.
Several conditions run in one pass, one batch row per (condition, request).

Attribution patching (AtP): every head's attention pattern is written ``A + alpha * (A_ko - A)``
with ``A_ko`` its exact knocked-out pattern (the AtP* "QK fix": the pattern change is computed, not
linearised), and one backward pass of the summed margin to ``alpha [layers, heads]`` at
``alpha = 0`` estimates every head's knockout effect at once. GradDrop (AtP*): the backward pass is
repeated with the gradient through the residual contribution of one group of layers set to zero;
the estimate is ``sum_g |AtP_g| / (G - 1)``, which exposes effects that cancel along different paths.

Shape legend: B requests in a batch, C conditions, L layers, H query heads, T tool-block tokens,
S shared tail tokens after the block, Q input tokens of a request batch (request suffix + packed
candidate names), D hidden size, N candidate tools.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import nnsight
import numpy as np
import torch
from transformers import DynamicCache

from .attention import KEYS, use_toolattn
from .device import model_device, to_numpy_ready
from .interventions import traced_forward
from .layout import Layout
from .models import LoadedModel
from .scoring import Packed, PrefixCache, ToolChoiceEngine, decoder_parts, kv_cache, shortest_prefix
from .tools import Tool


def margin(scores: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """Score of the gold tool minus the best other tool: ``scores [..., N]``, ``gold [...]`` -> ``[...]``."""
    gold = gold.to(scores.device).expand(scores.shape[:-1])[..., None]
    g = scores.gather(-1, gold)[..., 0]
    others = scores.scatter(-1, gold, float("-inf"))
    return g - others.max(-1).values


def certified(scores: torch.Tensor, exact: torch.Tensor, gold: torch.Tensor | None = None) -> torch.Tensor:
    """Whether the choice and the margin read from partly scored ``scores [..., N]`` are exact: the best and
    the second best candidate scored in full (``exact [..., N]`` bool) beat every upper bound left.
    Returns ``[...]`` bool."""
    exact = exact.expand(scores.shape)
    full = scores.masked_fill(~exact, float("-inf"))
    bound = scores.masked_fill(exact, float("-inf")).max(-1).values
    second = full.topk(2, -1).values[..., 1]
    return bound < second


@dataclass
class _Batch:
    index: list[int]  # positions of its requests in the list given
    formatted: list
    packed: Packed
    resid: torch.Tensor  # clean output of every layer, [L, B, Q, D]
    _keys: dict = field(default_factory=dict)

    def keys(self, kind: str, device) -> torch.Tensor:
        """Knocked-out key positions, ``[B, T]`` bool (``kind``: desc, span or block)."""
        if kind not in self._keys:
            self._keys[kind] = KEYS[kind](self.formatted).to(device)
        return self._keys[kind]


class HeadKnockout:
    """Knockout conditions on a fixed set of requests against one tool list.

    >>> ko = HeadKnockout(lm, tools, requests, gold)       # clean run: ko.clean_scores [n, N]
    >>> scores = ko.run(heads)                              # heads [C, L, H] bool -> [C, n, N]
    >>> est = ko.atp()                                      # {"atp": [L, H], ...} mean change of the margin

    ``keys`` (desc, span or block) is the default of ``run``/``atp``; ``share``: a runner on the same
    tool list whose tool block and shared tail are reused (not computed again). Memory: a knockout pass
    holds ``max_rows`` (condition x request) rows of one layer's keys/values at a time; AtP keeps the
    graph of a whole ``batch_size`` batch (float32 attention of every layer). Measured on one H100 with
    Qwen3-4B's architecture in bf16 (40 requests, 10 tools): 1.0 ms per request-condition with the heads
    in layer 27 of 36, 3.4 ms in layer 0, 28 GB at 320 rows; AtP 2.6 s for the 40 requests in batches
    of 8 (10.3 s with GradDrop over 6 groups), 37 GB.
    """

    def __init__(self, lm: LoadedModel, tools: list[Tool], requests: list[str], gold: list[str],
                 keys: str = "desc", batch_size: int = 16, max_rows: int = 64, share: "HeadKnockout | None" = None,
                 only: list[set[str]] | None = None, prefix_kv: list | None = None):
        _check_keys(keys)
        self.lm, self.tools, self.keys, self.max_rows = lm, tools, keys, max_rows
        self.model = lm.model
        self.device = model_device(lm.model)
        self.decoder, _, _ = decoder_parts(lm.model)
        self.net = nnsight.NNsight(self.decoder)
        self.engine = ToolChoiceEngine(lm, batch_size=batch_size, progress=False)
        names = [t.name for t in tools]
        unknown = sorted(set(gold) - set(names))
        if unknown:
            raise ValueError(f"gold tools {unknown} are not in the tool list {names}")
        self.gold = torch.tensor([names.index(g) for g in gold])
        fs = self.engine.format(requests, tools)
        f0 = shortest_prefix(fs)
        self.T, self.P = f0.tool_block_end, f0.prefix_len
        for f in fs:
            if f.input_ids[: self.P] != f0.input_ids[: self.P]:
                raise ValueError("requests do not share their prefix; format them with the same tool list")
        self.n_layers = len(self.decoder.layers)
        self.cands = [self.engine.formatter.candidate_ids(f0, t.name) for t in tools]
        self.prefix_ids = f0.input_ids[: self.P]
        self.tail_ids = torch.tensor([f0.input_ids[self.T : self.P]], device=self.device)  # [1, S]
        self.tail_layout = Layout.span(self.T, length=self.P - self.T, device=self.device)
        if share is not None and share.prefix_ids == self.prefix_ids and share.T == self.T:
            self.tool_kv, self.tail_resid, self.shared_kv = share.tool_kv, share.tail_resid, share.shared_kv
        else:
            # ``prefix_kv``: keys/values already computed for a prefix of these prompts that covers the tool block
            # (e.g. the engine's); the tool block's part of them is the same computation
            self.tool_kv = ([(k[:, :, : self.T], v[:, :, : self.T]) for k, v in prefix_kv] if prefix_kv is not None
                            else PrefixCache(self.model, f0.input_ids[: self.T]).kv)  # per layer [1, kv, T, d]
            with torch.inference_mode(), use_toolattn(self.model):
                cache = kv_cache(self.tool_kv, 1)
                _, reads = traced_forward(self.net, [], "all", input_ids=self.tail_ids,
                                          attention_mask=self.tail_layout.masks(self.model),
                                          position_ids=self.tail_layout.q_pos, past_key_values=cache, use_cache=True)
            self.tail_resid = reads["resid"]  # [L, 1, S, D]
            self.shared_kv = [(layer.keys, layer.values) for layer in cache.layers]  # [1, kv, P, d]
        self.batches, scores = [], []
        # ``only``: per request, the candidates scored in full (a batch scores the union of its rows'; the
        # others get their first-token upper bound, ``self.exact``); requests of one gold tool are batched
        # together so that the unions stay small.
        order = sorted(range(len(fs)), key=lambda i: (int(self.gold[i]) if only else 0, len(fs[i].input_ids)))
        for b0 in range(0, len(fs), batch_size):
            index = order[b0 : b0 + batch_size]
            part = [fs[i] for i in index]
            full = None if only is None else sorted({names.index(n) for i in index for n in only[i]})
            packed = self.engine.pack(part, self.P, self.cands, full)
            with torch.inference_mode(), use_toolattn(self.model):
                h, reads = traced_forward(self.net, [], "all", input_ids=packed.ids,
                                          attention_mask=packed.layout.masks(self.model),
                                          position_ids=packed.layout.q_pos, past_key_values=DynamicCache(),
                                          use_cache=True, shared_kv=self.shared_kv)
                scores.append(self.engine.read(h, packed)[0])
            self.batches.append(_Batch(index, part, packed, reads["resid"]))
        self.clean_scores = self._in_order(scores)  # [n, N]
        self.exact = self._in_order([torch.tensor(b.packed.exact).expand(len(b.index), -1) for b in self.batches])

    def __len__(self) -> int:
        return len(self.gold)

    def _in_order(self, parts: list[torch.Tensor], dim: int = 0) -> torch.Tensor:
        out = torch.cat([to_numpy_ready(p) for p in parts], dim)
        index = torch.tensor([i for b in self.batches for i in b.index])
        return out.index_select(dim, torch.argsort(index))

    # -- knockout ------------------------------------------------------------------------------

    def run(self, heads: torch.Tensor, keys: str | None = None, progress=None) -> torch.Tensor:
        """Scores ``[C, n, N]`` (CPU float32) with the heads of each condition ``heads [C, L, H]`` knocked
        out at ``keys`` (default: the runner's). Conditions are run in groups of similar lowest layer,
        ``max_rows`` rows per pass. ``progress(done, total)`` is called after each group."""
        keys = _check_keys(keys or self.keys)
        heads = torch.as_tensor(heads, dtype=torch.bool)
        C = heads.shape[0]
        if C == 0:
            return torch.zeros(0, len(self), len(self.tools))
        lowest = torch.tensor([int(h.any(-1).nonzero()[0]) if h.any() else self.n_layers for h in heads])
        order = torch.argsort(lowest, stable=True).tolist()
        batch_rows = max(len(b.index) for b in self.batches)
        per_pass = max(1, self.max_rows // batch_rows)
        out = torch.zeros(C, len(self), len(self.tools))
        for g0 in range(0, C, per_pass):
            idx = order[g0 : g0 + per_pass]
            out[idx] = self._run_group(heads[idx], int(lowest[idx].min()), keys)
            if progress:
                progress(min(g0 + per_pass, C), C)
        return out

    def _run_group(self, heads: torch.Tensor, below: int, keys: str) -> torch.Tensor:
        """``heads [C, L, H]``, none below layer ``below`` -> scores ``[C, n, N]``."""
        C, dev = heads.shape[0], self.device
        if below >= self.n_layers:  # nothing knocked out
            return self.clean_scores[None].expand(C, -1, -1).clone()
        heads = heads.to(dev)
        tail_keys = self.batches[0].keys(keys, dev)[:1].expand(C, -1)  # the tool block is the same in every request
        with torch.inference_mode(), use_toolattn(self.model):
            # the shared tail, once per condition, after the tool block (read by every row without a copy)
            cache = DynamicCache()
            lay = self.tail_layout
            traced_forward(self.net, [], None, {i: self.tail_resid[i].expand(C, -1, -1) for i in range(below)},
                           input_ids=self.tail_ids.expand(C, -1),
                           attention_mask={k: m.expand(C, -1, -1, -1) for k, m in lay.masks(self.model).items()},
                           position_ids=lay.q_pos.expand(C, -1), past_key_values=cache, use_cache=True,
                           shared_kv=self.tool_kv, knockout_heads=heads, knockout_keys=tail_keys,
                           knockout_from=torch.zeros(C, dtype=torch.long, device=dev))
            # per layer, the tail's keys/values of each condition [C, kv, S, d] (a skipped layer: the clean ones)
            tail_kv = [(cache.layers[i].keys, cache.layers[i].values) if i >= below else
                       (k[:, :, self.T :].expand(C, -1, -1, -1), v[:, :, self.T :].expand(C, -1, -1, -1))
                       for i, (k, v) in enumerate(self.shared_kv)]
            scores = []
            for b in self.batches:
                B = len(b.index)
                # rows are condition-major [C * B]; each row's own keys start with its condition's tail (a few
                # tokens, copied per row), after the tool block that every row reads without a copy
                own = kv_cache([(k.repeat_interleave(B, 0), v.repeat_interleave(B, 0)) for k, v in tail_kv])
                lay = b.packed.layout
                h, _ = traced_forward(
                    self.net, [], None, {i: b.resid[i].repeat(C, 1, 1) for i in range(below)},
                    input_ids=b.packed.ids.repeat(C, 1),
                    attention_mask={k: m.repeat(C, 1, 1, 1) for k, m in lay.masks(self.model).items()},
                    position_ids=lay.q_pos.repeat(C, 1), past_key_values=own, use_cache=True,
                    shared_kv=self.tool_kv, knockout_heads=heads.repeat_interleave(B, 0),
                    knockout_keys=b.keys(keys, dev).repeat(C, 1),
                    knockout_from=torch.zeros(C * B, dtype=torch.long, device=dev))
                scores.append(self.engine.read(h, b.packed)[0].reshape(C, B, -1))
        return self._in_order(scores, 1)

    # -- attribution patching ------------------------------------------------------------------

    def atp(self, graddrop: int = 0, keys: str | None = None) -> dict:
        """Attribution-patching estimates of every head's knockout effect on the margin (gold minus best
        other), averaged over the requests: ``{"atp": [L, H], "graddrop": [L, H] or None, "groups":
        [[layers of group g], ...]}`` (numpy). ``graddrop``: number of contiguous layer groups whose
        gradient is dropped in turn (``L`` = every layer, as in AtP*; 0 = none)."""
        keys = _check_keys(keys or self.keys)
        L, H = self.n_layers, self.model.config.num_attention_heads
        groups = [g.tolist() for g in np.array_split(np.arange(L), min(graddrop, L))] if graddrop >= 2 else []
        alpha = torch.zeros(L, H, device=self.device, dtype=torch.float32, requires_grad=True)
        state = {"drop": ()}
        hooks = [layer.register_forward_hook(_gate_hook(state, i), with_kwargs=True)
                 for i, layer in enumerate(self.decoder.layers)]
        totals = [torch.zeros(L, H) for _ in range(1 + len(groups))]
        try:
            with torch.enable_grad(), use_toolattn(self.model):
                for b in self.batches:
                    total = margin(self._interpolated(b, alpha, keys), self.gold[b.index].to(self.device)).sum()
                    for v, drop in enumerate([()] + groups):
                        state["drop"] = tuple(drop)
                        g, = torch.autograd.grad(total, alpha, retain_graph=v < len(groups))
                        totals[v] += to_numpy_ready(g)
                    state["drop"] = ()
        finally:
            for hk in hooks:
                hk.remove()
        n = len(self)
        est = (totals[0] / n).numpy()
        gd = None
        if groups:
            gd = (sum(t.abs() for t in totals[1:]) / (len(groups) - 1) / n).numpy()
        return {"atp": est, "graddrop": gd, "groups": groups}


    def _interpolated(self, b: _Batch, alpha: torch.Tensor, keys: str) -> torch.Tensor:
        """Scores ``[B, N]`` of batch ``b`` with every head's pattern ``A + alpha[l, h] * (A_ko - A)``
        (``alpha [L, H]``; one-hot 1 is the knockout of that head); inside ``use_toolattn``."""
        zeros = torch.zeros(len(b.index), dtype=torch.long, device=self.device)
        cache = kv_cache(self.tool_kv, 1)
        lay = self.tail_layout
        self.decoder(input_ids=self.tail_ids, attention_mask=lay.masks(self.model), position_ids=lay.q_pos,
                     past_key_values=cache, use_cache=True, atp_alpha=alpha, knockout_keys=b.keys(keys, self.device)[:1],
                     knockout_from=zeros[:1])
        kv = [(layer.keys, layer.values) for layer in cache.layers]  # [1, kv, P, d], with their graph
        lay = b.packed.layout
        h = self.decoder(input_ids=b.packed.ids, attention_mask=lay.masks(self.model), position_ids=lay.q_pos,
                         past_key_values=DynamicCache(), use_cache=True, shared_kv=kv, atp_alpha=alpha,
                         knockout_keys=b.keys(keys, self.device),
                         knockout_from=zeros).last_hidden_state
        return self.engine.read(h, b.packed)[0]

    def interpolated(self, alpha: torch.Tensor, keys: str | None = None) -> torch.Tensor:
        """Scores ``[n, N]`` (CPU float32) with every head's pattern moved ``alpha [L, H]`` of the way to
        its knocked-out pattern (what AtP differentiates)."""
        with torch.inference_mode(), use_toolattn(self.model):
            return self._in_order([self._interpolated(b, alpha.to(self.device), _check_keys(keys or self.keys))
                                   for b in self.batches])


def _check_keys(keys: str) -> str:
    if keys not in KEYS:
        raise ValueError(f"unknown knockout keys {keys!r}; use one of {sorted(KEYS)}")
    return keys


class _Gate(torch.autograd.Function):
    """Identity forward; backward passes the gradient unless its layer is in ``state["drop"]``."""

    @staticmethod
    def forward(ctx, x, state, layer):
        ctx.state, ctx.layer = state, layer
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return (torch.zeros_like(g) if ctx.layer in ctx.state["drop"] else g), None, None


def _gate_hook(state: dict, layer: int):
    """Forward hook of decoder layer ``layer``: output = input + gate(output - input), so that GradDrop
    can stop the gradient through the layer's residual contribution (the skip path keeps it)."""

    def hook(module, args, kwargs, output):
        x = args[0] if args else kwargs["hidden_states"]
        out = output[0] if isinstance(output, tuple) else output
        if not out.requires_grad:
            return output
        gated = x + _Gate.apply(out - x, state, layer)
        return (gated, *output[1:]) if isinstance(output, tuple) else gated

    return hook


def full_prompt_scores(lm: LoadedModel, tools: list[Tool], requests: list[str], heads: torch.Tensor,
                       keys: str = "desc") -> tuple[torch.Tensor, float]:
    """Reference: the same knockout (``heads [L, H]``) with every token of the prompt run again, nothing
    cached; the knockout applies from each request's tool-block end. Returns ``(scores [n, N], seconds)``."""
    engine = ToolChoiceEngine(lm, batch_size=len(requests), progress=False)
    fs = engine.format(requests, tools)
    cands = [engine.formatter.candidate_ids(fs[0], t.name) for t in tools]
    packed = engine.pack(fs, 0, cands)
    t0 = time.time()
    with torch.inference_mode(), use_toolattn(lm.model):
        decoder, _, _ = decoder_parts(lm.model)
        start = torch.tensor([f.tool_block_end for f in fs], device=engine.device)
        h = decoder(input_ids=packed.ids, attention_mask=packed.layout.masks(lm.model),
                    position_ids=packed.layout.q_pos, knockout_heads=torch.as_tensor(heads, dtype=torch.bool),
                    knockout_keys=KEYS[keys](fs), knockout_from=start).last_hidden_state
        scores = engine.read(h, packed)[0]
    return to_numpy_ready(scores), time.time() - t0


__all__ = ["certified", "HeadKnockout", "margin", "full_prompt_scores"]
