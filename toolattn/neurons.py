"""MLP neurons at the tool / no-tool decision: reading, attribution, ablation and patching.

A *neuron* is one hidden unit of a layer's MLP: one entry of the input of ``down_proj``,
``act_fn(gate_proj(x)) * up_proj(x)`` (Gemma 3, Qwen2, Qwen3), ``d_mlp`` of them per layer.

Everything runs through ``Intervener`` (batching, the prefix cache, the reply-token re-run,
the readout of P(tool)). ``NeuronIntervener`` is an ``Intervener`` whose ``mlp`` site is the
MLP's hidden units instead of the MLP's output: ``clean(fs).mlp`` holds the neuron activations
at the reply position (``[layers, n, d_mlp]``), ``patch_decisions(..., [("mlp", acts)])``
replaces them at the reply position, and ``run`` with a ``NeuronEdit`` sets chosen neurons at
every position after the tool block. Setting a neuron changes nothing at its own layer before
the MLP, so replacing the whole activation vector of the reply position by the clean one with
some entries changed is exactly the edit of those entries.

Attribution. The decision score is the margin ``log P(tool) - log P(other)`` at the reply
position (``P(other)``: the most probable first token that does not open a call), so the model
decides "tool" exactly when it is positive. A neuron's attribution is
``(mean activation on tool requests - mean on no-tool requests) * mean gradient of the margin
with respect to that activation`` (means over the requests given): the first-order change of the
margin when the neuron moves from its no-tool mean to its tool mean. The gradients of every
neuron of every layer come from one backward pass per batch, through the reply token alone on
the clean keys/values of the earlier tokens (which the reply position's activations cannot
change).

Zero-ablating every neuron of a layer equals zero-ablating the whole MLP output: ``down_proj``
has no bias, and Gemma's ``post_feedforward_layernorm`` maps a zero vector to zero. Mean
ablation differs between the two on Gemma (the norm is not linear), and agrees on Qwen
(``down_proj`` is linear).
"""

from __future__ import annotations

import numpy as np
import torch

from .interventions import Clean, Edit, Intervener, Readout, in_order, traced_forward
from .layout import Layout
from .scoring import kv_cache

NEURON_SITE = "mlp"  # in a NeuronIntervener, the "mlp" site is the MLP's hidden units


# --- the neuron site ------------------------------------------------------------------------

class _Inputs:
    """A module's first input, read and written as if it were its output."""

    def __init__(self, envoy):
        self._envoy = envoy

    @property
    def output(self):
        return self._envoy.input

    @output.setter
    def output(self, value):
        self._envoy.input = value


class _LayerView:
    """A decoder layer whose ``mlp`` site is the input of its ``down_proj`` (Gemma's
    ``post_feedforward_layernorm`` is hidden, so the site is not looked for there)."""

    def __init__(self, layer):
        self._layer = layer
        self.mlp = _Inputs(layer.mlp.down_proj)

    def __getattr__(self, name):
        if name == "post_feedforward_layernorm":
            raise AttributeError(name)
        return getattr(self._layer, name)

    @property
    def output(self):
        return self._layer.output

    @output.setter
    def output(self, value):
        self._layer.output = value


class _NeuronView:
    """The nnsight-wrapped decoder with every layer seen through ``_LayerView``."""

    def __init__(self, net):
        self._net = net
        self.layers = [_LayerView(layer) for layer in net.layers]

    def __getattr__(self, name):
        return getattr(self._net, name)


class NeuronIntervener(Intervener):
    """An ``Intervener`` whose ``mlp`` site is the MLP's hidden units (``d_mlp`` per layer).

    ``clean(fs)``: ``.mlp [layers, n, d_mlp]`` neuron activations at the reply position,
    ``.mlp_mean [layers, d_mlp]`` their mean over every token of every prompt; ``resid`` and
    the readout are as in ``Intervener``.
    """

    def __init__(self, lm, tools, batch_size: int = 16, nll_tokens: int = 8):
        super().__init__(lm, tools, batch_size, nll_tokens)
        self.net = _NeuronView(self.net)
        self.d_mlp = self.decoder.layers[0].mlp.down_proj.in_features


