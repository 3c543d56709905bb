"""The ``deconvviz`` command: demo, mine, report, rf, compare (see docs/cli.md)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from . import __version__, _distributed
from .data import ImageFiles
from .model_loading import ModelLoadError, load_model
from .receptive_field import ReceptiveFieldError, receptive_field, receptive_field_table

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


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


def _add_mining_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="default-sample", help="a folder of images (flat or one folder per class), "
                        "or 'default-sample' (1,000 CIFAR-10 test images shipped with the package)")  # fmt: skip
    parser.add_argument("--layers", nargs="+", default=None, help="module names to mine (default: see docs/cli.md)")
    parser.add_argument("--k", type=int, default=9, help="records per channel (default 9)")
    parser.add_argument("--unique", choices=["image", "none", "nms"], default="image")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: CUDA if available)")
    parser.add_argument("--image-size", type=int, default=None, help="resize folder images to this size")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader processes decoding images (default 0)")


def _model(args: argparse.Namespace) -> nn.Module:
    return load_model(args.model, weights=args.weights, arch=args.arch, trust_code=args.trust_code)


def _data(args: argparse.Namespace) -> tuple[Any, Callable[[Tensor], Tensor], list[str], str]:
    """The dataset, how to display its images, each image's file name, and a description."""
    from torchvision.transforms import functional as TF

    from .zoo import default_sample, default_transform, denormalize

    default_model = args.model == "default"
    if default_model:
        transform, display = default_transform(args.image_size or 32), denormalize
    else:
        size = args.image_size or 224

        def transform(image: Any) -> Tensor:
            image = TF.center_crop(TF.resize(image.convert("RGB"), size), [size, size])
            return TF.normalize(TF.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD)

        mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)

        def display(image: Tensor) -> Tensor:
            return (image * std + mean).clamp(0, 1)

    if args.data == "default-sample":
        dataset, name = default_sample(transform), "default sample (1,000 CIFAR-10 test images)"
    else:
        dataset, name = ImageFiles(args.data, transform=transform), str(args.data)
        if dataset.skipped:
            print(f"skipped {len(dataset.skipped)} unreadable file(s), e.g. {dataset.skipped[0]}", file=sys.stderr)
        if len(dataset) == 0:
            raise ValueError(f"no readable images in {args.data!r}")
    if args.limit is not None:
        from torch.utils.data import Subset

        subset = Subset(dataset, range(min(args.limit, len(dataset))))
        subset.names = dataset.names[: len(subset)]  # type: ignore[attr-defined]
        dataset = subset
    return dataset, display, list(dataset.names), name


def _default_layers(args: argparse.Namespace, model: nn.Module) -> list[str]:
    if args.layers:
        return list(args.layers)
    if args.model == "default":
        from .zoo import DEFAULT_LAYERS

        return list(DEFAULT_LAYERS)
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if len(convs) <= 8:
        return convs
    step = (len(convs) - 1) / 7
    return [convs[round(i * step)] for i in range(8)]


def _mine(args: argparse.Namespace, model: nn.Module, dataset: Any, layers: list[str]) -> Any:
    from .mining import mine_topk

    device = args.device
    if _distributed.init_from_env() and device is None and torch.cuda.is_available():
        device = f"cuda:{torch.cuda.current_device()}"
    return mine_topk(
        model, layers, dataset, k=args.k, unique=args.unique, batch_size=args.batch_size, device=device,
        checkpoint=getattr(args, "checkpoint", None), progress=_distributed.is_main(), num_workers=args.workers,
    )  # fmt: skip


