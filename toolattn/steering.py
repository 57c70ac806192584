"""Steering the tool / no-tool decision and the choice of tool, and the ``Steerer`` API.

Directions, per layer, from the residual stream at the reply position of training requests:

* the *tool direction*: mean over tool requests minus mean over no-tool requests (gold labels);
* *per-tool directions*: for each tool, the mean over the tool requests whose forced choice is that
  tool minus the mean over every tool request with a choice (so the direction from tool A to tool
  B is the difference of the two, and steering to B needs no knowledge of A); a tool nobody picked
  has no direction (NaN);
* the *kill switch*: one MLP neuron (``toolattn.neurons``) that vetoes calls, and the value it is
  set to when it should block them.

A steering vector is ``alpha x unit(direction) x scale``, ``scale`` being the mean norm of the
residual stream at that layer over the training requests: ``alpha = 1`` adds a vector as long as a
typical residual. ``random_direction`` gives the control: a random direction of the same norm.
The vector is added to the output of one decoder layer at the reply position (``scope="decision"``)
or at every position after the tool block (``"after_block"``).

Two routes, one edit. Batched measurements go through ``Intervener`` (nnsight): at the reply
position the residual stream is patched with its clean value plus the vector
(``patch_decisions``: only the reply token runs again); after the tool block, ``Intervener.run``
with an ``Add`` edit. ``Steerer.predict`` reads one prompt through ``ToolChoiceEngine`` (P(tool),
forced choice, greedy call) with forward hooks that add the same vector at the positions the
scope names (read from the ``position_ids`` each decoder layer receives); tests check that both
routes give the same P(tool).
"""

from __future__ import annotations

import io
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .artifacts import atomic_write, write_json
from .interventions import Clean, Intervener, Readout
from .neurons import (Add, NeuronIntervener, attribution, blocking_value, class_means, find_kill_switch,
                      kill_switch_candidates, neuron_gradients)
from .parsing import parse_call
from .prompts import PromptFormatter
from .scoring import ToolChoiceEngine, decoder_parts
from .tools import Tool

MODES = ("normal", "force_tool", "prevent_tool")
SCOPES = ("decision", "after_block")


# --- directions -----------------------------------------------------------------------------

def difference_of_means(resid: torch.Tensor, needs) -> torch.Tensor:
    """``[layers, hidden]``: mean of ``resid [layers, n, hidden]`` over tool requests minus the mean over
    no-tool requests (``needs [n]`` bool)."""
    needs = torch.as_tensor(np.asarray(needs, bool))
    return resid[:, needs].mean(1) - resid[:, ~needs].mean(1)


