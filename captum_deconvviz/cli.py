"""The ``deconvviz`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from .model_loading import ModelLoadError, load_model
from .receptive_field import ReceptiveFieldError, receptive_field, receptive_field_table


def _add_model_arguments(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument(
        "--model",
        default=default,
        required=default is None,
        help="'torchvision:NAME', 'module.path:factory', or a .pt/.pth file (with --arch)",
    )
    parser.add_argument("--weights", default=None, help="torchvision weights: DEFAULT (downloads) or a state_dict path")
    parser.add_argument("--arch", default=None, help="architecture spec for a state_dict file given as --model")
    parser.add_argument(
        "--trust-code",
        action="store_true",
        help="allow a TorchScript or pickled model file: loading those runs code, use only files you trust",
    )


def _cmd_rf(args: argparse.Namespace) -> int:
    model = load_model(args.model, weights=args.weights, arch=args.arch, trust_code=args.trust_code)
    shape = tuple(args.input_size)
    if args.layer:
        print(receptive_field(model, args.layer, shape, method=args.method, verify=args.verify))
        return 0
    table = receptive_field_table(model, shape)
    print(table.to_markdown() if args.markdown else table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``deconvviz``, with one subparser per subcommand."""
    parser = argparse.ArgumentParser(
        prog="deconvviz",
        description="Zeiler & Fergus DeconvNet visualizations for PyTorch models, on top of Captum.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    rf = sub.add_parser("rf", help="receptive field of every conv/pool layer (or of one layer)")
    _add_model_arguments(rf)
    rf.add_argument("--input-size", nargs="+", type=int, default=[3, 224, 224], metavar="N", help="C H W")
    rf.add_argument("--layer", default=None, help="only this layer (module name)")
    rf.add_argument("--method", choices=["analytic", "probe"], default="analytic")
    rf.add_argument("--verify", action="store_true", help="check the analytic answer against the probe")
    rf.add_argument("--markdown", action="store_true", help="print a Markdown table")
    rf.set_defaults(run=_cmd_rf)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``deconvviz`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.run(args) or 0)
    except (ModelLoadError, ReceptiveFieldError, ValueError, TypeError) as err:
        print(f"deconvviz {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
