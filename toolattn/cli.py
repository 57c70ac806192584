"""Command line: ``python -m toolattn {models,convert,steer}`` (or ``python -m toolattn.cli``).

Analyses are run as ``python -m analyses.<name> --profile P --model M`` (see the Makefile).
``steer`` reads one prompt with the steerer that ``analyses.circuit_neurons`` fitted for a model
(``artifacts/<profile>/<model>/circuit_neurons/steerer/``)::

    python -m toolattn steer "Why do cats purr?" --model gemma-3-270m-tools --mode force_tool
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
    st = sub.add_parser("steer", help="read a prompt while steering the tool decision (a fitted steerer)")
    st.add_argument("prompt")
    st.add_argument("--model", default="gemma-3-270m-tools")
    st.add_argument("--profile", default="fast", help="whose circuit_neurons artifact holds the steerer")
    st.add_argument("--steerer", default=None, help="a steerer folder instead of the artifact's")
    st.add_argument("--mode", choices=("normal", "force_tool", "prevent_tool"), default="normal")
    st.add_argument("--kill-switch", action="store_true", help="set the kill-switch neuron to its blocking value")
    st.add_argument("--steer-to", default=None, help="add this tool's direction")
    st.add_argument("--alpha", type=float, default=None, help="steering strength (default: the fitted one)")
    st.add_argument("--max-new-tokens", type=int, default=32)
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
        elif args.cmd == "steer":
            steer(args)
    return 0


def steer(args) -> None:
    """Load the steerer and the model, read the prompt, print what the model does."""
    from pathlib import Path

    from . import paths
    from .models import load_model
    from .steering import Steerer

    folder = Path(args.steerer) if args.steerer else paths.artifact_dir(args.profile, args.model, "circuit_neurons") / "steerer"
    if not (folder / "steerer.json").exists():
        raise ModelError(f"no steerer for {args.model} in {folder}; run `make fast` (or python -m "
                         f"analyses.circuit_neurons --profile {args.profile} --model {args.model}) first, or pass --steerer")
    steerer = Steerer.load(folder, load_model(args.model, profile=args.profile))
    out = steerer.predict(args.prompt, mode=args.mode, kill_switch=args.kill_switch, steer_to=args.steer_to,
                          alpha=args.alpha, max_new_tokens=args.max_new_tokens)
    alpha = steerer.alpha if args.alpha is None else args.alpha
    print(f"model      {args.model} (steering layer {steerer.layer}, alpha {alpha:g}, {steerer.scope})")
    print(f"mode       {out.mode}{' + kill switch' if args.kill_switch else ''}"
          f"{f' + toward {args.steer_to}' if args.steer_to else ''}")
    print(f"P(tool)    {out.p_tool:.3f}  ({'calls a tool' if out.decides_tool else 'answers in text'})")
    print(f"choice     {out.tool}  (forced choice among {len(steerer.tool_names)} tools)")
    print(f"reply      {out.call!r}")


if __name__ == "__main__":
    sys.exit(main())
