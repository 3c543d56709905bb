"""The ``deconvviz`` command: demo, mine, report, rf, compare (see docs/cli.md).

Errors and exit codes. Every argument is checked before any work (``_cli_checks``): a wrong
one, or an error the package raises for bad input while the command runs, is printed as one
line, ``deconvviz CMD: error: MESSAGE``, and the exit status is 2. Bad input means these
exception types, and only these:

* ``ValueError`` (with the package's own ``CommandLineError``, ``ModelLoadError``,
  ``ReceptiveFieldError``) and ``TypeError``: the package's argument checks raise them;
* ``FileNotFoundError``, ``FileExistsError``, ``PermissionError``, ``IsADirectoryError``,
  ``NotADirectoryError``, and any other ``OSError`` that names a file or says the disk is
  full or read-only: the user's paths and disks;
* running out of memory (``MemoryError``, ``torch.OutOfMemoryError``): the line suggests a
  smaller ``--batch-size``.

Anything else (``RuntimeError``, ``KeyError``, ``AssertionError``, ...) is a bug, ours or in
the user's model code, and keeps its traceback. With ``DECONVVIZ_DEBUG=1`` in the
environment, bad input shows its traceback too. Ctrl-C exits with status 130 and one line
saying what was kept (a checkpoint to resume from, if any). argparse's own errors (an
unknown option, a value that is not a number) are one line as well, with exit status 2.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from . import __version__
from ._cli_checks import (
    MINING_DEFAULTS,
    NORMALIZE_PRESETS,
    Normalization,
    check_arguments,
    remove_empty,
)
from ._cli_commands import COMPARE_METHODS, cmd_compare, cmd_demo, cmd_mine, cmd_report, cmd_rf

__all__ = ["NORMALIZE_PRESETS", "Normalization", "build_parser", "main"]

#: Exceptions that mean bad input (see the module docstring); any other exception is a bug.
USER_ERRORS = (
    ValueError,
    TypeError,
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    MemoryError,
    torch.OutOfMemoryError,
)


def _add_model_arguments(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument(
        "--model",
        default=default,
        required=default is None,
        help="'default' (the embedded CIFAR-10 model), 'torchvision:NAME', 'module.path:factory', "
        "or a .pt/.pth file (with --arch)",
    )
    parser.add_argument("--weights", default=None, help="torchvision weights: DEFAULT (downloads) or a state_dict path")
    parser.add_argument("--arch", default=None, help="architecture spec for a state_dict file given as --model")
    parser.add_argument(
        "--trust-code",
        action="store_true",
        help="allow a TorchScript or pickled model file: loading those runs code, use only files you trust",
    )


def _add_normalize_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--normalize",
        choices=sorted(NORMALIZE_PRESETS),
        default=None,
        help="input statistics: cifar10, imagenet, or none (images in [0, 1]); default cifar10 for the default "
        "model, imagenet for every other model",
    )
    parser.add_argument("--mean", nargs="+", default=None, metavar="M", help="3 per-channel means (R G B), "
                        "overriding the preset's, for images scaled to [0, 1]")  # fmt: skip
    parser.add_argument("--std", nargs="+", default=None, metavar="S", help="3 per-channel standard deviations "
                        "(R G B), overriding the preset's")  # fmt: skip


def _add_mining_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="default-sample", help="a folder of images (flat or one folder per class), "
                        "or 'default-sample' (1,000 CIFAR-10 test images shipped with the package)")  # fmt: skip
    # Repeated --layers add up (argparse's "last wins" dropped the first list without a word).
    parser.add_argument(
        "--layers",
        nargs="+",
        action="extend",
        default=None,
        metavar="NAME",
        help="module names to mine; a repeated --layers adds to the list (default: see docs/cli.md)",
    )
    # None (not the default) until check_arguments fills it in: report --result refuses mining options given.
    parser.add_argument("--k", type=int, default=None, help=f"records per channel (default {MINING_DEFAULTS['k']})")
    parser.add_argument(
        "--unique",
        choices=["image", "none", "nms"],
        default=None,
        help=f"how records of one channel must differ, see mine_topk (default {MINING_DEFAULTS['unique']})",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: CUDA if available)")
    parser.add_argument("--image-size", type=int, default=None, help="resize folder images to this size")
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="use only the first N images (of default-sample, sorted by class: N spread evenly over it)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help=f"DataLoader processes decoding images (default {MINING_DEFAULTS['workers']})",
    )
    _add_normalize_arguments(parser)


_STATIC_HELP = "write the static one-page report (a PNG per channel, for printing and papers) instead of the explorer"
_LOSSY_HELP = (
    "store all the explorer's image sheets as lossy WebP (quality 90): several times smaller, for sharing "
    "(default: patches, DeconvNet projections and images lossless)"
)


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line, pointing to ``--help``, instead of the usage block first."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``deconvviz``, with one subparser per subcommand."""
    parser = _Parser(
        prog="deconvviz",
        description="Zeiler & Fergus DeconvNet visualizations for PyTorch models, on top of Captum.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="mine the default model on the shipped images and write the explorer (offline)")
    demo.add_argument("--out", default="deconvviz-demo", help="explorer folder (default: deconvviz-demo)")
    demo.add_argument("--k", type=int, default=9)
    demo.add_argument("--batch-size", type=int, default=100)
    demo.add_argument("--device", default=None)
    demo.add_argument(
        "--limit", type=int, default=None, help="use only N of the shipped images, spread evenly over their classes"
    )
    demo.add_argument("--static", action="store_true", help=_STATIC_HELP)
    demo.add_argument("--lossy", action="store_true", help=_LOSSY_HELP)
    demo.set_defaults(run=cmd_demo)

    mine = sub.add_parser("mine", help="mine the top-k activations of layers over a folder of images")
    _add_model_arguments(mine, default="default")
    _add_mining_arguments(mine)
    mine.add_argument("--checkpoint", default=None, help="save progress here; rerun the same command to resume")
    mine.add_argument("--out", required=True, help="where to write the MiningResult (.pt)")
    mine.set_defaults(run=cmd_mine)

    report = sub.add_parser(
        "report", help="write the HTML explorer, or with --static the one-page report (mining first unless --result)"
    )
    _add_model_arguments(report, default="default")
    _add_mining_arguments(report)
    report.add_argument("--result", default=None, help="a MiningResult written by 'deconvviz mine'")
    report.add_argument("--out", required=True, help="explorer (or report) folder")
    report.add_argument("--static", action="store_true", help=_STATIC_HELP)
    report.add_argument("--lossy", action="store_true", help=_LOSSY_HELP)
    report.set_defaults(run=cmd_report)

    compare = sub.add_parser("compare", help="DeconvNet vs Guided Backprop vs Captum: maps, agreement, a figure")
    _add_model_arguments(compare, default="default")
    compare.add_argument("--data", default="default-sample", help="a folder of images, or 'default-sample'")
    compare.add_argument("--image-size", type=int, default=None)
    compare.add_argument("--limit", type=int, default=None)
    _add_normalize_arguments(compare)
    compare.add_argument("--images", type=int, default=4, help="how many images (the first N)")
    compare.add_argument("--target", default="predicted", help="a class index, or 'predicted' (default)")
    compare.add_argument(
        "--methods",
        nargs="+",
        action="extend",  # repeated --methods add up, as --layers do
        default=None,
        metavar="NAME",
        help=f"names from captum_deconvviz.compare.METHODS (default: {' '.join(COMPARE_METHODS)}); a repeated "
        "--methods adds to the list",
    )
    compare.add_argument("--out", default="compare.png", help="figure file (png, pdf, svg)")
    compare.set_defaults(run=cmd_compare)

    rf = sub.add_parser("rf", help="receptive field of every conv/pool layer (or of one layer)")
    _add_model_arguments(rf)
    rf.add_argument("--input-size", nargs="+", type=int, default=[3, 224, 224], metavar="N", help="C H W")
    rf.add_argument("--layer", default=None, help="only this layer (module name; 'stages.1[0]' picks from a tuple)")
    rf.add_argument("--channel", type=int, default=None, help="with --layer: this channel's own field")
    rf.add_argument("--method", choices=["analytic", "probe"], default="analytic")
    rf.add_argument("--verify", action="store_true", help="check the analytic answer against the probe")
    rf.add_argument("--markdown", action="store_true", help="print a Markdown table")
    rf.set_defaults(run=cmd_rf)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``deconvviz`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit status.

    Args:
        argv: the arguments after the program name.

    Returns:
        0 on success, 2 for bad input (one line on stderr), 130 after Ctrl-C, 143 after SIGTERM. argparse's own
        errors raise ``SystemExit(2)`` after their one line.

    Example:
        >>> main(["rf", "--model", "default", "--input-size", "3", "32", "32"])  # doctest: +SKIP
        0
    """
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the subcommand, whose options they were meant to be
        prog = f"deconvviz {args.command}" if args.command else "deconvviz"
        parser.exit(2, f"{prog}: error: unrecognized arguments: {' '.join(unknown)} (see '{prog} --help')\n")
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 0 if args.command is None else 2
    created: list[Path] = []
    try:
        created = check_arguments(args)
        with warnings.catch_warnings():
            if argv is None:  # the program itself: warnings as one line each, not a source line from inside
                warnings.showwarning = _show_warning
                # A kill (a job's time limit, `timeout`) is an interruption too: say what was kept.
                if threading.current_thread() is threading.main_thread():
                    signal.signal(signal.SIGTERM, _terminated)
            return int(args.run(args) or 0)
    except KeyboardInterrupt as stop:
        remove_empty(created)
        what = "terminated (SIGTERM)" if isinstance(stop, _Terminated) else "interrupted"
        print(f"deconvviz {args.command}: {what}; {_what_was_kept(args)}", file=sys.stderr)
        return 143 if isinstance(stop, _Terminated) else 130
    except BaseException as err:
        remove_empty(created)  # the output folders the checks made, unless something was written there
        if not _is_bad_input(err) or os.environ.get("DECONVVIZ_DEBUG", "") not in ("", "0"):
            raise
        print(f"deconvviz {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is."""


def _terminated(_signum: int, _frame: Any) -> None:
    raise _Terminated


def _show_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    """``deconvviz: warning: ...`` on one line (the default shows the library's file and source line)."""
    print(f"deconvviz: warning: {' '.join(str(message).split())}", file=sys.stderr if file is None else file)


def _is_bad_input(err: BaseException) -> bool:
    if isinstance(err, USER_ERRORS):
        return True
    return isinstance(err, OSError) and (
        err.filename is not None or err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
    )


def _one_line(err: BaseException) -> str:
    message = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return f"out of memory ({message}); try a smaller --batch-size (or --image-size, --k)"
    return message


def _what_was_kept(args: argparse.Namespace) -> str:
    checkpoint = getattr(args, "checkpoint", None)
    if checkpoint is not None:
        path = Path(checkpoint)  # under torchrun each rank has its own file next to it
        if path.is_file() or any(path.parent.glob(f"{path.stem}.rank*-of-*{path.suffix}")):
            return f"the checkpoint {checkpoint} keeps the progress of its last save: run the same command to resume"
    if args.command == "mine":
        return "nothing was saved (with --checkpoint FILE an interrupted run resumes where it stopped)"
    if args.command in ("report", "demo") and Path(args.out).is_dir() and any(Path(args.out).iterdir()):
        return f"the report in {args.out} is incomplete"
    return "nothing was written"


if __name__ == "__main__":
    sys.exit(main())
