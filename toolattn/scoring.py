"""The tool-choice engine: forced choice, P(tool), and free generation, on a shared prefix.

Every request with the same tool list shares the tokens of the tool block, so their keys and
values are computed once (``PrefixCache``) and read by every request of a batch without a copy per
row (``shared_kv`` of ``toolattn.attention.toolattn_attention``: one matmul of all rows' queries on
the shared keys, grouped-query heads kept grouped; only the rows' own keys are cached). A batch is one
forward pass over ``[request suffix (right-padded) | all candidate names, packed]``: each
candidate's tokens attend to the shared context and to their own earlier tokens only (a tree
mask), so all candidates of all requests are scored together without copying the cache per
candidate. Positions and masks are explicit (sliding-window layers included), and logits are
computed only at the positions that are read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from .attention import use_toolattn
from .device import model_device
from .layout import Layout
from .models import LoadedModel
from .parsing import reply_decided
from .prompts import Formatted, PromptFormatter
from .tools import Tool


THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
STOP_TOKENS = ("</tool_call>", "<|im_end|>", "<end_of_turn>", "<end_function_call>", "<start_function_response>")


@dataclass
class Choice:
    """The engine's reading of one request."""

    request: str
    logprobs: dict[str, float]  # candidate tool -> summed token log-probability of its name (scored in full)
    p_tool: float  # P(first reply token opens a call)
    p_other: float = 0.0  # the largest probability of any first reply token that does not open a call
    bounds: dict[str, float] = field(default_factory=dict)  # candidates not scored in full: the log-probability
    # of their first name token, an upper bound of their full score (every later token adds log p <= 0)

    @property
    def decides_tool(self) -> bool:
        """Greedy reading of the decision: opening a call beats every other first token."""
        return self.p_tool > self.p_other

    @property
    def choice(self) -> str:
        """The best candidate scored in full (the forced choice when ``certified``)."""
        return max(self.logprobs, key=self.logprobs.get)

    @property
    def certified(self) -> bool:
        """The forced choice over every candidate is ``choice``: no candidate left unscored can reach it."""
        return not self.bounds or (bool(self.logprobs) and max(self.bounds.values()) < self.logprobs[self.choice])

    def runner_up_certified(self) -> bool:
        """Also the second best over every candidate is scored in full (so margins are exact)."""
        if not self.bounds:
            return True
        if len(self.logprobs) < 2:
            return False
        second = sorted(self.logprobs.values())[-2]
        return max(self.bounds.values()) < second


def decoder_parts(model):
    """``(decoder, lm_head, final_softcap)`` of a causal LM."""
    cfg = getattr(model.config, "text_config", model.config)
    return model.model, model.lm_head, getattr(cfg, "final_logit_softcapping", None)


def layer_types(model) -> list[str]:  # noqa: D103
    cfg = getattr(model.config, "text_config", model.config)
    return list(getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers)


