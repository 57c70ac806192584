"""Command line: ``python -m toolattn.cli {models,convert}``.

Analyses are run as ``python -m analyses.<name> --profile P --model M`` (see the Makefile).
"""

from __future__ import annotations

import argparse
import sys

from .errors import cli_errors, configure_threads
from .models import REGISTRY, ModelError, ensure_converted, get_spec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="toolattn")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("models", help="list the model registry")
    c = sub.add_parser("convert", help="assemble, verify and convert an embedded model once; "
                       "check (sizes and sha256) and rebuild a converted copy that is damaged")
    c.add_argument("name")
    args = ap.parse_args(argv)
    with cli_errors():
        configure_threads()
        if args.cmd == "models":
            for s in REGISTRY.values():
                print(f"{s.name:22s} {s.kind:9s} {s.family:7s} {s.prompt_format:5s} {s.source or s.parent}")
        elif args.cmd == "convert":
            spec = get_spec(args.name)
            if spec.kind != "embedded":
                raise ModelError(f"{spec.name} is not an embedded model; embedded: "
                                 + ", ".join(n for n, s in REGISTRY.items() if s.kind == "embedded"))
            print(ensure_converted(spec, verify=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
