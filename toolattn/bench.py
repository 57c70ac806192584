"""``make bench``: the tool-choice engine against a naive loop, and its model FLOP utilisation.

All figures come from one run on this machine, so they are comparable with each other:

* matmul peak -- the best FLOP/s of float32 matmuls shaped like the model's MLP, measured before
  and after the engine runs;
* engine -- forced choice over the 10 core tools for a batch of held-out requests on the
  embedded Qwen (prefix computed once per tool list, candidates packed, logits only where read);
* naive -- one full forward over the whole prompt per request and per candidate (no cache):
  a few such forwards are timed and multiplied by the number of candidates;
* MFU -- achieved FLOP/s of the engine's batched forwards divided by the matmul peak.
"""

from __future__ import annotations

import argparse
import time

import torch

from .datasets import load_prompts, select
from .models import load_model, model_dims
from .scoring import ToolChoiceEngine
from .tools import core_tools


def matmul_peak(hidden: int, mlp: int, tokens: int = 1024, repeats: int = 5) -> float:
    """Best FLOP/s of [tokens, hidden] x [hidden, mlp] and its transpose (the MLP's shapes)."""
    a, w1, w2 = torch.randn(tokens, hidden), torch.randn(hidden, mlp), torch.randn(mlp, hidden)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(torch.mm(a, w1), w2)
        best = max(best, 4 * tokens * hidden * mlp / (time.perf_counter() - t0))
    return best


