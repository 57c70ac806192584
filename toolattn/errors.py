"""One clear line for bad input, instead of a traceback; and the set-up every entry point shares."""

from __future__ import annotations

import contextlib
import os
import sys

from .models import ModelError


@contextlib.contextmanager
def cli_errors():
    """Turn expected failures (bad model name or weights, malformed data, missing inputs, a folder
    that cannot be written) into one line and exit code 2.

    ``TOOLATTN_DEBUG=1`` shows the traceback instead.
    """
    try:
        yield
    except (ModelError, ValueError, KeyError, OSError) as e:
        if os.environ.get("TOOLATTN_DEBUG"):
            raise
        print("error:", one_line(e), *getattr(e, "__notes__", []), file=sys.stderr)  # one line, with the input
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished chunks are kept; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)


def one_line(e: BaseException) -> str:
    """The message of an expected failure, on one line."""
    if isinstance(e, KeyError) and e.args:
        msg = str(e.args[0])
    elif isinstance(e, OSError) and e.filename and e.strerror and len(e.args) == 2:  # raised by the OS
        what = "write" if isinstance(e, PermissionError) else "read or write"
        msg = (f"{e.filename}: {e.strerror}; check that it exists and that you can {what} it "
               "(TOOLATTN_DEBUG=1 shows where it happened)")
    else:
        msg = str(e)
    return " ".join(msg.split())


def configure_threads() -> int | None:
    """``TOOLATTN_THREADS=N`` sets torch's CPU threads for every entry point (analyses, ``toolattn.cli``,
    ``toolattn.bench``); unset leaves torch's default (the physical cores)."""
    value = os.environ.get("TOOLATTN_THREADS", "").strip()
    if not value:
        return None
    try:
        n = int(value)
        if n < 1:
            raise ValueError
    except ValueError:
        raise ValueError(f"TOOLATTN_THREADS={value!r} is not a positive whole number; "
                         "set e.g. TOOLATTN_THREADS=1, or unset it to use every core") from None
    import torch

    torch.set_num_threads(n)
    return n


def _analysis_name(run) -> str:
    """``baseline`` for ``analyses.baseline.run`` (also when that module runs as ``__main__``)."""
    from pathlib import Path

    module = run.__module__
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        if spec is None:  # run as a script: python analyses/baseline.py
            return Path(sys.argv[0]).stem
        module = spec.name
    return module.rsplit(".", 1)[-1]


def preflight(profile: str, model: str, analysis: str) -> None:
    """Everything that can be checked before a model is loaded: threads, the profile, the model
    name, the prompt set and tool catalog, and that the artifact folder can be written."""
    from . import paths
    from .artifacts import ensure_writable, load_profile
    from .datasets import check_inputs
    from .models import get_spec

    configure_threads()
    load_profile(profile)
    get_spec(model)
    check_inputs()
    ensure_writable(paths.artifact_dir(profile, model, analysis))


def analysis_main(run, doc: str, default_model: str, models: list[str] | None = None) -> None:
    """The command line of an analysis: ``python -m analyses.<name> --profile P --model M``."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--profile", default="fast")
    ap.add_argument("--model", default=default_model, choices=models)
    ap.add_argument("--device", default=None, help="auto (default: CUDA when a GPU is present), cpu, cuda, cuda:N, "
                    "or map (spread over every GPU); overrides TOOLATTN_DEVICE and the profile")
    ap.add_argument("--dtype", default=None, help="auto (default: bfloat16 on CUDA, float32 on CPU), float32, "
                    "bfloat16 or float16; overrides TOOLATTN_DTYPE and the profile")
    args = ap.parse_args()
    with cli_errors():
        from .artifacts import load_profile
        from .device import configure, resolve

        preflight(args.profile, args.model, _analysis_name(run))
        configure(args.device, args.dtype, profile=load_profile(args.profile))
        resolve()  # a bad setting ends here, with one line
        run(args.profile, args.model)
