"""One device/dtype setting; one layout helper; reduced precision keeps the decisions; on a GPU,
every tensor of a call lives on the model's device and results equal the CPU's."""

import pytest
import torch

from conftest import CUDA, requires_cuda
from toolattn import device as devices
from toolattn.attention import capture_attention, decision_rows, knockout_kwargs
from toolattn.interventions import Intervener
from toolattn.layout import Layout
from toolattn.models import load_model, model_dims
from toolattn.scoring import ToolChoiceEngine

REQUESTS = [
    "What's the weather in Paris today?",
    "Why do cats purr?",
    "Look up the history of the Eiffel tower on the web, I need it for homework and a lot more detail",
    "Tell me a joke about penguins.",
    "Translate 'good night' into Spanish",
    "Send an email to Bob saying the meeting moved",
    "hi",
    "Run print(2+2) and tell me the output",
]


@pytest.fixture
def fresh_setting(monkeypatch):
    monkeypatch.delenv("TOOLATTN_DEVICE", raising=False)
    monkeypatch.delenv("TOOLATTN_DTYPE", raising=False)
    saved = dict(devices._cli), dict(devices._profile)
    devices._cli.update(device=None, dtype=None)
    devices._profile.update(device=None, dtype=None)
    yield monkeypatch
    devices._cli.update(saved[0])
    devices._profile.update(saved[1])


def test_auto_is_cuda_bf16_with_a_gpu_else_cpu_float32(fresh_setting):
    dev, dtype = devices.resolve()
    assert (dev, dtype) == (("cuda", torch.bfloat16) if CUDA else ("cpu", torch.float32))
    assert devices.resolve("cpu") == ("cpu", torch.float32)  # the CPU default (CPU_DTYPE)


def test_command_line_beats_environment_beats_profile(fresh_setting):
    devices.configure(profile={"device": "cpu", "dtype": "float16"})
    assert devices.resolve() == ("cpu", torch.float16)
    fresh_setting.setenv("TOOLATTN_DTYPE", "bfloat16")
    assert devices.resolve() == ("cpu", torch.bfloat16)
    devices.configure(dtype="float32")
    assert devices.resolve() == ("cpu", torch.float32)
    assert devices.resolve(dtype=torch.bfloat16)[1] == torch.bfloat16  # an explicit argument wins


def test_profile_precision_per_model(fresh_setting):
    """A profile's dtype table gives each model its own row (else ``default``); the command line and the
    environment still win over it."""
    devices.configure(profile={"device": "cpu", "dtype": {"default": "float32", "big-model": "bfloat16"}})
    assert devices.resolve(model="big-model") == ("cpu", torch.bfloat16)
    assert devices.resolve(model="other-model") == ("cpu", torch.float32)
    assert devices.resolve() == ("cpu", torch.float32)
    assert load_model("tiny-qwen2").model.dtype == torch.float32
    devices.configure(profile={"device": "cpu", "dtype": {"tiny-qwen2": "bfloat16"}})
    assert load_model("tiny-qwen2").model.dtype == torch.bfloat16
    assert devices.resolve(model="tiny-qwen3") == ("cpu", torch.float32)  # no default: auto (CPU: float32)
    fresh_setting.setenv("TOOLATTN_DTYPE", "float32")
    assert devices.resolve(model="tiny-qwen2") == ("cpu", torch.float32)


def test_bad_settings_are_one_clear_error(fresh_setting):
    with pytest.raises(ValueError, match="unknown device"):
        devices.resolve("tpu")
    with pytest.raises(ValueError, match="unknown dtype"):
        devices.resolve("cpu", "int8")
    if not CUDA:
        with pytest.raises(ValueError, match="no CUDA GPU"):
            devices.resolve("cuda")


def test_manifest_description_names_what_ran():
    lm = load_model("tiny-qwen2", device="cpu", dtype="bfloat16")
    d = devices.describe(lm.model)
    assert d["device"] == "cpu" and d["dtype"] == "bfloat16" and d["torch"] == torch.__version__
    assert devices.ran()["dtype"] == "bfloat16"


# --- the layout helper --------------------------------------------------------------------------

class _Cfg:
    layer_types = ["full_attention", "sliding_attention"]
    sliding_window = 3


class _Model:
    config = _Cfg()