def forward_flops(model, query_tokens: int, keys_per_query: float, logit_positions: int) -> float:
    """FLOPs of the decoder for ``query_tokens`` queries: weight matmuls + attention + lm_head where read."""
    d = model_dims(model)
    linear = sum(p.numel() for n, p in model.model.named_parameters() if p.dim() == 2 and "embed" not in n)
    attention = 4 * d["layers"] * d["heads"] * d["head_dim"] * keys_per_query  # QK^T and AV
    head = 2 * model.lm_head.weight.numel()
    return query_tokens * (2 * linear + attention) + logit_positions * head


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Benchmark the tool-choice engine")
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--naive-forwards", type=int, default=3)
    args = ap.parse_args(argv)

    lm = load_model(args.model)
    tools = core_tools()
    reqs = [r.text for r in select(load_prompts(), split="heldout", n_per_tool=None, n_no_tool=0)]
    reqs = reqs[:: max(1, len(reqs) // args.requests)][: args.requests]
    d = model_dims(lm.model)
    peak = matmul_peak(d["hidden"], d["mlp"])

    engine = ToolChoiceEngine(lm, batch_size=args.batch_size, progress=False)
    formatted = engine.format(reqs, tools)
    engine.score(reqs[:2], tools)  # warm-up (pages the weights in)
    engine._prefix_key = None  # time the prefix too
    t0 = time.perf_counter()
    prefix = engine.prefix(tools, formatted[0])
    t_prefix = time.perf_counter() - t0
    cands = [engine.formatter.candidate_ids(formatted[0], t.name) for t in tools]
    open_ids = engine.formatter.call_open_ids()
    t0 = time.perf_counter()
    for b0 in range(0, len(formatted), args.batch_size):
        engine._score_batch(formatted[b0 : b0 + args.batch_size], prefix, tools, cands, open_ids)
    t_batched = time.perf_counter() - t0
    n = len(reqs)
    packed = sum(len(c) - 1 for c in cands)
    suffix_tokens = sum(len(f.input_ids) - len(prefix) for f in formatted)
    query_tokens = suffix_tokens + n * packed
    keys = len(prefix) + (suffix_tokens / n + packed) / 2
    flops_batched = forward_flops(lm.model, query_tokens, keys, n * (2 + packed))
    flops_prefix = forward_flops(lm.model, len(prefix), len(prefix) / 2, 0)

    peak = max(peak, matmul_peak(d["hidden"], d["mlp"]))  # measured before and after: the better of the two

    # naive: a full forward over prompt + candidate for each (request, candidate)
    t_naive = []
    with torch.inference_mode():
        for i in range(args.naive_forwards):
            f = formatted[i % n]
            ids = torch.tensor([f.input_ids + cands[i % len(cands)]])
            t0 = time.perf_counter()
            lm.model(input_ids=ids)
            t_naive.append(time.perf_counter() - t0)
    naive_per_request = sum(t_naive) / len(t_naive) * len(tools)
    engine_per_request = (t_batched + t_prefix) / n

    rows = [
        ("model", args.model),
        ("tools / requests / batch", f"{len(tools)} / {n} / {args.batch_size}"),
        ("prefix tokens (computed once)", f"{len(prefix)} in {t_prefix:.1f} s"),
        ("engine s/request (prefix amortised)", f"{engine_per_request:.3f}"),
        ("engine s/request (batched forward only)", f"{t_batched / n:.3f}"),
        ("naive s/request (10 full forwards)", f"{naive_per_request:.2f}  ({len(t_naive)} forwards timed)"),
        ("speed-up over naive", f"{naive_per_request / engine_per_request:.1f}x   (target >= 20x)"),
        ("matmul peak", f"{peak / 1e9:.1f} GFLOP/s"),
        ("engine batched path", f"{flops_batched / t_batched / 1e9:.1f} GFLOP/s"),
        ("MFU batched path", f"{flops_batched / t_batched / peak:.0%}   (target >= 70%)"),
        ("MFU prefix forward", f"{flops_prefix / t_prefix / peak:.0%}"),
        ("s/request at 10 tools", f"{engine_per_request:.2f}   (target <= 1.5 s)"),
    ]
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")


def precision_agreement(model: str = "qwen2.5-coder-1.5b", dtype: str = "bfloat16", device: str = "cpu",
                        profile: str = "fast", repeats: int = 2) -> dict:
    """Do the baseline's decisions survive a lower precision? The baseline's request subset of
    ``profile`` (forced choice over the core tools, and the tool / no-tool decision; no generation),
    scored in float32 and in ``dtype`` on ``device``: agreement of both decisions, and the time of each
    (the best of ``repeats`` scoring passes, alternating, after a warm-up)."""
    from .artifacts import load_profile

    prof = load_profile(profile)
    cfg = prof["baseline"]
    reqs = select(load_prompts(), split=None if cfg["split"] == "all" else cfg["split"], n_per_tool=cfg["n_per_tool"],
                  n_no_tool=cfg["n_no_tool"], seed=prof["seed"])
    texts, tools = [r.text for r in reqs], core_tools()
    runs = {}
    for name in ("float32", dtype):
        lm = load_model(model, device=device, dtype=name)
        engine = ToolChoiceEngine(lm, batch_size=prof["batch_size"], progress=False)
        engine.score(texts[:2], tools)  # warm-up; the prefix is cached from here on
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            choices = engine.score(texts, tools)
            best = min(best, time.perf_counter() - t0)
        runs[name] = (choices, best)
        del lm, engine
    (ref, t_ref), (low, t_low) = runs["float32"], runs[dtype]
    needs = [bool(r.tool) for r in reqs]
    forced = [a.choice == b.choice for a, b, n in zip(ref, low, needs) if n]
    decided = [a.decides_tool == b.decides_tool for a, b in zip(ref, low)]
    both = forced + decided
    return {"model": model, "device": device, "dtype": dtype, "threads": torch.get_num_threads(),
            "requests": len(reqs), "tool_requests": sum(needs),
            "forced_choice_agreement": sum(forced) / len(forced), "decision_agreement": sum(decided) / len(decided),
            "all_decisions_agreement": sum(both) / len(both),
            "max_abs_p_tool_diff": max(abs(a.p_tool - b.p_tool) for a, b in zip(ref, low)),
            "forced_accuracy": {"float32": sum(a.choice == r.tool for a, r in zip(ref, reqs) if r.tool) / sum(needs),
                                dtype: sum(b.choice == r.tool for b, r in zip(low, reqs) if r.tool) / sum(needs)},
            "seconds": {"float32": round(t_ref, 2), dtype: round(t_low, 2)}, "speedup": round(t_ref / t_low, 2)}


if __name__ == "__main__":
    main()