class NeuronEdit(Edit):
    """Set the neurons ``neurons`` (``[k]`` indices) of ``layer`` to ``value`` (``[d_mlp]``, or
    anything that broadcasts to ``[batch, q, d_mlp]``; only the chosen entries are used) where
    ``where [batch, q]`` is True (None: every position of the input)."""

    def __init__(self, layer: int, neurons, value: torch.Tensor, where: torch.Tensor | None = None):
        super().__init__(layer, NEURON_SITE, value, where)
        self.neurons = torch.as_tensor(neurons, dtype=torch.long)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        idx = self.neurons.to(x.device)
        value = self.value.to(device=x.device, dtype=x.dtype).expand_as(x).index_select(-1, idx)
        if self.where is not None:
            value = torch.where(self.where.to(x.device)[..., None], value, x.index_select(-1, idx))
        return x.index_copy(-1, idx, value)


class Add(Edit):
    """Add ``value`` (broadcasting to ``[batch, q, width]``) to the ``site`` output of ``layer``
    where ``where [batch, q]`` is True (None: every position). The added tensor may require grad."""

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        value = self.value.to(device=x.device, dtype=x.dtype)
        if self.where is not None:
            value = value * self.where.to(x.device)[..., None].to(x.dtype)
        return x + value


# --- reading and gradients ------------------------------------------------------------------

def read_neurons(niv: NeuronIntervener, fs) -> Clean:
    """The clean run of ``fs`` with neuron activations at the reply position: ``.mlp [layers, n,
    d_mlp]`` CPU float32 (and everything else ``Intervener.clean`` gives)."""
    return niv.clean(fs)


def decision_margin(iv: Intervener, h: torch.Tensor) -> torch.Tensor:
    """``log P(tool) - log P(other)`` (float32, differentiable) from final hidden states ``h [batch,
    hidden]``; positive exactly when ``Readout.decides_tool``."""
    logits = iv.head(h).float()
    if iv.softcap:
        logits = torch.tanh(logits / iv.softcap) * iv.softcap
    logp = torch.log_softmax(logits, -1)
    tool = torch.logsumexp(logp[:, iv.open_ids], -1)
    other = logp.index_fill(1, torch.tensor(iv.open_ids, device=logp.device), float("-inf")).max(-1).values
    return tool - other


def readout_margin(r: Readout) -> torch.Tensor:
    """``[n]`` the margin of a ``Readout`` (``log p_tool - log p_other``)."""
    return torch.log(r.p_tool) - torch.log(r.p_other)


def neuron_gradients(niv: NeuronIntervener, fs, clean: Clean) -> torch.Tensor:
    """``[layers, n, d_mlp]`` CPU float32: the gradient of ``decision_margin`` with respect to every
    neuron's activation at the reply position, one backward pass per batch (the reply token re-run
    on the clean keys/values of the earlier tokens, as ``Intervener.patch_decisions`` does)."""
    dev, model = niv.device, niv.model
    dtype = next(model.parameters()).dtype
    shared = [(k.clone(), v.clone()) for k, v in niv.shared(fs)]  # ordinary tensors: autograd may save them
    batches = niv.batches(fs)
    out = []
    for batch, request_kv in zip(batches, clean.caches):
        B, S = batch.ids.shape
        P = batch.start
        cache = kv_cache(shared, B)
        for i, (k, v) in enumerate(request_kv):
            cache.update(k.clone(), v.clone(), i)
        earlier = torch.cat([torch.ones(B, P, dtype=torch.bool, device=dev),
                             batch.valid & (torch.arange(S, device=dev)[None] < batch.reply[:, None])], 1)
        lay = Layout.after(earlier, (P + batch.reply)[:, None])
        rows = torch.arange(B, device=dev)
        leaves = [torch.zeros(B, 1, niv.d_mlp, device=dev, dtype=dtype, requires_grad=True) for _ in range(niv.layers)]
        with torch.enable_grad():
            h, _ = traced_forward(niv.net, [Add(i, NEURON_SITE, leaf) for i, leaf in enumerate(leaves)],
                                  input_ids=batch.ids[rows, batch.reply][:, None], attention_mask=lay.masks(model),
                                  position_ids=lay.q_pos, past_key_values=cache, use_cache=True)
            grads = torch.autograd.grad(decision_margin(niv, h[:, 0]).sum(), leaves)
        out.append(torch.stack([g[:, 0] for g in grads]).float().cpu())
    return in_order(out, batches, 1)


