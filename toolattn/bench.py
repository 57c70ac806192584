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
import json
from pathlib import Path
import time

import torch

from .datasets import load_prompts, select
from .device import describe, model_device
from .models import load_model, model_dims
from .scoring import ToolChoiceEngine
from .tools import core_tools


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(hidden: int, mlp: int, tokens: int = 1024, repeats: int = 5, device="cpu",
                dtype=torch.float32) -> float:
    """Best FLOP/s of [tokens, hidden] x [hidden, mlp] and its transpose (the MLP's shapes), in the
    model's dtype on its device."""
    a = torch.randn(tokens, hidden, device=device, dtype=dtype)
    w1 = torch.randn(hidden, mlp, device=device, dtype=dtype)
    w2 = torch.randn(mlp, hidden, device=device, dtype=dtype)
    torch.mm(torch.mm(a, w1), w2)  # warm-up
    best = 0.0
    inner = 20 if torch.device(device).type == "cuda" else 1
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            torch.mm(torch.mm(a, w1), w2)
        _sync(device)
        best = max(best, inner * 4 * tokens * hidden * mlp / (time.perf_counter() - t0))
    return best


def forward_flops(model, query_tokens: int, keys_per_query: float, logit_positions: int) -> float:
    """FLOPs of the decoder for ``query_tokens`` queries: weight matmuls + attention + lm_head where read."""
    d = model_dims(model)
    linear = sum(p.numel() for n, p in model.model.named_parameters() if p.dim() == 2 and "embed" not in n)
    attention = 4 * d["layers"] * d["heads"] * d["head_dim"] * keys_per_query  # QK^T and AV
    head = 2 * model.lm_head.weight.numel()
    return query_tokens * (2 * linear + attention) + logit_positions * head