def test_layout_masks_padding_groups_and_windows():
    # 2 context keys, then 3 request tokens (the second row padded after 2), then 2 packed candidates
    q_pos = torch.tensor([[2, 3, 4, 5, 5], [2, 3, 4, 4, 4]])
    q_valid = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 1, 1]], dtype=torch.bool)
    q_group = torch.tensor([[0, 0, 0, 1, 2], [0, 0, 0, 1, 2]])
    lay = Layout.after(2, q_pos, q_valid, q_group)
    assert lay.k_pos.tolist()[1] == [0, 1, 2, 3, 4, 4, 4]
    m = lay.masks(_Model())
    full, sliding = m["full_attention"][:, 0], m["sliding_attention"][:, 0]
    assert full.shape == (2, 5, 7)
    # candidate of group 2 sees the context and the request, not group 1's token, nor padding
    assert full[1, 4].tolist() == [True, True, True, True, False, False, True]
    assert full[0, 4].tolist() == [True, True, True, True, True, False, True]
    # sliding window 3: query at position 5 sees keys at positions 3, 4, 5 only
    assert sliding[0, 3].tolist() == [False, False, False, True, True, True, False]
    step = Layout.span(2, q_valid[:, :3]).extend(torch.tensor([[5], [4]]))
    assert step.q_pos.tolist() == [[5], [4]] and step.k_valid[1].tolist() == [1, 1, 1, 1, 0, 1]


# --- fused kernels on a GPU ----------------------------------------------------------------------

def _liger_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("liger_kernel") is not None


@requires_cuda
@pytest.mark.skipif(not _liger_installed(), reason="needs liger-kernel (pip install -e '.[gpu]')")
@pytest.mark.parametrize("name", ["tiny-qwen2", "tiny-qwen3", "tiny-gemma3"])
def test_fused_kernels_keep_decisions_hooks_and_later_models(name, tools, monkeypatch):
    """bf16 on CUDA with liger's fused RMSNorm and MLP makes the clear decisions of the plain bf16 model;
    the neuron site (``down_proj``'s input) still sees the same activations; a model of the same
    architecture loaded afterwards (here on the CPU) is the plain one and runs."""
    monkeypatch.setenv("TOOLATTN_DTYPE", "bfloat16")
    monkeypatch.setenv("TOOLATTN_FUSED", "0")
    plain = load_model(name, device="cuda")
    monkeypatch.setenv("TOOLATTN_FUSED", "auto")
    fused = load_model(name, device="cuda")
    assert devices.describe(fused.model)["fused_kernels"] == "liger" and devices.describe(plain.model)["fused_kernels"] is None
    assert any("Liger" in m._get_name() for m in fused.model.modules())  # liger renames what it patches
    assert_clear_decisions_agree(_decisions(plain, tools), _decisions(fused, tools), name)
    seen = []
    hooks = [lm.model.model.layers[0].mlp.down_proj.register_forward_pre_hook(lambda m, args: seen.append(args[0].float()))
             for lm in (plain, fused)]
    _decisions(plain, tools[:3]), _decisions(fused, tools[:3])
    for h in hooks:
        h.remove()
    half = len(seen) // 2
    assert half and all(torch.allclose(p, f, atol=0.1, rtol=0.05) for p, f in zip(seen[:half], seen[half:]))
    monkeypatch.setenv("TOOLATTN_DTYPE", "float32")
    later = load_model(name, device="cpu")
    assert not any("Liger" in m._get_name() for m in later.model.modules())
    _decisions(later, tools[:2])


# --- reduced precision keeps the decisions --------------------------------------------------------

# Log-probability gap (nats) above which a decision is clear. bf16 keeps ~3 significant digits, and the
# tiny random models amplify rounding (weights of std 0.2): on an H100 a 0.35-nat forced choice flipped.
MARGIN = 1.0


def _decisions(lm, tools):
    return ToolChoiceEngine(lm, batch_size=4, progress=False).score(REQUESTS, tools)


def assert_clear_decisions_agree(ref, other, name):
    """Every forced choice and tool / no-tool decision that ``ref`` makes by more than ``MARGIN`` nats,
    ``other`` makes too; P(tool) within 0.05 everywhere; at least half the requests give a clear decision
    (the check is not vacuous)."""
    import math

    clear = 0
    for a, b in zip(ref, other):
        top = sorted(a.logprobs.values(), reverse=True)
        if top[0] - top[1] > MARGIN:
            clear += 1
            assert a.choice == b.choice, (name, a.request)
        if abs(math.log(a.p_tool) - math.log(a.p_other)) > MARGIN:
            clear += 1
            assert a.decides_tool == b.decides_tool, (name, a.request)
        assert isinstance(b.p_tool, float) and abs(a.p_tool - b.p_tool) < 0.05
    assert clear >= len(REQUESTS) // 2, (name, clear)


