"""Where a model runs and in which precision: one setting for the whole run.

The setting is ``(device, dtype)``, each a string. Where it comes from, first found wins:

1. ``configure(device=..., dtype=...)`` -- the command line (``--device``, ``--dtype``);
2. the environment, ``TOOLATTN_DEVICE`` and ``TOOLATTN_DTYPE``;
3. the profile's ``device`` / ``dtype`` keys (``configure(profile=...)``); the profile's ``dtype`` may
   be a table, ``{default = "auto", "<model>" = "bfloat16"}``, read for the model being loaded;
4. ``auto``.

``device``: ``auto`` (CUDA when a GPU is present, else CPU), ``cpu``, ``cuda``, ``cuda:N``, or ``map``
(weights spread over every visible GPU with accelerate's ``device_map="auto"``, for a model larger
than one GPU). ``dtype``: ``auto`` (bfloat16 on CUDA, float32 on CPU: ``CPU_DTYPE``), ``float32``,
``bfloat16`` or ``float16``. Whatever the weights' precision, softmax, log-probabilities, P(tool)
and captured attention are computed in float32, and results reach numpy as CPU float32.
"""

from __future__ import annotations

import os

import torch

# The CPU default. bfloat16 on a CPU with avx512_bf16 is ~2x faster per matmul, but it becomes the
# default only when it keeps >= 99% of the fast profile's decisions (README, "Devices"), and it
# would invalidate the pinned float32 numbers: until then, float32.
CPU_DTYPE = "float32"
GPU_DTYPE = "bfloat16"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

_cli: dict[str, str | None] = {"device": None, "dtype": None}
_profile: dict[str, str | None] = {"device": None, "dtype": None}


def configure(device: str | None = None, dtype: str | None = None, profile: dict | None = None) -> None:
    """Set the run's device and dtype (command line), and/or the profile's keys."""
    if device is not None:
        _cli["device"] = device
    if dtype is not None:
        _cli["dtype"] = dtype
    if profile is not None:
        _profile.update(device=profile.get("device"), dtype=profile.get("dtype"))


def _pick(key: str, model: str | None = None) -> str:
    prof = _profile[key]
    if isinstance(prof, dict):  # a per-model table
        prof = prof.get(model, prof.get("default")) if model else prof.get("default")
    return _cli[key] or os.environ.get(f"TOOLATTN_{key.upper()}") or prof or "auto"


def resolve(device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
            model: str | None = None) -> tuple[str, torch.dtype]:
    """``(device, dtype)`` to load a model with: ``device`` is ``"cpu"``, ``"cuda[:N]"`` or ``"map"``.

    Arguments given here win over the run's setting; ``model`` picks its row of a per-model profile dtype.
    """
    dev = str(device) if device is not None else _pick("device")
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # accelerate launch: one GPU a process
        dev = f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % max(torch.cuda.device_count(), 1)}"
    if dev not in ("cpu", "map") and not dev.startswith("cuda"):
        raise ValueError(f"unknown device {dev!r}; use auto, cpu, cuda, cuda:N or map")
    if dev != "cpu" and not torch.cuda.is_available():
        raise ValueError(f"device {dev!r} was asked for but no CUDA GPU is visible; use --device cpu")
    if isinstance(dtype, torch.dtype):
        return dev, dtype
    name = dtype or _pick("dtype", model)
    if name == "auto":
        name = CPU_DTYPE if dev == "cpu" else GPU_DTYPE
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use auto, float32, bfloat16 or float16")
    return dev, DTYPES[name]


def fuse_kernels(model) -> str | None:
    """Liger's fused Triton kernels (RMSNorm, SwiGLU / GeGLU MLP) on a model in bfloat16 / float16 on CUDA,
    where ``liger-kernel`` is installed (``pip install -e ".[gpu]"``) and ``TOOLATTN_FUSED`` is not ``0``:
    the name of the kernels applied ("liger"), else None. Only this model's modules change: liger also
    replaces the architecture's classes in its transformers module, and those are put back, so a model
    loaded later (on the CPU, say) is the plain one. The MLP still calls ``down_proj`` as a module, so
    the neuron site (its input) and every hook are unchanged; RoPE stays unfused (liger's replaces a
    module function for every model). H100, random Qwen3-4B, 10 tools: 2.7 -> 2.1 ms per request."""
    p = next(model.parameters())
    if (os.environ.get("TOOLATTN_FUSED", "auto") == "0" or p.device.type != "cuda"
            or p.dtype not in (torch.bfloat16, torch.float16)):
        return None
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError:
        return None
    import importlib

    module = importlib.import_module(type(model).__module__)
    saved = dict(vars(module))
    _apply_liger_kernel_to_instance(model, rope=False, rms_norm=True, swiglu=True, geglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False)
    for name, value in saved.items():
        if vars(module).get(name) is not value:
            setattr(module, name, value)
    model.toolattn_fused = "liger"
    return "liger"


def model_device(model) -> torch.device:
    """The device of a model's inputs: where its token embeddings live (the first GPU of a map)."""
    return model.get_input_embeddings().weight.device


def to_numpy_ready(x: torch.Tensor) -> torch.Tensor:
    """A result on its way to numpy: CPU float32 (floating tensors), CPU (others)."""
    x = x.detach()
    return x.float().cpu() if x.is_floating_point() else x.cpu()


_ran: dict = {}


def note_loaded(model) -> None:
    """Remember what the last loaded model runs on (``ran()``, for the manifest)."""
    _ran.clear()
    _ran.update(describe(model))


def ran() -> dict:
    """``describe`` of the last loaded model, else of the run's setting."""
    return dict(_ran) or describe()


def describe(model=None) -> dict:
    """What actually ran, for manifests: device (name), dtype, torch and CUDA versions."""
    if model is not None:
        p = next(model.parameters())
        dev, dtype = p.device, p.dtype
    else:
        name, dtype = resolve()
        dev = torch.device("cuda" if name == "map" else name)
    out = {"device": str(dev), "device_name": "cpu", "dtype": str(dtype).removeprefix("torch."),
           "torch": torch.__version__, "cuda": torch.version.cuda,
           "fused_kernels": getattr(model, "toolattn_fused", None) if model is not None else None}
    if dev.type == "cuda":
        out["device_name"] = torch.cuda.get_device_name(dev)
        out["gpus"] = torch.cuda.device_count()
        if model is not None and getattr(model, "hf_device_map", None):
            out["device_map"] = sorted({str(v) for v in model.hf_device_map.values()})
    else:
        import platform

        out["device_name"] = platform.processor() or platform.machine()
    return out