def time_batched(engine, formatted, tools, batch_size: int, device) -> tuple[float, object, list, list]:
    """Seconds of the batched forced-choice passes over ``formatted`` (prefix cached), and the prefix."""
    prefix = engine.prefix(tools, formatted[0])
    cands = [engine.formatter.candidate_ids(formatted[0], t.name) for t in tools]
    open_ids = engine.formatter.call_open_ids()
    engine.batch_size = batch_size
    batches = engine.batches(formatted)  # the engine's own batching (by length)
    engine._score_batch([formatted[i] for i in batches[0]], prefix, tools, cands, open_ids)  # warm-up at this shape
    _sync(device)
    t0 = time.perf_counter()
    for index in batches:
        engine._score_batch([formatted[i] for i in index], prefix, tools, cands, open_ids)
    _sync(device)
    return time.perf_counter() - t0, prefix, cands, open_ids


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Benchmark the tool-choice engine")
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--batch-size", type=int, nargs="+", default=[16],
                    help="one or more batch sizes (the best is reported)")
    ap.add_argument("--naive-forwards", type=int, default=3)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--project-hub", action="store_true",
                    help="also time generation, thinking and capture, and project the wall time of `make hub`")
    ap.add_argument("--json", default=None, help="write the figures to this file too")
    ap.add_argument("--agreement", default=None, metavar="DTYPE",
                    help="instead: agreement of float32 and DTYPE decisions on the CPU (every request of both splits)")
    args = ap.parse_args(argv)
    if args.agreement:
        out = precision_agreement(args.model, dtype=args.agreement, device=args.device or "cpu", repeats=1,
                                  every_request=True)
        print(json.dumps(out, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1))
        return

    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    device = model_device(lm.model)
    dtype = next(lm.model.parameters()).dtype
    tools = core_tools()
    reqs = [r.text for r in select(load_prompts(), split="heldout", n_per_tool=None, n_no_tool=0)]
    reqs = (reqs * (1 + args.requests // max(len(reqs), 1)))[:: max(1, len(reqs) // args.requests)][: args.requests]
    d = model_dims(lm.model)
    peak = matmul_peak(d["hidden"], d["mlp"], device=device, dtype=dtype)

    engine = ToolChoiceEngine(lm, batch_size=max(args.batch_size), progress=False)
    formatted = engine.format(reqs, tools)
    engine.score(reqs[:2], tools)  # warm-up (pages the weights in)
    engine._prefix_key = None  # time the prefix too
    _sync(device)
    t0 = time.perf_counter()
    prefix = engine.prefix(tools, formatted[0])
    _sync(device)
    t_prefix = time.perf_counter() - t0
    n = len(reqs)
    sweep = {}
    for bs in args.batch_size:
        sweep[bs] = time_batched(engine, formatted, tools, bs, device)[0]
    best_bs = min(sweep, key=sweep.get)
    t_batched = sweep[best_bs]
    cands = [engine.formatter.candidate_ids(formatted[0], t.name) for t in tools]
    packed = sum(len(c) - 1 for c in cands)
    suffix_tokens = sum(len(f.input_ids) - len(prefix) for f in formatted)
    query_tokens = suffix_tokens + n * packed
    keys = len(prefix) + (suffix_tokens / n + packed) / 2
    flops_batched = forward_flops(lm.model, query_tokens, keys, n * (2 + packed))
    flops_prefix = forward_flops(lm.model, len(prefix), len(prefix) / 2, 0)

    peak = max(peak, matmul_peak(d["hidden"], d["mlp"], device=device, dtype=dtype))  # the better of before/after

    # naive: a full forward over prompt + candidate for each (request, candidate)
    t_naive = []
    with torch.inference_mode():
        for i in range(args.naive_forwards + 1):
            f = formatted[i % n]
            ids = torch.tensor([f.input_ids + cands[i % len(cands)]], device=device)
            _sync(device)
            t0 = time.perf_counter()
            lm.model(input_ids=ids)
            _sync(device)
            if i:  # the first is a warm-up
                t_naive.append(time.perf_counter() - t0)
    naive_per_request = sum(t_naive) / len(t_naive) * len(tools)
    engine_per_request = (t_batched + t_prefix) / n
    mfu = flops_batched / t_batched / peak

    out = {"model": args.model, "device": str(device), "device_name": describe(lm.model)["device_name"],
           "dtype": str(dtype).removeprefix("torch."), "tools": len(tools), "requests": n,
           "batch_sweep_s": {str(k): round(v, 4) for k, v in sweep.items()}, "batch": best_bs,
           "prefix_tokens": len(prefix), "prefix_s": round(t_prefix, 4),
           "mean_suffix_tokens": round(suffix_tokens / n, 1), "packed_candidate_tokens": packed,
           "engine_s_per_request": engine_per_request, "engine_batched_s_per_request": t_batched / n,
           "naive_s_per_request": naive_per_request, "speedup_over_naive": naive_per_request / engine_per_request,
           "matmul_peak_tflops": peak / 1e12, "engine_tflops": flops_batched / t_batched / 1e12,
           "mfu_batched": mfu, "mfu_prefix": flops_prefix / t_prefix / peak}
    rows = [
        ("model", f"{args.model} on {out['device_name']} ({out['dtype']})"),
        ("tools / requests / batch", f"{len(tools)} / {n} / {best_bs}  (sweep: {out['batch_sweep_s']} s)"),
        ("prefix tokens (computed once)", f"{len(prefix)} in {t_prefix:.3f} s"),
        ("engine s/request (prefix amortised)", f"{engine_per_request:.4f}"),
        ("engine s/request (batched forward only)", f"{t_batched / n:.4f}"),
        ("naive s/request (10 full forwards)", f"{naive_per_request:.3f}  ({len(t_naive)} forwards timed)"),
        ("speed-up over naive", f"{naive_per_request / engine_per_request:.1f}x   (target >= 20x)"),
        ("matmul peak", f"{peak / 1e9:.1f} GFLOP/s"),
        ("engine batched path", f"{flops_batched / t_batched / 1e9:.1f} GFLOP/s"),
        ("MFU batched path", f"{mfu:.0%}   (target >= 70% on CPU, >= 40% on a GPU)"),
        ("MFU prefix forward", f"{flops_prefix / t_prefix / peak:.0%}"),
        ("s/request at 10 tools", f"{engine_per_request:.3f}   (target <= 1.5 s)"),
    ]
    if args.project_hub:
        out.update(project_hub(engine, reqs, tools, device))
        rows += [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in out.items() if k.startswith("hub_")]
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


def project_hub(engine, reqs, tools, device, n: int = 32) -> dict:
    """Per-request costs of what `make hub` runs on this model (generation of the baseline's 40 tokens,
    256 reasoning tokens, capture at the decision position), and the projected wall time of its runs
    on this model: baseline (720 requests: forced choice, generation, thinking on and the choice after
    it) and retrieval heads (500 requests with capture). Analysis overheads (statistics, figures) and
    model loading are not included."""
    from .attention import capture_attention, decision_rows

    from .artifacts import load_profile

    prof = load_profile("hub")
    base, rh = prof["baseline"], prof["retrieval_heads"]
    n_base = base["n_per_tool"] * 10 + base["n_no_tool"]
    n_rh = rh["n_per_tool"] * 10
    part = reqs[:n]

    def timed(fn):
        fn()  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        return (time.perf_counter() - t0) / len(part), out

    t_score, _ = timed(lambda: engine.score(part, tools))
    engine.stop_when_decided = False  # the bound: every reply runs to its budget
    t_gen, _ = timed(lambda: engine.generate(part, tools, max_new_tokens=base["max_new_tokens"]))
    engine.stop_when_decided = True
    think = base.get("thinking_max_new_tokens", 0) if engine.lm.spec.family == "qwen3" else 0
    t_think, thoughts = timed(lambda: engine.think(part, tools, max_new_tokens=think)) if think else (0.0, None)
    t_after = timed(lambda: engine.score(part, tools, after=[t["after"] for t in thoughts]))[0] if think else 0.0

    def capture():
        with capture_attention(engine.model) as cap:
            engine.score(part, tools, forward_kwargs=cap.kwargs_for(decision_rows))

    t_cap, _ = timed(capture)
    baseline_s = n_base * (t_score + t_gen + t_think + t_after)
    # circuit zones (FunctionGemma): a clean run, then an ablated run per layer and kind (zero, mean) over
    # its requests; one scoring pass per request stands in for one forward (patching re-runs one token)
    cz = prof["circuit_zones"]
    n_cz = cz["n_tool"] + cz["n_no_tool"]
    layers = model_dims(engine.model)["layers"]
    cz_s = n_cz * t_score * (1 + 2 * layers)
    if engine.lm.spec.family == "gemma3":
        return {"hub_score_s_per_request": t_score, "hub_generate40_s_per_request": t_gen,
                "hub_capture_s_per_request": t_cap, "hub_baseline_requests": n_base,
                "hub_baseline_projected_s": n_base * (t_score + t_gen), "hub_circuit_zones_projected_s": cz_s,
                "hub_projected_s_this_model": n_base * (t_score + t_gen) + cz_s}
    return {"hub_score_s_per_request": t_score, "hub_generate40_s_per_request": t_gen,
            f"hub_think{think}_s_per_request": t_think, "hub_score_after_thinking_s_per_request": t_after,
            "hub_capture_s_per_request": t_cap, "hub_baseline_requests": n_base, "hub_retrieval_requests": n_rh,
            "hub_baseline_projected_s": baseline_s, "hub_retrieval_heads_projected_s": n_rh * t_cap,
            "hub_projected_s_this_model": baseline_s + n_rh * t_cap}


def precision_agreement(model: str = "qwen2.5-coder-1.5b", dtype: str = "bfloat16", device: str = "cpu",
                        profile: str = "fast", repeats: int = 2, every_request: bool = False) -> dict:
    """Do the decisions survive a lower precision? The baseline's request subset of ``profile``, or
    with ``every_request`` every request of both splits (forced choice over the core tools, and the
    tool / no-tool decision; no generation), scored in float32 and in ``dtype`` on ``device``:
    agreement of both decisions with its Wilson interval, the requests that disagree, and the time of
    each precision (the best of ``repeats`` scoring passes, after a warm-up)."""
    from .artifacts import load_profile
    from .stats import wilson

    prof = load_profile(profile)
    cfg = prof["baseline"]
    if every_request:
        reqs = select(load_prompts(), split=None, n_per_tool=None, n_no_tool=None)
    else:
        reqs = select(load_prompts(), split=None if cfg["split"] == "all" else cfg["split"],
                      n_per_tool=cfg["n_per_tool"], n_no_tool=cfg["n_no_tool"], seed=prof["seed"])
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
            "all_decisions_agreement": sum(both) / len(both), "decisions": len(both),
            "all_decisions_agreement_ci": list(wilson(sum(both), len(both))),
            "disagreeing_requests": sorted({r.id for a, b, r in zip(ref, low, reqs)
                                            if a.decides_tool != b.decides_tool or (r.tool and a.choice != b.choice)}),
            "max_abs_p_tool_diff": max(abs(a.p_tool - b.p_tool) for a, b in zip(ref, low)),
            "forced_accuracy": {"float32": sum(a.choice == r.tool for a, r in zip(ref, reqs) if r.tool) / sum(needs),
                                dtype: sum(b.choice == r.tool for b, r in zip(low, reqs) if r.tool) / sum(needs)},
            "seconds": {"float32": round(t_ref, 2), dtype: round(t_low, 2)}, "speedup": round(t_ref / t_low, 2)}


if __name__ == "__main__":
    from .errors import cli_errors, configure_threads

    with cli_errors():
        configure_threads()
        main()