def _cmd_mine(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    model = _model(args)
    dataset, _, _, name = _data(args)
    layers = _default_layers(args, model)
    result = _mine(args, model, dataset, layers)

    if not _distributed.is_main():
        return 0  # rank 0 writes the one output
    result.meta["command"] = sys.argv
    result.save(args.out)
    print(f"mined {result.num_images} images of {name} at {len(layers)} layers in {time.perf_counter() - start:.0f}s: "
          f"wrote {args.out}")  # fmt: skip
    return 0


def _cmd_report(args: argparse.Namespace, title: str = "DeconvNet report") -> int:
    from .mining_result import MiningResult
    from .report import write_report

    start = time.perf_counter()
    model = _model(args)
    dataset, display, labels, name = _data(args)
    if getattr(args, "result", None):
        result = MiningResult.load(args.result)
    else:
        result = _mine(args, model, dataset, _default_layers(args, model))
    from .diagnose import diagnose

    diagnosis = diagnose(model, dataset, batch_size=args.batch_size, max_images=1000, progress=_distributed.is_main())
    index = write_report(
        args.out, model, dataset, result, title=title, denormalize=display, image_labels=labels,
        model_name=args.model, data_name=name, command=["deconvviz", *sys.argv[1:]], diagnosis=diagnosis,
    )  # fmt: skip
    print(f"wrote {index} ({result.num_images} images, {len(result.layers)} layers, "
          f"{time.perf_counter() - start:.0f}s); open it in a browser")  # fmt: skip
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    args.model, args.weights, args.arch, args.trust_code = "default", None, None, False
    args.data, args.layers, args.unique, args.image_size = "default-sample", None, "image", None
    args.workers = 0
    return _cmd_report(args, title="deconvviz demo: the default ZF-style CIFAR-10 model")


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare_methods

    model = _model(args)
    dataset, display, names, _ = _data(args)
    count = min(args.images, len(dataset))
    images = torch.stack([dataset[i][0] for i in range(count)])
    if args.target == "predicted":
        with torch.no_grad():
            target: Any = model(images).argmax(1).tolist()
    else:
        target = int(args.target)
    result = compare_methods(model, images, target=target, methods=args.methods)
    fig, _ = result.plot(display=display, use_pyplot=False)
    fig.savefig(args.out, dpi=200)
    print(result.table())
    print(f"wrote {args.out} ({count} images: {', '.join(names[:count])}; target {args.target})")
    return 0


def _cmd_rf(args: argparse.Namespace) -> int:
    model = _model(args)
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

    demo = sub.add_parser("demo", help="mine the default model on the shipped images and write the report (offline)")
    demo.add_argument("--out", default="deconvviz-demo", help="report folder (default: deconvviz-demo)")
    demo.add_argument("--k", type=int, default=9)
    demo.add_argument("--batch-size", type=int, default=100)
    demo.add_argument("--device", default=None)
    demo.add_argument("--limit", type=int, default=None, help="use only the first N shipped images")
    demo.set_defaults(run=_cmd_demo)

    mine = sub.add_parser("mine", help="mine the top-k activations of layers over a folder of images")
    _add_model_arguments(mine, default="default")
    _add_mining_arguments(mine)
    mine.add_argument("--checkpoint", default=None, help="save progress here; rerun the same command to resume")
    mine.add_argument("--out", required=True, help="where to write the MiningResult (.pt)")
    mine.set_defaults(run=_cmd_mine)

    report = sub.add_parser("report", help="write the HTML report (mining first unless --result is given)")
    _add_model_arguments(report, default="default")
    _add_mining_arguments(report)
    report.add_argument("--result", default=None, help="a MiningResult written by 'deconvviz mine'")
    report.add_argument("--out", required=True, help="report folder")
    report.set_defaults(run=_cmd_report)

    compare = sub.add_parser("compare", help="DeconvNet vs Guided Backprop vs Captum: maps, agreement, a figure")
    _add_model_arguments(compare, default="default")
    compare.add_argument("--data", default="default-sample", help="a folder of images, or 'default-sample'")
    compare.add_argument("--image-size", type=int, default=None)
    compare.add_argument("--limit", type=int, default=None)
    compare.add_argument("--images", type=int, default=4, help="how many images (the first N)")
    compare.add_argument("--target", default="predicted", help="a class index, or 'predicted' (default)")
    compare.add_argument(
        "--methods",
        nargs="+",
        default=["zf_deconv", "guided_backprop", "captum_deconvolution", "saliency"],
        help="names from captum_deconvviz.compare.METHODS",
    )
    compare.add_argument("--out", default="compare.png", help="figure file (png, pdf, svg)")
    compare.set_defaults(run=_cmd_compare)

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
    except (ModelLoadError, ReceptiveFieldError, ValueError, TypeError, FileNotFoundError) as err:
        print(f"deconvviz {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
