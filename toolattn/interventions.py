"""Reading, ablating and patching activations at the tool / no-tool decision.

The decision is read at the first reply position (``Formatted.reply_position``): P(tool) is the
probability mass of the call-opening first tokens, ``decides_tool`` is "opening a call beats every
other first token", exactly as in ``ToolChoiceEngine``.

Sites, per decoder layer ``l``:

* ``resid`` -- the residual stream after layer ``l`` (the decoder layer's output); ``emb`` is the
  residual stream before layer 0 (the token embeddings, Gemma's scaling included);
* ``mlp`` -- the MLP's contribution to the residual stream: the output of Gemma 3's
  ``post_feedforward_layernorm`` (which follows its MLP), of ``mlp`` in Qwen.

How a run is laid out. The tool block is the same for every request, so its keys/values are
computed once (``PrefixCache``) and nothing in it is ever edited. The tokens after it that every
request shares (the rest of the system turn, or the few-shot examples of the text format) come next:
they are run once, at batch 1, with the same edit as the requests (so an ablation "at every position
after the tool block" covers them), and their keys/values are broadcast to the request batches.
Then the request tokens up to the reply position run batched, right-padded, with explicit positions
and boolean masks (``Layout``; sliding-window layers included), on the model's device. What comes
back to callers (``Readout``, ``Clean``'s activations) is CPU float32.

Requests are batched by length (little padding); results come back in the order given.

An ablation at layer ``l`` cannot change layers below ``l``, so on the request tokens those layers
are not run again: nnsight's ``skip`` hands them their output from the clean run
(``Clean.resid_all``). Patching only the reply position leaves every earlier position unchanged,
so ``patch_decision`` re-runs the reply token alone on the keys/values of the clean run
(``Clean.caches``): one token per request instead of the whole request.

Edits and reads go through nnsight (``nnsight.NNsight(decoder).trace(...)``: ``module.output`` is
read or replaced, ``module.skip(...)``). Checked with nnsight 0.8.1 and transformers 5.23: the
decoder call takes the explicit mask dict, position ids and ``DynamicCache`` unchanged and gives
the same numbers as a plain forward and as the engine (tests/test_interventions.py). Cost,
measured on gemma-3-270m-tools (2 CPU cores; one decoder call on 40 requests x 44 tokens after a
cached 212-token prefix; best of 7): plain call 2.13 s; nnsight trace, no edit 2.13 s; nnsight
reading every layer at the reply position and zeroing one MLP 2.17 s; the same with plain torch
forward hooks 2.19 s. On a tiny model a trace adds about 0.7 ms per call. nnsight is not measurably
slower here, so nothing falls back to hooks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import nnsight
import torch
from transformers import DynamicCache

from .attention import use_toolattn
from .device import model_device, to_numpy_ready
from .layout import Layout
from .models import LoadedModel
from .prompts import Formatted, PromptFormatter
from .scoring import PrefixCache, decoder_parts, kv_cache, shortest_prefix
from .tools import Tool

SITES = ("resid", "mlp")


def in_order(parts: list[torch.Tensor], batches: list[Batch], dim: int = 0) -> torch.Tensor:
    """Per-batch results concatenated along ``dim`` and put back in request order."""
    out = torch.cat(parts, dim)
    index = torch.cat([b.index for b in batches])
    return out.index_select(dim, torch.argsort(index))


def shared_len(fs: list[Formatted]) -> int:
    """Number of leading tokens every request shares (the tool block and what follows it up to the
    request; a request's first token may absorb a space, so this is the smallest ``prefix_len``)."""
    return shortest_prefix(fs).prefix_len


def mlp_site(layer):
    """The submodule whose output is the MLP's contribution to the residual stream."""
    return layer.post_feedforward_layernorm if hasattr(layer, "post_feedforward_layernorm") else layer.mlp


@dataclass
class Edit:
    """Replace the ``site`` output of ``layer`` by ``value`` where ``where`` is True.

    ``value``: ``[batch, q, hidden]`` or anything that broadcasts to it (``torch.zeros(())``);
    ``where``: ``[batch, q]`` bool, or None for every position of the input.
    """

    layer: int
    site: str
    value: torch.Tensor
    where: torch.Tensor | None = None

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        value = self.value.to(device=x.device, dtype=x.dtype).expand_as(x)
        if self.where is None:
            return value.clone()
        return torch.where(self.where.to(x.device)[..., None], value, x)


def traced_forward(net, edits: list[Edit] = (), read_at=None, skip: dict | None = None, **decoder_kwargs):
    """One decoder call through nnsight with ``edits`` applied.

    ``read_at``: LongTensor ``[batch]`` (an input index per row) -- also return the embedding and
    each layer's ``resid`` and ``mlp`` there, ``{"emb": [batch, hidden], "resid": [layers, batch,
    hidden], "mlp": [layers, batch, hidden]}``; ``read_at="all"``: whole ``[.., batch, q, hidden]``.
    ``skip``: ``{layer: output [batch, q, hidden]}`` -- those layers are not run; their output is
    given (a layer below every edit has its clean output, so an edited run need not recompute it).
    Returns ``(last_hidden_state [batch, q, hidden], reads or None)``.
    """
    by_layer, skip = {}, skip or {}
    for e in edits:
        if e.site not in SITES:
            raise ValueError(f"unknown site {e.site!r}; use one of {SITES}")
        by_layer.setdefault((e.layer, e.site), []).append(e)
    reading = read_at is not None
    rows = None if not reading or isinstance(read_at, str) else torch.arange(len(read_at))

    def pick(x):
        return x if rows is None else x[rows, read_at]

    reads = {"emb": None, "resid": [], "mlp": []}
    with net.trace(**decoder_kwargs):
        if reading:
            reads["emb"] = pick(net.embed_tokens.output).save()
        for i, layer in enumerate(net.layers):
            if i in skip:
                layer.skip(skip[i])
                continue
            if (i, "mlp") in by_layer or reading:
                m = mlp_site(layer)
                for e in by_layer.get((i, "mlp"), []):
                    m.output = e.apply(m.output)
                if reading:
                    reads["mlp"].append(pick(m.output).save())
            if (i, "resid") in by_layer or reading:
                for e in by_layer.get((i, "resid"), []):
                    layer.output = e.apply(layer.output)
                if reading:
                    reads["resid"].append(pick(layer.output).save())
        h = net.output.last_hidden_state.save()
    if not reading:
        return h, None
    return h, {"emb": reads["emb"], "resid": torch.stack(reads["resid"]), "mlp": torch.stack(reads["mlp"])}


@dataclass
class Batch:
    """Requests run together: their tokens after the shared tokens, right-padded.

    ``index``: ``[batch]`` position of each request in the list given (CPU); ``ids``/``valid``: ``[batch, q]``;
    ``reply``: ``[batch]`` index of the reply position in ``ids``; ``start``: prompt position of
    ``ids[:, 0]`` (the shared length). ``ids``, ``valid`` and ``reply`` are on the model's device.
    """

    formatted: list[Formatted]
    index: torch.Tensor
    ids: torch.Tensor
    valid: torch.Tensor
    reply: torch.Tensor
    start: int


@dataclass
class Readout:
    """The decision of each request, and (clean runs) the activations at its reply position.

    ``p_tool``, ``p_other``: ``[n]``; ``emb``: ``[n, hidden]``; ``resid``, ``mlp``: ``[layers, n, hidden]``.
    """

    p_tool: torch.Tensor
    p_other: torch.Tensor
    emb: torch.Tensor | None = None
    resid: torch.Tensor | None = None
    mlp: torch.Tensor | None = None
    text_nll: torch.Tensor | None = None  # [n] mean next-token loss (nats) over the request's own text

    @property
    def decides_tool(self) -> torch.Tensor:
        """``[n]`` bool, as ``Choice.decides_tool``."""
        return self.p_tool > self.p_other


@dataclass
class Clean(Readout):
    """A clean run, plus what ablation and patching reuse: per batch, the keys/values of the request
    tokens (per layer ``[batch, kv_heads, q, head_dim]``) and every layer's output at every request position
    (``resid_all``: ``[layers, batch, q, hidden]``); the mean MLP output over every token of every
    prompt, tool block included (``mlp_mean [layers, hidden]``); the mean token embedding of each
    request's own text (``request_emb [n, hidden]``)."""

    caches: list = field(default_factory=list, repr=False)
    resid_all: list = field(default_factory=list, repr=False)
    mlp_mean: torch.Tensor | None = field(default=None, repr=False)
    request_emb: torch.Tensor | None = None


class Intervener:
    """Runs requests against one tool list with edits at chosen layers and sites."""

    def __init__(self, lm: LoadedModel, tools: list[Tool], batch_size: int = 16, nll_tokens: int = 8):
        """``nll_tokens``: the loss on the request text is read over at most this many predicted tokens
        per request (the output head is the largest matrix of a small model)."""
        self.lm, self.tools, self.batch_size, self.nll_tokens = lm, tools, batch_size, nll_tokens
        self.model = lm.model
        self.device = model_device(lm.model)
        self.decoder, self.head, self.softcap = decoder_parts(lm.model)
        self.net = nnsight.NNsight(self.decoder)
        self.formatter = PromptFormatter.for_model(lm)
        self.open_ids = self.formatter.call_open_ids()
        self.layers = len(self.decoder.layers)
        self._tool_prefix = None
        self._text_end: dict[str, int] = {}
        self._shared: dict = {}
        self._prompt: dict = {}

    # -- layout --------------------------------------------------------------------------------

    def format(self, requests: list[str]) -> list[Formatted]:
        fs = [self.formatter.format(r, self.tools) for r in requests]
        for r, f in zip(requests, fs):  # last token of the request text (for its mean embedding)
            end = f.text.rfind(r) + len(r)
            self._text_end[f.text] = sum(1 for s, _ in f.offsets if s < end)
        if self._tool_prefix is None:
            self._tool_prefix = PrefixCache(self.model, fs[0].input_ids[: fs[0].tool_block_end])
        P = shared_len(fs)
        for f in fs:
            if f.input_ids[:P] != fs[0].input_ids[:P] or P < f.tool_block_end:
                raise ValueError("requests do not share their prefix; format them with the same tool list")
        return fs

    def batches(self, fs: list[Formatted]) -> list[Batch]:
        """Requests grouped by length (less padding); ``Batch.index`` says where each one came from."""
        P = shared_len(fs)
        order = sorted(range(len(fs)), key=lambda i: fs[i].prompt_len)
        out = []
        for b0 in range(0, len(fs), self.batch_size):
            index = order[b0 : b0 + self.batch_size]
            part = [fs[i] for i in index]
            suffixes = [f.input_ids[P : f.prompt_len] for f in part]
            S = max(len(s) for s in suffixes)
            ids = torch.tensor([s + [0] * (S - len(s)) for s in suffixes], device=self.device)
            valid = torch.tensor([[True] * len(s) + [False] * (S - len(s)) for s in suffixes], device=self.device)
            out.append(Batch(part, torch.tensor(index), ids, valid,
                             torch.tensor([f.reply_position - P for f in part], device=self.device), P))
        return out

    def shared(self, fs: list[Formatted], edits: list[Edit] = (), tool_kv: list | None = None) -> list:
        """Keys/values of the tokens every request shares, ``[1, kv_heads, shared_len, head_dim]``
        per layer; ``edits`` apply to the shared tokens after the tool block, whose keys/values are
        ``tool_kv`` (default: the clean tool block)."""
        f, P = fs[0], shared_len(fs)
        T = f.tool_block_end
        key = tuple(f.input_ids[:P])
        plain = not edits and tool_kv is None
        if plain and key in self._shared:
            return self._shared[key]
        cache = kv_cache(tool_kv or self._tool_prefix.kv, 1)
        if P > T:
            lay = Layout.span(T, length=P - T, device=self.device)
            with torch.inference_mode():
                traced_forward(self.net, edits, input_ids=torch.tensor([f.input_ids[T:P]], device=self.device),
                               attention_mask=lay.masks(self.model), position_ids=lay.q_pos, past_key_values=cache,
                               use_cache=True)
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        if plain:
            self._shared = {key: kv}  # the clean shared keys/values of the current request set
        return kv

    def shared_reads(self, fs: list[Formatted]) -> dict:
        """The clean shared tokens, read once at batch 1: every layer's output on the tool block
        (``resid [layers, 1, tool_block_end, hidden]``, to skip unchanged layers when it is recomputed)
        and the sum of every layer's MLP output over the shared tokens (``mlp_sum [layers, hidden]``,
        ``n`` tokens)."""
        f, P = fs[0], shared_len(fs)
        key = tuple(f.input_ids[:P])
        if key not in self._prompt:
            lay = Layout.span(0, length=P, device=self.device)
            with torch.inference_mode():
                _, r = traced_forward(self.net, [], "all", input_ids=torch.tensor([f.input_ids[:P]], device=self.device),
                                      attention_mask=lay.masks(self.model), position_ids=lay.q_pos)
            self._prompt = {key: {"resid": r["resid"][:, :, : f.tool_block_end],
                                  "mlp_sum": to_numpy_ready(r["mlp"][:, 0].float().sum(1)), "n": P}}
        return self._prompt[key]

    def tool_block(self, fs: list[Formatted], edits: list[Edit], below: int = 0) -> list:
        """Keys/values of the tool block recomputed with ``edits`` (per layer ``[1, kv_heads, T, head_dim]``).
        Layers under ``below`` (no edits there) keep their clean keys/values and are not run."""
        from transformers import DynamicCache

        ids = self._tool_prefix.ids
        lay = Layout.span(0, length=len(ids), device=self.device)
        resid = self.shared_reads(fs)["resid"]
        cache = DynamicCache()
        with torch.inference_mode():
            traced_forward(self.net, edits, skip={i: resid[i] for i in range(below)},
                           input_ids=torch.tensor([ids], device=self.device), attention_mask=lay.masks(self.model),
                           position_ids=lay.q_pos, past_key_values=cache, use_cache=True)
        return [self._tool_prefix.kv[i] if i < below else (cache.layers[i].keys, cache.layers[i].values)
                for i in range(self.layers)]

    def _request_forward(self, batch: Batch, shared_kv, edits, read_at=None, skip=None):
        """Returns ``(h, reads, request_kv)``: the request tokens' own keys/values per layer (the shared
        ones are read by every row without a copy: ``shared_kv`` of ``toolattn_attention``)."""
        P = shared_kv[0][0].shape[2]
        lay = Layout.span(P, batch.valid)
        cache = DynamicCache()
        with torch.inference_mode(), use_toolattn(self.model):
            h, reads = traced_forward(self.net, edits, read_at, skip, input_ids=batch.ids,
                                      attention_mask=lay.masks(self.model), position_ids=lay.q_pos,
                                      past_key_values=cache, use_cache=True, shared_kv=shared_kv)
        return h, reads, [(layer.keys, layer.values) for layer in cache.layers]

    def decision(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(p_tool, p_other)``, each ``[batch]``, from final hidden states ``[batch, hidden]``."""
        with torch.inference_mode():
            logits = self.head(h).float()
            if self.softcap:
                logits = torch.tanh(logits / self.softcap) * self.softcap
            probs = torch.softmax(logits, -1)
            p_tool = probs[:, self.open_ids].sum(-1)
            probs[:, self.open_ids] = 0
            return p_tool.cpu(), probs.max(-1).values.cpu()

    # -- runs ----------------------------------------------------------------------------------

    def clean(self, fs: list[Formatted]) -> Clean:
        """The unedited run: decisions, activations at the reply position, caches, MLP means."""
        shared_kv = self.shared(fs)
        reads = self.shared_reads(fs)
        # MLP output summed over every token of every prompt: the shared tokens once per request
        sums, count = reads["mlp_sum"] * len(fs), reads["n"] * len(fs)
        p, o, emb, resid, mlp, caches, req_emb, resid_all, nll = [], [], [], [], [], [], [], [], []
        batches = self.batches(fs)
        for batch in batches:
            h, r, kv = self._request_forward(batch, shared_kv, [], read_at="all")
            rows = torch.arange(len(batch.reply), device=self.device)
            pt, po = self.decision(h[rows, batch.reply])
            p.append(pt), o.append(po), caches.append(kv), resid_all.append(r["resid"])
            emb.append(to_numpy_ready(r["emb"][rows, batch.reply]))
            resid.append(to_numpy_ready(r["resid"][:, rows, batch.reply]))
            mlp.append(to_numpy_ready(r["mlp"][:, rows, batch.reply]))
            req_emb.append(to_numpy_ready(self._request_embedding(batch, r["emb"])))
            nll.append(self.text_nll(batch, h))
            sums = sums + to_numpy_ready((r["mlp"].float() * batch.valid[None, :, :, None]).sum((1, 2)))
            count += int(batch.valid.sum())
        return Clean(in_order(p, batches), in_order(o, batches), in_order(emb, batches), in_order(resid, batches, 1),
                     in_order(mlp, batches, 1), in_order(nll, batches), caches=caches, resid_all=resid_all,
                     mlp_mean=sums / count, request_emb=in_order(req_emb, batches))

    def text_nll(self, batch: Batch, h: torch.Tensor) -> torch.Tensor:
        """Mean next-token loss (nats) over each request's own text tokens (the first ``nll_tokens``
        predicted ones), ``[batch]``, from the final hidden states ``h [batch, q, hidden]``: how well the
        model still models language (ablations)."""
        P = batch.start
        out = []
        with torch.inference_mode():
            for b, f in enumerate(batch.formatted):
                t0, t1 = f.prefix_len - P, self._text_end[f.text] - P  # the text's tokens in the input
                t1 = min(t1, t0 + self.nll_tokens + 1)
                logits = self.head(h[b, t0 : t1 - 1]).float()  # predicting tokens t0+1 .. t1-1
                if self.softcap:
                    logits = torch.tanh(logits / self.softcap) * self.softcap
                target = batch.ids[b, t0 + 1 : t1]
                out.append(torch.nn.functional.cross_entropy(logits, target))
        return to_numpy_ready(torch.stack(out))

    def _request_embedding(self, batch: Batch, emb: torch.Tensor) -> torch.Tensor:
        """Mean token embedding of each request's own text, ``[batch, hidden]`` (``emb [batch, q, hidden]``)."""
        P = batch.start
        return torch.stack([emb[b, f.prefix_len - P : self._text_end[f.text] - P].float().mean(0)
                            for b, f in enumerate(batch.formatted)])

    def run(self, fs: list[Formatted], layer_edits, clean: Clean | None = None, below: int = 0,
            tool_kv: list | None = None, nll: bool = False) -> Readout:
        """An edited run over every position after the tool block (and over the tool block too when
        ``tool_kv``, its recomputed keys/values, is given).

        ``layer_edits(batch) -> list[Edit]`` gives the edits of a request batch; ``layer_edits(None)``
        those of the shared tokens (batch 1). Layers under ``below`` (no edits there) take their
        output from ``clean`` on the request tokens instead of being run again. ``nll``: also the
        next-token loss on each request's text.
        """
        shared_kv = self.shared(fs, layer_edits(None), tool_kv)
        p, o, losses = [], [], []
        batches = self.batches(fs)
        for j, batch in enumerate(batches):
            skip = {i: clean.resid_all[j][i] for i in range(below)} if clean is not None else None
            h, _, _ = self._request_forward(batch, shared_kv, layer_edits(batch), skip=skip)
            pt, po = self.decision(h[torch.arange(len(batch.reply), device=self.device), batch.reply])
            p.append(pt), o.append(po)
            if nll:
                losses.append(self.text_nll(batch, h))
        return Readout(in_order(p, batches), in_order(o, batches),
                       text_nll=in_order(losses, batches) if nll else None)

    def ablate_mlp(self, fs: list[Formatted], clean: Clean, layer: int, kind: str = "mean",
                   scope: str = "all", nll: bool = True) -> Readout:
        """The MLP output of ``layer`` set to zero (``kind="zero"``) or to its mean over every token of
        every prompt (``"mean"``, ``clean.mlp_mean``), at every position (``scope="all"``: the tool block
        is recomputed) or at every position after the tool block (``"after_block"``). With ``nll`` the
        readout includes the next-token loss on the request text, so that breaking the decision can be
        told apart from breaking the model.
        """
        if kind not in ("zero", "mean"):
            raise ValueError(f"unknown ablation {kind!r}; use 'zero' or 'mean'")
        if scope not in ("all", "after_block"):
            raise ValueError(f"unknown ablation scope {scope!r}; use 'all' or 'after_block'")
        edits = [Edit(layer, "mlp", torch.zeros(()) if kind == "zero" else clean.mlp_mean[layer])]
        tool_kv = self.tool_block(fs, edits, below=layer) if scope == "all" else None
        return self.run(fs, lambda batch: edits, clean, below=layer, tool_kv=tool_kv, nll=nll)

    def patch_request(self, fs: list[Formatted], clean: Clean, layer: int, source) -> Readout:
        """Replace the residual stream after ``layer`` at every request position (everything after the
        shared tokens) by that of request ``source[i]`` (``[n]`` indices), aligned by distance before the
        reply position, as far as both requests reach; then run the layers above."""
        rows = []  # per request (in the order given), the clean layer output up to its reply position
        for j, batch in enumerate(self.batches(fs)):
            for b, i in enumerate(batch.index.tolist()):
                rows.append((i, clean.resid_all[j][layer][b, : int(batch.reply[b]) + 1]))
        rows = [r for _, r in sorted(rows, key=lambda x: x[0])]

        def edits(batch):
            if batch is None:
                return []  # the shared tokens are the same in both requests
            value = torch.zeros(*batch.ids.shape, rows[0].shape[-1], dtype=rows[0].dtype, device=self.device)
            where = torch.zeros(batch.ids.shape, dtype=torch.bool, device=self.device)
            for b, i in enumerate(batch.index.tolist()):
                src, r = rows[int(source[i])], int(batch.reply[b])
                n = min(len(src), r + 1)
                value[b, r + 1 - n : r + 1] = src[len(src) - n :]
                where[b, r + 1 - n : r + 1] = True
            return [Edit(layer, "resid", value, where)]
        return self.run(fs, edits, clean, below=layer)

    def patch_decision(self, fs: list[Formatted], clean: Clean, layer: int, site: str,
                       source: torch.Tensor) -> Readout:
        """Replace the ``site`` output of ``layer`` at each request's reply position by
        ``source [n, hidden]`` and read the decision again. Earlier positions cannot change, so only
        the reply token is re-run, on the clean run's keys/values."""
        return self.patch_decisions(fs, clean, layer, [(site, source)])[0]

    def patch_decisions(self, fs: list[Formatted], clean: Clean, layer: int,
                        conditions: list[tuple[str, torch.Tensor]]) -> list[Readout]:
        """``patch_decision`` for several ``(site, source [n, hidden])`` conditions of one layer at once:
        each batch's rows are repeated once per condition, so the weights are read once per batch and
        not once per condition (a single-token forward on a CPU is bound by reading the weights)."""
        C = len(conditions)
        for site, _ in conditions:
            if site not in SITES:
                raise ValueError(f"unknown site {site!r}; use one of {SITES}")
        p, o = [], []
        batches = self.batches(fs)
        shared_kv = self.shared(fs)
        for batch, request_kv in zip(batches, clean.caches):
            B, S = batch.ids.shape
            P, dev = batch.start, self.device
            cache = kv_cache([(k.repeat(C, 1, 1, 1), v.repeat(C, 1, 1, 1)) for k, v in request_kv])  # condition-major
            rows = torch.arange(B, device=dev)
            # the reply token alone, after the shared keys and the request keys before it
            earlier = torch.cat([torch.ones(B, P, dtype=torch.bool, device=dev),
                                 batch.valid & (torch.arange(S, device=dev)[None] < batch.reply[:, None])], 1)
            lay = Layout.after(earlier.repeat(C, 1), (P + batch.reply).repeat(C)[:, None])
            index = batch.index.to(dev)
            edits = []
            for site in dict.fromkeys(s for s, _ in conditions):
                value = torch.cat([src.to(dev)[index] if s == site else torch.zeros_like(src.to(dev)[index])
                                   for s, src in conditions])[:, None]  # [C * B, 1, hidden]
                where = torch.tensor([s == site for s, _ in conditions], device=dev).repeat_interleave(B)[:, None]
                edits.append(Edit(layer, site, value, where))
            with torch.inference_mode(), use_toolattn(self.model):
                h, _ = traced_forward(self.net, edits, input_ids=batch.ids[rows, batch.reply][:, None].repeat(C, 1),
                                      attention_mask=lay.masks(self.model), position_ids=lay.q_pos,
                                      past_key_values=cache, use_cache=True, shared_kv=shared_kv)
            pt, po = self.decision(h[:, 0])
            p.append(pt.view(C, B)), o.append(po.view(C, B))
        return [Readout(in_order([x[c] for x in p], batches), in_order([x[c] for x in o], batches)) for c in range(C)]

__all__ = ["Edit", "Intervener", "Readout", "Clean", "Batch", "SITES", "mlp_site", "traced_forward", "kv_cache"]