def class_means(acts: torch.Tensor, needs) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean on tool requests, mean on no-tool requests)``, each ``[layers, d_mlp]``, from
    ``acts [layers, n, d_mlp]`` and ``needs [n]`` bool."""
    needs = torch.as_tensor(np.asarray(needs, bool))
    return acts[:, needs].mean(1), acts[:, ~needs].mean(1)


def attribution(acts: torch.Tensor, grads: torch.Tensor, needs) -> torch.Tensor:
    """``[layers, d_mlp]``: (mean activation on tool requests - mean on no-tool requests) x mean
    gradient of the margin, from ``acts`` and ``grads`` (``[layers, n, d_mlp]``) and ``needs [n]``."""
    tool, no_tool = class_means(acts, needs)
    return (tool - no_tool) * grads.mean(1)


def attribution_pvalues(acts: torch.Tensor, grads: torch.Tensor, needs, n_permutations: int = 200,
                        seed: int = 0) -> np.ndarray:
    """``[layers, d_mlp]`` permutation p-values of ``|attribution|`` under shuffled class labels (the
    mean gradient is kept; the class difference is redrawn): ``(1 + #{|null| >= |observed|}) / (1 + B)``."""
    needs = np.asarray(needs, bool)
    observed = attribution(acts, grads, needs).abs()
    g = grads.mean(1)
    rng = np.random.default_rng(seed)
    count = torch.zeros_like(observed)
    for _ in range(n_permutations):
        perm = rng.permutation(needs)
        tool, no_tool = class_means(acts, perm)
        count += (((tool - no_tool) * g).abs() >= observed).float()
    return ((1 + count) / (1 + n_permutations)).numpy()


# --- editing --------------------------------------------------------------------------------

def replaced(acts: torch.Tensor, neurons, value) -> torch.Tensor:
    """``acts [n, d_mlp]`` with the columns ``neurons`` replaced by ``value`` (``[d_mlp]``, ``[n, d_mlp]``
    or a scalar; only the chosen entries are used)."""
    out = acts.clone()
    idx = torch.as_tensor(neurons, dtype=torch.long)
    if len(idx):
        out[:, idx] = torch.as_tensor(value, dtype=acts.dtype).expand_as(acts)[:, idx]
    return out


def decision_runs(niv: NeuronIntervener, fs, clean: Clean, layer: int, sources: list[torch.Tensor],
                  max_rows: int = 64) -> list[Readout]:
    """One readout per ``sources[c] [n, d_mlp]``: the neurons of ``layer`` at the reply position set to
    it. Conditions run together (``patch_decisions``), at most ``max_rows`` rows per pass."""
    per = max(1, max_rows // max(1, niv.batch_size))
    out = []
    for c0 in range(0, len(sources), per):
        out += niv.patch_decisions(fs, clean, layer, [(NEURON_SITE, s) for s in sources[c0 : c0 + per]])
    return out


def ablate_neurons(niv: NeuronIntervener, fs, clean: Clean, layer: int, neurons, kind: str = "mean",
                   scope: str = "decision", mean: torch.Tensor | None = None) -> Readout:
    """The neurons ``neurons`` of ``layer`` set to ``mean`` (``[d_mlp]``; default their mean at the reply
    position over ``fs``) or to zero, at the reply position (``scope="decision"``) or at every position
    after the tool block (``"after_block"``, the shared tokens included)."""
    if kind not in ("mean", "zero"):
        raise ValueError(f"unknown ablation {kind!r}; use 'mean' or 'zero'")
    value = torch.zeros(niv.d_mlp) if kind == "zero" else (clean.mlp[layer].mean(0) if mean is None else mean)
    if scope == "decision":
        return decision_runs(niv, fs, clean, layer, [replaced(clean.mlp[layer], neurons, value)])[0]
    if scope == "after_block":
        edit = NeuronEdit(layer, neurons, value)
        return niv.run(fs, lambda batch: [edit], clean, below=layer)
    raise ValueError(f"unknown scope {scope!r}; use 'decision' or 'after_block'")


def patch_neurons(niv: NeuronIntervener, fs, clean: Clean, layer: int, neurons, source) -> Readout:
    """The neurons ``neurons`` of ``layer`` at the reply position of request ``i`` set to their values in
    request ``source[i]`` (``[n]`` indices into ``fs``); the other neurons keep their own values."""
    acts = clean.mlp[layer]
    return decision_runs(niv, fs, clean, layer, [replaced(acts, neurons, acts[torch.as_tensor(source)])])[0]


# --- selection ------------------------------------------------------------------------------

def top_neurons(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``[k]`` indices of the largest ``scores [d_mlp]`` (ties broken by index)."""
    order = np.lexsort((np.arange(len(scores)), -scores.numpy()))
    return torch.as_tensor(order[:k])


def kill_switch_candidates(attr: torch.Tensor, tool_mean: torch.Tensor, no_tool_mean: torch.Tensor,
                           per_layer: int) -> list[tuple[int, int]]:
    """``(layer, neuron)`` candidates for a no-tool veto: per layer, the ``per_layer`` neurons of largest
    attribution (``[layers, d_mlp]``) among those more active on no-tool requests than on tool requests."""
    out = []
    for layer in range(attr.shape[0]):
        score = torch.where(no_tool_mean[layer] > tool_mean[layer], attr[layer], torch.tensor(float("-inf")))
        out += [(layer, int(j)) for j in top_neurons(score, per_layer) if torch.isfinite(score[j])]
    return out


def find_kill_switch(niv: NeuronIntervener, fs, clean: Clean, needs, candidates: list[tuple[int, int]],
                     mean: torch.Tensor, max_rows: int = 64) -> dict:
    """The candidate whose mean ablation at the reply position (``mean [layers, d_mlp]``) most reduces
    the model's ability to decline the no-tool requests of ``fs`` (``needs [n]`` bool): the largest rise
    of the call rate on them, ties broken by the rise of their mean P(tool).

    Returns ``{"layer", "neuron", "call_rate_rise", "dp_tool", "scores": [[layer, neuron, rise, dp], ...]}``
    (``None`` values when there is no candidate)."""
    no_tool = torch.as_tensor(~np.asarray(needs, bool))
    base_call, base_p = clean.decides_tool[no_tool].float().mean(), clean.p_tool[no_tool].mean()
    scores = []
    for layer in sorted({c[0] for c in candidates}):
        mine = [j for l, j in candidates if l == layer]
        reads = decision_runs(niv, fs, clean, layer, [replaced(clean.mlp[layer], [j], mean[layer]) for j in mine],
                              max_rows)
        for j, r in zip(mine, reads):
            scores.append([layer, j, float(r.decides_tool[no_tool].float().mean() - base_call),
                           float(r.p_tool[no_tool].mean() - base_p)])
    if not scores:
        return {"layer": None, "neuron": None, "call_rate_rise": None, "dp_tool": None, "scores": []}
    best = max(scores, key=lambda s: (s[2], s[3]))
    return {"layer": best[0], "neuron": best[1], "call_rate_rise": best[2], "dp_tool": best[3], "scores": scores}


def blocking_value(acts: torch.Tensor, grads: torch.Tensor, needs, layer: int, neuron: int) -> float:
    """The activation a veto neuron is set to when it should block calls: its most extreme value on the
    no-tool requests in the direction that lowers the margin (the maximum where the mean gradient is
    negative, else the minimum), from ``acts``/``grads [layers, n, d_mlp]``."""
    x = acts[layer, torch.as_tensor(~np.asarray(needs, bool)), neuron]
    return float(x.max() if grads[layer, :, neuron].mean() < 0 else x.min())


__all__ = ["NEURON_SITE", "NeuronIntervener", "NeuronEdit", "Add", "read_neurons", "decision_margin",
           "readout_margin", "neuron_gradients", "class_means", "attribution", "attribution_pvalues", "replaced",
           "decision_runs", "ablate_neurons", "patch_neurons", "top_neurons", "kill_switch_candidates",
           "find_kill_switch", "blocking_value"]
