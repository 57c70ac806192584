"""One clear line for bad input, instead of a traceback."""

from __future__ import annotations

import contextlib
import os
import sys

from .models import ModelError


@contextlib.contextmanager
def cli_errors():
    """Turn expected failures (bad model name or weights, malformed data, missing inputs) into one line.

    ``TOOLATTN_DEBUG=1`` shows the traceback instead.
    """
    try:
        yield
    except (ModelError, ValueError, FileNotFoundError, KeyError) as e:
        if os.environ.get("TOOLATTN_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished chunks are kept; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)


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

        configure(args.device, args.dtype, profile=load_profile(args.profile))
        resolve()  # a bad setting ends here, with one line
        run(args.profile, args.model)