def per_tool_directions(resid: torch.Tensor, labels: list, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(directions [layers, tools, hidden], counts [tools])``: for each tool of ``names``, the mean of
    ``resid [layers, n, hidden]`` over the requests labelled with it minus the mean over every labelled
    request (``labels [n]``: a tool name, or None for a request left out); NaN rows for a tool with none."""
    keep = torch.tensor([x is not None for x in labels])
    grand = resid[:, keep].mean(1) if keep.any() else torch.full(resid[:, 0].shape, float("nan"))
    dirs, counts = [], []
    for name in names:
        mine = torch.tensor([x == name for x in labels])
        counts.append(int(mine.sum()))
        dirs.append(resid[:, mine].mean(1) - grand if mine.any() else torch.full_like(grand, float("nan")))
    return torch.stack(dirs, 1), torch.tensor(counts)


def residual_scale(resid: torch.Tensor) -> torch.Tensor:
    """``[layers]``: the mean L2 norm of ``resid [layers, n, hidden]`` over requests."""
    return resid.float().norm(dim=-1).mean(1)


def unit(v: torch.Tensor) -> torch.Tensor:
    """``v [..., hidden]`` scaled to unit norm along the last axis (a zero vector stays zero)."""
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def random_direction(like: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A random direction (Gaussian, seeded) with the norm of ``like [..., hidden]`` (row by row)."""
    g = torch.Generator().manual_seed(int(seed))
    r = torch.randn(like.shape, generator=g, dtype=torch.float32).to(like.dtype)
    return unit(r) * like.norm(dim=-1, keepdim=True)


def steering_vector(direction: torch.Tensor, alpha: float, scale: float) -> torch.Tensor:
    """``[hidden]``: ``alpha x unit(direction) x scale``."""
    return alpha * unit(direction) * float(scale)


# --- batched steering through Intervener ----------------------------------------------------

def steer_decisions(iv: Intervener, fs, clean: Clean, layer: int, deltas: list[torch.Tensor],
                    max_rows: int = 64) -> list[Readout]:
    """One readout per ``deltas[c]`` (``[hidden]`` or ``[n, hidden]``): the residual stream after ``layer``
    at the reply position plus it. Conditions run together, at most ``max_rows`` rows per pass."""
    per = max(1, max_rows // max(1, iv.batch_size))
    base = clean.resid[layer]
    out = []
    for c0 in range(0, len(deltas), per):
        out += iv.patch_decisions(fs, clean, layer, [("resid", base + d.to(base.dtype)) for d in deltas[c0 : c0 + per]])
    return out


def steer_after_block(iv: Intervener, fs, clean: Clean, layer: int, delta: torch.Tensor) -> Readout:
    """The readout with ``delta [hidden]`` added to the residual stream after ``layer`` at every position
    after the tool block (the shared tokens included)."""
    edit = Add(layer, "resid", delta)
    return iv.run(fs, lambda batch: [edit], clean, below=layer)


# --- forward hooks for single prompts through ToolChoiceEngine ------------------------------

@contextmanager
def position_hooks(model, where, steer: tuple[int, torch.Tensor] | None = None,
                   neuron: tuple[int, int, float] | None = None):
    """Forward hooks that, in every decoder call made inside the block, add ``steer = (layer, vector
    [hidden])`` to that layer's output and set ``neuron = (layer, index, value)`` (an MLP hidden unit)
    at the positions where ``where(position_ids [batch, q]) -> [batch, q] bool`` is True."""
    layers = decoder_parts(model)[0].layers
    handles, seen = [], {}

    def remember(layer):
        def hook(module, args, kwargs):
            seen[layer] = kwargs.get("position_ids")
        return hook

    def add(module, args, kwargs, output):
        h = output[0] if isinstance(output, tuple) else output
        mask = where(kwargs["position_ids"]).to(h.device)[..., None]
        h = h + steer[1].to(h.device, h.dtype) * mask.to(h.dtype)
        return (h, *output[1:]) if isinstance(output, tuple) else h

    def set_unit(module, args):
        x = args[0]
        mask = where(seen[neuron[0]]).to(x.device)
        column = torch.where(mask, torch.tensor(neuron[2], dtype=x.dtype, device=x.device), x[..., neuron[1]])
        return (x.index_copy(-1, torch.tensor([neuron[1]], device=x.device), column[..., None]), *args[1:])

    try:
        if steer is not None:
            handles.append(layers[steer[0]].register_forward_hook(add, with_kwargs=True))
        if neuron is not None:
            handles.append(layers[neuron[0]].register_forward_pre_hook(remember(neuron[0]), with_kwargs=True))
            handles.append(layers[neuron[0]].mlp.down_proj.register_forward_pre_hook(set_unit))
        yield
    finally:
        for h in handles:
            h.remove()


def positions(scope: str, formatted) -> Callable[[torch.Tensor], torch.Tensor]:
    """``where(position_ids)`` of a scope for one formatted prompt: its reply position, or every position
    from the end of the tool block on."""
    if scope == "decision":
        return lambda pos: pos == formatted.reply_position
    if scope == "after_block":
        return lambda pos: pos >= formatted.tool_block_end
    raise ValueError(f"unknown scope {scope!r}; use one of {SCOPES}")


# --- the API --------------------------------------------------------------------------------

@dataclass
class Prediction:
    """``Steerer.predict``'s reading of one prompt: P(tool) and the decision at the reply position, the
    forced choice among the tools (``tool``), the greedy reply (``call``) and the tool it calls (None if
    it makes no call)."""

    prompt: str
    mode: str
    p_tool: float
    decides_tool: bool
    tool: str
    call: str
    called: str | None


@dataclass
class Steerer:
    """Tool / no-tool and tool-to-tool steering of one model, fitted on training requests.

    ``direction [layers, hidden]`` (difference of means), ``scale [layers]`` (mean residual norm),
    ``tool_directions [layers, tools, hidden]`` and ``tool_counts [tools]`` (per-tool directions and the
    requests behind each), ``kill`` (``{"layer", "neuron", "value", ...}`` or None).
    """

    model_name: str
    tool_names: list[str]
    direction: torch.Tensor
    scale: torch.Tensor
    tool_directions: torch.Tensor
    tool_counts: torch.Tensor
    layer: int
    alpha: float = 1.0
    scope: str = "decision"
    kill: dict | None = None
    n_train: int = 0
    lm: object = None

    # -- fitting -------------------------------------------------------------------------------

    @classmethod
    def fit(cls, lm, tools: list[Tool], requests, layer: int, kill_switch="search", choices: list | None = None,
            batch_size: int = 16, candidates: int = 3, alpha: float = 1.0, scope: str = "decision") -> "Steerer":
        """Fit the directions and the kill switch on ``requests`` (objects with ``.text`` and ``.needs_tool``,
        e.g. ``datasets.Request``, from the training split).

        ``choices``: the forced choice of each request (default: ``ToolChoiceEngine`` on the tool requests).
        ``kill_switch``: ``"search"`` (``candidates`` veto candidates per layer by attribution, the one
        whose mean ablation most raises the call rate on the no-tool requests), a ``(layer, neuron)``
        pair, or None.
        """
        texts, needs = [r.text for r in requests], np.array([r.needs_tool for r in requests])
        niv = NeuronIntervener(lm, tools, batch_size=batch_size)
        fs = niv.format(texts)
        clean = niv.clean(fs)
        if choices is None:
            tool_texts = [t for t, n in zip(texts, needs) if n]
            picked = iter(c.choice for c in ToolChoiceEngine(lm, batch_size, progress=False).score(tool_texts, tools))
            choices = [next(picked) if n else None for n in needs]
        labels = [c if n else None for c, n in zip(choices, needs)]
        kill = None
        if kill_switch is not None:
            grads = neuron_gradients(niv, fs, clean)
            if kill_switch == "search":
                tool_mean, no_tool_mean = class_means(clean.mlp, needs)
                cands = kill_switch_candidates(attribution(clean.mlp, grads, needs), tool_mean, no_tool_mean, candidates)
                kill = find_kill_switch(niv, fs, clean, needs, cands, clean.mlp.mean(1))
                kill.pop("scores")
            else:
                kill = {"layer": int(kill_switch[0]), "neuron": int(kill_switch[1])}
            if kill["layer"] is not None:
                kill["value"] = blocking_value(clean.mlp, grads, needs, kill["layer"], kill["neuron"])
            else:
                kill = None
        return cls.from_activations(lm, tools, clean.resid, needs, labels, layer, kill, alpha, scope)

    @classmethod
    def from_activations(cls, lm, tools: list[Tool], resid: torch.Tensor, needs, labels: list, layer: int,
                         kill: dict | None = None, alpha: float = 1.0, scope: str = "decision") -> "Steerer":
        """A steerer from residuals already read (``resid [layers, n, hidden]`` at the reply position), the
        gold classes ``needs [n]`` and the per-tool labels (``labels [n]``: the tool a request picks, None
        to leave it out)."""
        names = [t.name for t in tools]
        dirs, counts = per_tool_directions(resid, labels, names)
        return cls(lm.name, names, difference_of_means(resid, needs), residual_scale(resid), dirs, counts,
                   int(layer), float(alpha), scope, kill, int(len(needs)), lm)

    # -- steering ------------------------------------------------------------------------------

    def vector(self, mode: str = "normal", steer_to: str | None = None, alpha: float | None = None,
               layer: int | None = None) -> torch.Tensor | None:
        """``[hidden]`` the vector added at ``layer`` (default ``self.layer``): +/- ``alpha`` along the tool
        direction for ``force_tool`` / ``prevent_tool``, plus ``alpha`` along the direction of ``steer_to``;
        None when nothing is added."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; use one of {MODES}")
        layer = self.layer if layer is None else layer
        alpha = self.alpha if alpha is None else alpha
        scale = float(self.scale[layer])
        v = None
        if mode != "normal":
            v = steering_vector(self.direction[layer], alpha if mode == "force_tool" else -alpha, scale)
        if steer_to is not None:
            if steer_to not in self.tool_names:
                raise ValueError(f"unknown tool {steer_to!r}; fitted tools: {', '.join(self.tool_names)}")
            d = self.tool_directions[layer, self.tool_names.index(steer_to)]
            if torch.isnan(d).any():
                raise ValueError(f"no training request picked {steer_to!r}, so it has no direction; refit with more requests")
            w = steering_vector(d, alpha, scale)
            v = w if v is None else v + w
        return v

    def predict(self, prompt: str, tools: list[Tool] | None = None, mode: str = "normal", kill_switch: bool = False,
                steer_to: str | None = None, alpha: float | None = None, layer: int | None = None,
                scope: str | None = None, max_new_tokens: int = 32) -> Prediction:
        """Read ``prompt`` with ``tools`` (default: the fitted tools) while steering: ``mode`` adds the tool
        direction (``force_tool``) or subtracts it (``prevent_tool``), ``steer_to`` adds a tool's direction,
        ``kill_switch`` sets the kill-switch neuron to its blocking value; all at the positions of ``scope``
        (default ``self.scope``). ``max_new_tokens=0`` skips generation."""
        if self.lm is None:
            raise ValueError("this steerer has no model; load it with Steerer.load(folder, lm)")
        if tools is None:
            tools = _tools_named(self.tool_names)
        scope = scope or self.scope
        layer = self.layer if layer is None else layer
        if kill_switch and self.kill is None:
            raise ValueError("this steerer has no kill-switch neuron; fit it with kill_switch='search'")
        f = PromptFormatter.for_model(self.lm).format(prompt, tools)
        v = self.vector(mode, steer_to, alpha, layer)
        steer = None if v is None else (layer, v)
        neuron = (self.kill["layer"], self.kill["neuron"], self.kill["value"]) if kill_switch else None
        engine = ToolChoiceEngine(self.lm, batch_size=1, progress=False, prefix_end="tool_block")
        engine.stop_when_decided = False  # the whole reply, not only as far as its decision
        with position_hooks(self.lm.model, positions(scope, f), steer, neuron):
            choice = engine.score([prompt], tools)[0]
            call = engine.generate([prompt], tools, max_new_tokens=max_new_tokens)[0] if max_new_tokens else ""
        return Prediction(prompt, mode, choice.p_tool, choice.decides_tool, choice.choice, call,
                          parse_call(call).name if call else None)

    # -- artifact ------------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        """``steerer.npz`` (the directions, float32) and ``steerer.json`` (the rest) in ``folder``."""
        folder = Path(folder)
        buf = io.BytesIO()
        np.savez_compressed(buf, direction=self.direction.float().numpy(), scale=self.scale.float().numpy(),
                            tool_directions=self.tool_directions.float().numpy(), tool_counts=self.tool_counts.numpy())
        atomic_write(folder / "steerer.npz", buf.getvalue())
        write_json(folder / "steerer.json", {"model": self.model_name, "tools": self.tool_names, "layer": self.layer,
                                             "alpha": self.alpha, "scope": self.scope, "kill": self.kill,
                                             "n_train": self.n_train})

    @classmethod
    def load(cls, folder: Path, lm=None) -> "Steerer":
        """A saved steerer; ``lm`` (the same registry model) is needed to ``predict``."""
        folder = Path(folder)
        if not (folder / "steerer.json").exists() or not (folder / "steerer.npz").exists():
            raise FileNotFoundError(f"no steerer in {folder}; fit one (Steerer.fit) or run analyses.circuit_neurons")
        meta = json.loads((folder / "steerer.json").read_text(encoding="utf-8"))
        if lm is not None and lm.name != meta["model"]:
            raise ValueError(f"{folder} was fitted on {meta['model']}, not {lm.name}; load it with that model")
        with np.load(folder / "steerer.npz") as z:
            arrays = {k: torch.from_numpy(z[k]) for k in z.files}
        return cls(meta["model"], meta["tools"], arrays["direction"], arrays["scale"], arrays["tool_directions"],
                   arrays["tool_counts"], meta["layer"], meta["alpha"], meta["scope"], meta["kill"], meta["n_train"], lm)


def _tools_named(names: list[str]) -> list[Tool]:
    """The catalog's tools of these names, in this order."""
    from .tools import load_catalog

    catalog = {t.name: t for t in load_catalog()}
    missing = [n for n in names if n not in catalog]
    if missing:
        raise ValueError(f"tools {missing} are not in the catalog (data/tools.json); pass tools= explicitly")
    return [catalog[n] for n in names]


__all__ = ["MODES", "SCOPES", "difference_of_means", "per_tool_directions", "residual_scale", "unit",
           "random_direction", "steering_vector", "steer_decisions", "steer_after_block", "position_hooks", "positions",
           "Prediction", "Steerer"]