@pytest.mark.parametrize("name", ["tiny-qwen2", "tiny-qwen3", "tiny-gemma3", "tiny-functiongemma"])
def test_bf16_decisions_agree_with_float32(name, tools):
    """Every decision that float32 makes by a clear margin, bf16 makes too. Random tiny models have
    near-ties (their candidates' log-probabilities differ in the second decimal) that any rounding
    may flip; the real model's agreement is measured by ``toolattn.bench.precision_agreement``."""
    dev = "cuda" if CUDA else "cpu"
    assert_clear_decisions_agree(_decisions(load_model(name, device=dev, dtype="float32"), tools),
                                 _decisions(load_model(name, device=dev, dtype="bfloat16"), tools), name)


def test_bf16_capture_is_float32_on_the_cpu(tools):
    lm = load_model("tiny-gemma3", device="cuda" if CUDA else "cpu", dtype="bfloat16")
    engine = ToolChoiceEngine(lm, batch_size=4, progress=False)
    with capture_attention(lm.model) as cap:
        engine.score(REQUESTS[:4], tools, forward_kwargs=cap.kwargs_for(decision_rows))
    w = cap.weights[0]
    assert w.dtype == torch.float32 and w.device.type == "cpu"
    assert torch.allclose(w.sum(-1), torch.ones(()), atol=1e-4)


# --- on a GPU -------------------------------------------------------------------------------------

@requires_cuda
@pytest.mark.parametrize("name", ["tiny-qwen2", "tiny-qwen3", "tiny-gemma3"])
def test_cuda_engine_capture_knockout_interventions_equal_cpu(name, tools):
    out = {}
    for dev in ("cpu", "cuda"):
        lm = load_model(name, device=dev, dtype="float32")
        assert lm.model.device.type == dev
        engine = ToolChoiceEngine(lm, batch_size=3, progress=False)
        choices = engine.score(REQUESTS, tools)
        d = model_dims(lm.model)
        heads = torch.zeros(d["layers"], d["heads"], dtype=torch.bool)
        heads[:, 1] = True
        with capture_attention(lm.model) as cap:
            engine.score(REQUESTS, tools, forward_kwargs=lambda b, p: {**cap.kwargs_for(decision_rows)(b, p),
                                                                         **knockout_kwargs(heads)(b, p)})
        iv = Intervener(lm, tools, batch_size=3)
        fs = iv.format(REQUESTS)
        clean = iv.clean(fs)
        abl = iv.ablate_mlp(fs, clean, 1, "mean")
        patched = iv.patch_decision(fs, clean, 1, "resid", clean.resid[1].flip(0))
        for t in (clean.p_tool, clean.resid, clean.mlp_mean, abl.p_tool, patched.p_tool):
            assert t.device.type == "cpu" and t.dtype == torch.float32
        out[dev] = ([c.logprobs for c in choices], cap.weights, clean.p_tool, clean.resid, abl.p_tool, patched.p_tool)
    cpu, gpu = out["cpu"], out["cuda"]
    for a, b in zip(cpu[0], gpu[0]):
        assert all(abs(a[k] - b[k]) < 1e-3 for k in a)
    for a, b in zip(cpu[1], gpu[1]):  # captured attention, per batch [layers, batch, heads, keys]
        assert a.device.type == b.device.type == "cpu" and torch.allclose(a, b, atol=1e-4)
    for a, b in zip(cpu[2:], gpu[2:]):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4), (name, (a - b).abs().max())