def kv_cache(kv: list[tuple[torch.Tensor, torch.Tensor]], batch: int | None = None):
    """A fresh ``DynamicCache`` holding ``kv`` (per layer ``[1 or batch, kv_heads, keys, head_dim]``, expanded
    to ``batch`` rows without a copy; the first update of a layer makes its new tensor)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for i, (k, v) in enumerate(kv):
        if batch is not None:
            k, v = k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)
        cache.update(k[..., :0, :], v[..., :0, :], i)  # initialise the layer, then hold the tensors as they
        cache.layers[i].keys, cache.layers[i].values = k, v  # are (an expanded view is not copied)
    return cache


@dataclass
class Packed:
    """``ToolChoiceEngine.pack``'s input of one batch: ``ids [batch, S + T]`` (S request-suffix columns,
    right-padded, then T packed candidate tokens), its ``layout``, the ``(candidate, token)`` of each
    packed column, the candidates' token ids, the ``reply`` / ``decision`` index of each row, and which
    candidates are scored in full."""

    ids: torch.Tensor
    layout: Layout
    S: int
    packed: list[tuple[int, int]]
    cands: list[list[int]]
    reply: torch.Tensor
    decision: torch.Tensor
    exact: list[bool]  # per candidate: scored in full (else its score is the first-token upper bound)


class PrefixCache:
    """Keys/values of the shared tool-block prefix, computed once per tool list."""

    def __init__(self, model, ids: list[int]):
        from transformers import DynamicCache

        self.ids = ids
        decoder, _, _ = decoder_parts(model)
        device = model_device(model)
        cache = DynamicCache()
        lay = Layout.span(0, length=len(ids), device=device)
        with torch.inference_mode():
            decoder(input_ids=torch.tensor([ids], device=device), attention_mask=lay.masks(model),
                    position_ids=lay.q_pos, past_key_values=cache, use_cache=True)
        self.kv = [(layer.keys, layer.values) for layer in cache.layers]  # each [1, kv_heads, n, head_dim]

    def shared(self) -> dict:
        """Decoder keyword arguments that put the prefix before every row's own keys without a copy per row
        (``toolattn.attention.toolattn_attention``'s ``shared_kv``; the model must run on it: ``use_toolattn``)."""
        return {"shared_kv": self.kv}

    def __len__(self) -> int:
        return len(self.ids)


def shortest_prefix(formatted: list[Formatted]) -> Formatted:
    """The prompt whose shared prefix is shortest: what every request of a call shares (a request's first
    token may absorb the space before it, which shortens that request's prefix by one token)."""
    return min(formatted, key=lambda f: f.prefix_len)


class ToolChoiceEngine:
    """Scores tool choices for batches of requests against one tool list at a time."""

    def __init__(self, lm: LoadedModel, batch_size: int = 16, progress: bool = True, prefix_end: str = "shared"):
        """``prefix_end``: cache everything the requests share (``"shared"``), or only the tool block
        (``"tool_block"``), so that interventions on every query after the tool block see all of them."""
        self.lm = lm
        self.model = lm.model
        self.device = model_device(lm.model)  # every tensor of a call is created here
        self.formatter = PromptFormatter.for_model(lm)
        self.batch_size = batch_size
        self.progress = progress
        self._prefix_key, self._prefix = None, None
        if prefix_end not in ("shared", "tool_block"):
            raise ValueError(f"prefix_end must be 'shared' or 'tool_block', not {prefix_end!r}")
        self.prefix_end = prefix_end
        self.stop_when_decided = True  # end a reply once its parsed call cannot change

    def prefix(self, tools: list[Tool], sample: Formatted) -> PrefixCache:
        n = sample.prefix_len if self.prefix_end == "shared" else sample.tool_block_end
        key = tuple(sample.input_ids[:n])
        if self._prefix_key != key:
            self._prefix = PrefixCache(self.model, sample.input_ids[:n])
            self._prefix_key = key
        return self._prefix

    def format(self, requests: list[str], tools: list[Tool], after: list[str] | None = None,
               thinking: bool | None = None) -> list[Formatted]:
        """Formatted prompts; ``after``: per request, reasoning that continues the prompt (thinking on)."""
        after = after or [""] * len(requests)
        return [self.formatter.format(r, tools, a, thinking) for r, a in zip(requests, after)]

    # -- forced choice and P(tool) -------------------------------------------------------------

    def score(self, requests: list[str], tools: list[Tool], desc: str = "scoring", forward_kwargs=None,
              after: list[str] | None = None, only: list[str] | None = None, keep: list | None = None) -> list[Choice]:
        """Forced choice and P(tool) for each request.

        ``forward_kwargs(batch: list[Formatted], prefix_len: int) -> dict`` may add keyword arguments to
        each batch's decoder call; transformers hands them to the attention function of every layer
        (this is how attention capture and knockout see the query rows of a batch). ``after``: per request,
        the reasoning of a thinking reply (``think``); the decision is then read after ``</think>``.
        ``only``: score just these candidates in full; every other one gets its first-token log-probability,
        an upper bound (``Choice.bounds``; ``Choice.certified`` says whether the forced choice is exact).
        ``keep``: a list that receives, per request, the keys/values of its tokens after the prefix (per
        layer ``[kv_heads, tokens, head_dim]``), so that more candidates can be scored later without
        running the request again (``rescore``).
        """
        formatted = self.format(requests, tools, after)
        prefix = self.prefix(tools, shortest_prefix(formatted))
        cands = [self.formatter.candidate_ids(formatted[0], t.name) for t in tools]
        names = [t.name for t in tools]
        unknown = sorted(set(only or []) - set(names))
        if unknown:
            raise ValueError(f"candidates {unknown} are not in the tool list {names}")
        full = None if only is None else [names.index(n) for n in only]
        open_ids = self.formatter.call_open_ids()
        out: list = [None] * len(formatted)
        kept: list = [None] * len(formatted)
        bar = tqdm(total=len(formatted), desc=desc, unit="req", disable=not self.progress)
        # batched by length (less padding), unless forward_kwargs collects per-batch outputs (captured
        # attention comes back batch by batch, in the order the requests were given)
        for index in self.batches(formatted, by_length=forward_kwargs is None):
            batch = [formatted[i] for i in index]
            extra = forward_kwargs(batch, len(prefix)) if forward_kwargs else {}
            part: list | None = [] if keep is not None else None
            for i, c, k in zip(index, self._score_batch(batch, prefix, tools, cands, open_ids, extra, full, part),
                               part if part is not None else index):
                out[i], kept[i] = c, k
            bar.update(len(batch))
        bar.close()
        if keep is not None:
            keep += kept
        return out

    def batches(self, formatted: list[Formatted], by_length: bool = True) -> list[list[int]]:
        """Request indices per batch of ``batch_size``: similar lengths together (the shorter rows of a batch
        are padding to its longest), or in the order given."""
        order = sorted(range(len(formatted)), key=lambda i: len(formatted[i].input_ids)) if by_length \
            else list(range(len(formatted)))
        return [order[b0 : b0 + self.batch_size] for b0 in range(0, len(order), self.batch_size)]

    def choose(self, requests: list[str], tools: list[Tool], gold: list[str] | None = None, desc: str = "choosing",
               forward_kwargs=None, slack: float = 4.0, rounds: int = 3) -> list[Choice]:
        """Forced choice on long tool lists, scoring in full only the candidates that can matter.

        A first pass reads every candidate's first-token log-probability (an upper bound of its
        score) and P(tool), with ``forward_kwargs`` (e.g. attention capture at the decision position,
        which the packed names cannot change). A second pass scores in full, per request, the
        candidates within ``slack`` nats of its best bound, its two best bounds and the gold. Where
        a request's best or second best is not certified (an unscored candidate's bound reaches it),
        the candidates whose bound reaches its second best score are added and scored, which certifies both (at most ``rounds`` passes; a request still not
        certified is scored with every candidate). The passes after the first run only the packed name
        tokens, on the requests' own keys/values kept from the first (``rescore``). The choice, the
        gold's score and the best other score equal ``score``'s; ``self.fallbacks`` counts the requests
        scored with every candidate.
        """
        kept: list = []
        first = self.score(requests, tools, desc, forward_kwargs, only=[], keep=kept)
        want = []
        for i, c in enumerate(first):
            bound = {**c.bounds, **c.logprobs}
            ranked = sorted(bound, key=bound.get, reverse=True)
            keep = set(ranked[:2]) | {n for n in ranked if bound[n] >= bound[ranked[0]] - slack}
            want.append(keep | ({gold[i]} if gold else set()))
        out: list = [None] * len(requests)
        todo = list(range(len(requests)))
        for _ in range(rounds):
            names = [t.name for t in tools]
            for i, c in zip(todo, self.rescore([requests[i] for i in todo], tools, [first[i] for i in todo],
                                               [kept[i] for i in todo], [sorted(want[i], key=names.index) for i in todo],
                                               desc)):
                out[i] = c
            todo = [i for i in todo if not (out[i].certified and out[i].runner_up_certified())]
            for i in todo:  # deepen: every candidate whose bound reaches the second best score found
                second = sorted(out[i].logprobs.values())[-2] if len(out[i].logprobs) > 1 else float("-inf")
                want[i] = set(out[i].logprobs) | {n for n, b in out[i].bounds.items() if b >= second}
            if not todo:
                break
        redo = [i for i, c in enumerate(out) if not (c.certified and c.runner_up_certified())]
        for i, c in zip(redo, self.rescore([requests[i] for i in redo], tools, [first[i] for i in redo],
                                           [kept[i] for i in redo], [t.name for t in tools], desc) if redo else []):
            out[i] = c
        self.fallbacks = len(redo)
        return out

    def _score_batch(self, batch: list[Formatted], prefix: PrefixCache, tools, cands, open_ids,
                     extra: dict | None = None, full: list[int] | None = None, keep: list | None = None) -> list[Choice]:
        P = len(prefix)
        for f in batch:
            if f.input_ids[:P] != prefix.ids:
                raise ValueError("a request does not share the tool-block prefix; format them with the same tool list")
        packed = self.pack(batch, P, cands, full)
        decoder, _, _ = decoder_parts(self.model)
        cache = DynamicCache()  # the rows' own keys/values; the prefix's are shared
        with torch.inference_mode(), use_toolattn(self.model):
            h = decoder(input_ids=packed.ids, attention_mask=packed.layout.masks(self.model),
                        position_ids=packed.layout.q_pos, past_key_values=cache, use_cache=True,
                        **prefix.shared(), **(extra or {})).last_hidden_state
            scores, p_tool, p_other = self.read(h, packed, open_ids)
            if keep is not None:  # each request's own tokens, [kv_heads, n, head_dim] per layer
                keep += [[(layer.keys[b, :, : len(f.input_ids) - P].clone(),
                           layer.values[b, :, : len(f.input_ids) - P].clone())
                          for layer in cache.layers] for b, f in enumerate(batch)]
        scores, p_tool, p_other = scores.cpu(), p_tool.cpu(), p_other.cpu()
        exact = packed.exact
        return [Choice(f.text, {t.name: float(scores[b, i]) for i, t in enumerate(tools) if exact[i]},
                       float(p_tool[b]), float(p_other[b]),
                       {t.name: float(scores[b, i]) for i, t in enumerate(tools) if not exact[i]})
                for b, f in enumerate(batch)]

    def rescore(self, requests: list[str], tools: list[Tool], first: list[Choice], kept: list,
                only: list[str] | list[list[str]], desc: str = "rescoring") -> list[Choice]:
        """``score(requests, tools, only=only)`` from a ``score(..., keep=kept)`` call on the same requests
        (``first``: its choices): the requests' own keys/values are reused, so only the packed name tokens of
        the candidates in ``only`` run (one list for every request, or one per request: each row packs its
        own); their first token's log-probability is read from ``first``."""
        formatted = self.format(requests, tools)
        prefix = self.prefix(tools, shortest_prefix(formatted))
        P = len(prefix)
        cands = [self.formatter.candidate_ids(formatted[0], t.name) for t in tools]
        names = [t.name for t in tools]
        per_row = only if only and not isinstance(only[0], str) else [only] * len(requests)
        exact = [[c in {names.index(n) for n in o} or len(ids) == 1 for c, ids in enumerate(cands)] for o in per_row]
        packs = [[(c, k) for c, ids in enumerate(cands) if ex[c] for k in range(len(ids) - 1)] for ex in exact]
        decoder, head, softcap = decoder_parts(self.model)
        device, out = self.device, []
        bar = tqdm(total=len(formatted), desc=desc, unit="req", disable=not self.progress)
        for b0 in range(0, len(formatted), self.batch_size):
            rows = list(range(b0, min(b0 + self.batch_size, len(formatted))))
            lens = [len(formatted[i].input_ids) - P for i in rows]
            S, B, T = max(lens), len(rows), max(len(packs[i]) for i in rows)
            scores = torch.tensor([[{**first[i].bounds, **first[i].logprobs}[n] for n in names] for i in rows])
            if T:
                def pad(x, n):  # [kv, n, d] -> [kv, S, d]
                    return torch.nn.functional.pad(x, (0, 0, 0, S - n))
                kv = [(torch.stack([pad(kept[i][j][0], n) for i, n in zip(rows, lens)]),
                       torch.stack([pad(kept[i][j][1], n) for i, n in zip(rows, lens)])) for j in range(len(prefix.kv))]
                # per row: its packed name tokens, right-padded to T (a pad is invalid and in no group)
                fill = lambda xs, x: xs + [x] * (T - len(xs))  # noqa: E731
                ids = torch.tensor([fill([cands[c][k] for c, k in packs[i]], 0) for i in rows], device=device)
                nxt = torch.tensor([fill([cands[c][k + 1] for c, k in packs[i]], 0) for i in rows], device=device)
                q_pos = torch.tensor([fill([P + n + k for _, k in packs[i]], P + n) for i, n in zip(rows, lens)],
                                     device=device)
                q_valid = torch.tensor([fill([True] * len(packs[i]), False) for i in rows], device=device)
                q_group = torch.tensor([fill([c + 1 for c, _ in packs[i]], 0) for i in rows], device=device)
                context = torch.tensor([[True] * (P + n) + [False] * (S - n) for n in lens], device=device)
                lay = Layout.after(context, q_pos, q_valid, q_group)
                with torch.inference_mode(), use_toolattn(self.model):
                    h = decoder(input_ids=ids, attention_mask=lay.masks(self.model), position_ids=lay.q_pos,
                                past_key_values=kv_cache(kv), use_cache=True, **prefix.shared()).last_hidden_state
                    logits = head(h).float()
                    if softcap:
                        logits = torch.tanh(logits / softcap) * softcap
                    lp = torch.log_softmax(logits, -1).gather(2, nxt[..., None])[..., 0].cpu()  # [B, T]
                for r, i in enumerate(rows):
                    for j, (c, _) in enumerate(packs[i]):
                        scores[r, c] += lp[r, j]
            for r, i in enumerate(rows):
                out.append(Choice(formatted[i].text, {n: float(scores[r, c]) for c, n in enumerate(names) if exact[i][c]},
                                  first[i].p_tool, first[i].p_other,
                                  {n: float(scores[r, c]) for c, n in enumerate(names) if not exact[i][c]}))
            bar.update(B)
        bar.close()
        return out

    def pack(self, batch: list[Formatted], P: int, cands: list[list[int]], full: list[int] | None = None) -> "Packed":
        """The input of one batch after a cached prefix of ``P`` tokens: ``[request suffix (right-padded) |
        every candidate's name tokens but the last, packed]`` with its ``Layout`` (a candidate's tokens see
        the shared keys and their own earlier tokens only). ``full``: pack only these candidates (indices);
        the others are read at their first token only (``Packed.exact`` is False for them)."""
        B = len(batch)
        suffixes = [f.input_ids[P:] for f in batch]
        S = max(len(s) for s in suffixes)
        exact = [full is None or c in full or len(ids) == 1 for c, ids in enumerate(cands)]
        packed = [(c, k) for c, ids in enumerate(cands) if exact[c] for k in range(len(ids) - 1)]
        T = len(packed)
        # Built as lists, moved to the model's device once.
        names = [cands[c][k] for c, k in packed]
        groups = [c + 1 for c, _ in packed]
        inp = [s + [0] * (S - len(s)) + names for s in suffixes]
        q_pos = [[P + i for i in range(S)] + [P + len(s) + k for _, k in packed] for s in suffixes]  # candidate
        q_valid = [[True] * len(s) + [False] * (S - len(s)) + [True] * T for s in suffixes]  # token k sits right
        q_group = [[0] * S + groups] * B  # after the call prefix
        device = self.device
        lay = Layout.after(P, torch.tensor(q_pos, device=device), torch.tensor(q_valid, device=device),
                           torch.tensor(q_group, device=device))
        return Packed(torch.tensor(inp, device=device), lay, S, packed, cands,
                      torch.tensor([f.reply_position - P for f in batch], device=device),
                      torch.tensor([f.decision_position - P for f in batch], device=device), exact)

    def read(self, h: torch.Tensor, packed: "Packed", open_ids: list[int] | None = None):
        """``(scores [batch, candidates], p_tool [batch], p_other [batch])`` from the final hidden states
        ``h [batch, q, hidden]`` of ``pack``'s input (rows may repeat the batch: ``batch = k * len(packed)``);
        float32 on the model's device; ``open_ids=None`` reads only the candidate scores."""
        _, head, softcap = decoder_parts(self.model)
        B, S, cands = h.shape[0], packed.S, packed.cands
        reply, decision = packed.reply.repeat(B // len(packed.reply)), packed.decision.repeat(B // len(packed.reply))
        rows = torch.arange(B, device=h.device)
        first = [] if open_ids is None else [h[rows, reply][:, None]]
        read = torch.cat(first + [h[rows, decision][:, None], h[:, S:]], 1)  # [B, (1)+1+T, H]
        logits = head(read).float()  # float32 from here on, whatever the weights' dtype
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        logp = torch.log_softmax(logits, -1)
        if open_ids is not None:
            probs = logp[:, 0].exp()
            p_tool = probs[:, open_ids].sum(-1)
            probs[:, open_ids] = 0
            p_other = probs.max(-1).values
            logp = logp[:, 1:]
        else:
            p_tool = p_other = None
        scores = logp[:, 0, [c[0] for c in cands]].clone()  # first name token, [B, C]
        for j, (c, k) in enumerate(packed.packed):
            scores[:, c] = scores[:, c] + logp[:, 1 + j, cands[c][k + 1]]
        return scores, p_tool, p_other

    # -- free generation -----------------------------------------------------------------------

    def generate(self, requests: list[str], tools: list[Tool], max_new_tokens: int = 32,
                 desc: str = "generating", return_ids: bool = False, after: list[str] | None = None,
                 thinking: bool | None = None, stop_ids: set[int] | None = None) -> list[str] | list[list[int]]:
        """Greedy continuations of the prompts (without the call prefix), decoded to text (or token ids).

        ``thinking=True``: the prompt leaves thinking on; ``stop_ids``: end at these tokens instead of the
        usual ones (and do not end a reply early once its call is decided)."""
        formatted = self.format(requests, tools, after, thinking)
        prefix = self.prefix(tools, shortest_prefix(formatted))
        stop = self.stop_ids() if stop_ids is None else stop_ids
        decided, self.stop_when_decided = self.stop_when_decided, self.stop_when_decided and stop_ids is None
        texts: list = [None] * len(formatted)
        bar = tqdm(total=len(formatted), desc=desc, unit="req", disable=not self.progress)
        try:
            for index in self.batches(formatted):
                for i, t in zip(index, self._generate_batch([formatted[i] for i in index], prefix, max_new_tokens, stop)):
                    texts[i] = t
                bar.update(len(index))
        finally:
            self.stop_when_decided = decided
        bar.close()
        return texts if return_ids else [self.lm.tokenizer.decode(t, skip_special_tokens=False) for t in texts]

    def think(self, requests: list[str], tools: list[Tool], max_new_tokens: int = 256,
              desc: str = "thinking") -> list[dict]:
        """Thinking on: the greedy reasoning of each request, up to ``</think>`` or ``max_new_tokens``.

        Returns per request ``{"after": text that continues the prompt, closed by "</think>\n\n" (added when
        the budget ran out), "tokens": reasoning tokens generated, "closed": whether the model closed it}``;
        pass the ``after`` texts to ``score``/``generate`` to read the decision after ``</think>``.
        """
        tok = self.lm.tokenizer
        close = THINK_CLOSE
        stop = {tok.convert_tokens_to_ids(close)} if close in tok.get_vocab() else set()
        stop |= {i for i in [tok.eos_token_id] if i is not None}
        ids = self.generate(requests, tools, max_new_tokens, desc=desc, return_ids=True, thinking=True, stop_ids=stop)
        out = []
        for seq in ids:
            text = tok.decode(seq, skip_special_tokens=False)
            closed = close in text
            body = text.split(close)[0].rstrip("\n") if closed else text.rstrip("\n")
            if not body.lstrip().startswith(THINK_OPEN):
                body = THINK_OPEN + "\n" + body.lstrip("\n")
            out.append({"after": body + "\n" + close + "\n\n", "tokens": len(seq), "closed": closed})
        return out

    def stop_ids(self) -> set[int]:
        """Tokens that end a reply: end of sequence or turn, the end of a call, and (FunctionGemma) the start
        of a function response, which only the application writes."""
        tok = self.lm.tokenizer
        vocab = tok.get_vocab()
        stop = {i for i in [tok.eos_token_id] if i is not None}
        return stop | {vocab[t] for t in STOP_TOKENS if t in vocab}

    def _generate_batch(self, batch, prefix: PrefixCache, max_new: int, stop: set) -> list[str]:
        P, B = len(prefix), len(batch)
        suffixes = [f.input_ids[P : f.prompt_len] for f in batch]
        S = max(len(s) for s in suffixes)
        device = self.device
        inp = torch.tensor([s + [0] * (S - len(s)) for s in suffixes], device=device)
        lay = Layout.span(P, torch.tensor([[True] * len(s) + [False] * (S - len(s)) for s in suffixes],
                                          device=device))
        lengths = torch.tensor([len(s) for s in suffixes], device=device)
        decoder, head, _ = decoder_parts(self.model)
        cache, shared = DynamicCache(), prefix.shared()
        out = [[] for _ in range(B)]
        done = [False] * B
        with torch.inference_mode(), use_toolattn(self.model):
            h = decoder(input_ids=inp, attention_mask=lay.masks(self.model), position_ids=lay.q_pos,
                        past_key_values=cache, use_cache=True, **shared).last_hidden_state
            last = h[torch.arange(B, device=device), lengths - 1]
            for step in range(max_new):
                nxt = head(last).float().argmax(-1)
                for b, t in enumerate(nxt.tolist()):
                    if not done[b]:
                        out[b].append(t)
                        done[b] = t in stop or (self.stop_when_decided and reply_decided(
                            self.lm.tokenizer.decode(out[b], skip_special_tokens=False)))
                if all(done) or step == max_new - 1:
                    break
                lay = lay.extend((P + lengths + step)[:, None])
                h = decoder(input_ids=nxt[:, None], attention_mask=lay.masks(self.model),
                            position_ids=lay.q_pos, past_key_values=cache, use_cache=True, **shared).last_hidden_state
                last = h[:, 0]
        return out


def naive_choice(lm: LoadedModel, request: str, tools: list[Tool], after: str = "") -> Choice:
    """Reference: one full forward per candidate over the whole prompt (no cache, default masks)."""
    fm = PromptFormatter.for_model(lm)
    f = fm.format(request, tools, after)
    logprobs = {}
    with torch.inference_mode():
        p_tool = None
        for t in tools:
            ids = f.input_ids + fm.candidate_ids(f, t.name)
            logits = lm.model(input_ids=torch.tensor([ids], device=model_device(lm.model))).logits[0].float()
            logp = torch.log_softmax(logits, -1)
            n = len(f.input_ids)
            logprobs[t.name] = float(sum(float(logp[i - 1, ids[i]]) for i in range(n, len(ids))))
            if p_tool is None:
                p_tool = float(logp[f.reply_position, fm.call_open_ids()].exp().sum())
    return Choice(f.text, logprobs, p_tool)


__all__ = ["Choice", "ToolChoiceEngine", "PrefixCache", "Packed", "kv_cache", "naive_choice"]