@requires_cuda
def test_no_computation_on_the_cpu_when_the_model_is_on_a_gpu(tools):
    """Every op of a scoring call, a capture and an intervention runs on the GPU; only the final
    results are copied back (a device-to-host copy is the one CPU-side op allowed)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CpuOps(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            outs = out if isinstance(out, (tuple, list)) else [out]
            inputs = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
            on_gpu_in = any(a.device.type == "cuda" for a in inputs)
            cpu_out = [o for o in outs if isinstance(o, torch.Tensor) and o.device.type == "cpu" and o.numel() > 1]
            if cpu_out and not on_gpu_in:  # computed on the CPU (not a copy back from the GPU)
                self.ops.append(str(func))
            return out

    lm = load_model("tiny-gemma3", device="cuda", dtype="bfloat16")
    engine = ToolChoiceEngine(lm, batch_size=4, progress=False)
    iv = Intervener(lm, tools, batch_size=4)
    fs = iv.format(REQUESTS)
    engine.score(REQUESTS, tools)  # prefix cached, tokenizers warm
    clean = iv.clean(fs)
    with CpuOps() as mode:
        engine.score(REQUESTS, tools)
        engine.generate(REQUESTS[:4], tools, max_new_tokens=4)
        iv.ablate_mlp(fs, clean, 1, "zero")
        iv.patch_decision(fs, clean, 1, "resid", clean.resid[1])
    # torch.tensor(list, device=cuda) builds from host memory without a CPU tensor op; index bookkeeping
    # of request order (Batch.index, in_order) and the float32 copies of results are CPU by design.
    allowed = {"aten.sort", "aten.argsort", "aten.cat", "aten.index_select", "aten.stack", "aten.lift_fresh",
               "aten.lift_fresh_copy", "aten._to_copy", "aten.alias", "aten.view", "aten.slice", "aten.select",
               "aten.unsqueeze", "aten.detach"}
    bad = sorted({op for op in mode.ops if op.split(".")[0] + "." + op.split(".")[1] not in allowed})
    assert not bad, bad


@requires_cuda
def test_cuda_pruned_choice_and_partial_knockout_equal_cpu(catalog_tools):
    """On the 50-tool catalog: the pruned forced choice (``choose``) and a knockout that scores only the
    clean run's candidates and reuses the engine's prefix give on the GPU what they give on the CPU."""
    from toolattn.knockout import HeadKnockout

    reqs = ["What's the weather in Paris today?", "Send an email to Bob about the meeting",
            "Translate 'good morning' into Italian", "Run this Python snippet for me"]
    gold = [t.name for t in catalog_tools[:4]]
    out = {}
    for dev in ("cpu", "cuda"):
        lm = load_model("tiny-qwen2", device=dev, dtype="float32")
        engine = ToolChoiceEngine(lm, batch_size=2, progress=False)
        choices = engine.choose(reqs, catalog_tools, gold)
        d = model_dims(lm.model)
        heads = torch.zeros(2, d["layers"], d["heads"], dtype=torch.bool)
        heads[0, 1, 0] = heads[1, :, 1] = True
        ko = HeadKnockout(lm, catalog_tools, reqs, gold, batch_size=2, max_rows=4,
                          only=[set(c.logprobs) for c in choices], prefix_kv=engine._prefix.kv)
        out[dev] = (choices, ko.clean_scores, ko.run(heads), ko.exact)
    (c0, s0, k0, e0), (c1, s1, k1, e1) = out["cpu"], out["cuda"]
    for a, b in zip(c0, c1):
        assert a.choice == b.choice and set(a.logprobs) == set(b.logprobs)
        assert all(abs(a.logprobs[n] - b.logprobs[n]) < 1e-3 for n in a.logprobs)
    assert torch.equal(e0, e1)
    assert torch.allclose(s0, s1, atol=1e-3) and torch.allclose(k0, k1, atol=1e-3)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_shared_keys_equal_keys_copied_per_row(dtype):
    """On a GPU, attention over shared keys (the fused kernel with its log-sum-exp in bf16, written out in
    float32) equals sdpa over the same keys copied into every row."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from toolattn.attention import toolattn_attention

    class Module:
        layer_idx, head_dim, num_key_value_groups, is_causal = 0, 128, 4, True

    g = torch.Generator(device="cuda").manual_seed(0)
    B, H, kvh, d, P, n, q = 6, 8, 2, 128, 300, 20, 12
    rnd = lambda *s: torch.randn(*s, generator=g, device="cuda").to(dtype)  # noqa: E731
    query, ks, vs, key, value = rnd(B, H, q, d), rnd(1, kvh, P, d), rnd(1, kvh, P, d), rnd(B, kvh, n, d), rnd(B, kvh, n, d)
    mask = torch.ones(B, 1, q, P + n, dtype=torch.bool, device="cuda")
    mask[..., P:] = torch.rand(B, 1, q, n, generator=g, device="cuda") > 0.3
    want, _ = sdpa_attention_forward(Module(), query, torch.cat([ks.expand(B, -1, -1, -1), key], 2),
                                     torch.cat([vs.expand(B, -1, -1, -1), value], 2), mask, scaling=d ** -0.5)
    got, _ = toolattn_attention(Module(), query, key, value, mask, shared_kv=[(ks, vs)])
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    assert got.dtype == dtype and torch.allclose(got.float(), want.float(), atol=tol)
