"""What each ``deconvviz`` command does, once its arguments are checked (``cli`` parses them).

Split from ``cli`` so that the parser and the error handling (``cli``) and the work of each
command (here: load the model and data, mine, write the report or explorer, compare, print
receptive fields) each stay small.
"""

from __future__ import annotations

import argparse
import contextlib
import pickle
import sys
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from . import _distributed
from ._cli_checks import (
    CommandLineError,
    Normalization,
    check_input_size,
    check_model_fits,
    check_result_data,
    check_result_model,
    check_result_options,
    image_size,
    normalization,
)
from ._forward import EvalMode, model_device, on_model_device
from .data import ImageFiles, rgb_image
from .model_loading import load_model
from .receptive_field import receptive_field, receptive_field_table

__all__ = ["ALIASING_IMAGES", "COMPARE_METHODS", "cmd_compare", "cmd_demo", "cmd_mine", "cmd_report", "cmd_rf"]

#: Images the report's aliasing scores are over (the first ones), as diagnose's max_images.
ALIASING_IMAGES = 1000
#: What ``compare`` compares without ``--methods``.
COMPARE_METHODS = ("zf_deconv", "guided_backprop", "captum_deconvolution", "saliency")


def _model(args: argparse.Namespace) -> nn.Module:
    return load_model(args.model, weights=args.weights, arch=args.arch, trust_code=args.trust_code)


def _to_device(args: argparse.Namespace, model: nn.Module) -> nn.Module:
    """The model on the device the command computes on: ``--device``; under torchrun this process's
    GPU; else CUDA if there is one (mine_topk's default). The command owns the model it loaded, so it
    is moved, not copied: mining, projections, diagnosis and the comparison all run there."""
    distributed = _distributed.init_from_env()  # first: it picks this process's GPU
    device = args.device
    if device is None and torch.cuda.is_available():
        device = f"cuda:{torch.cuda.current_device()}" if distributed else "cuda"
    return model.to(device) if device is not None else model


def _data(args: argparse.Namespace) -> tuple[Any, Callable[[Tensor], Tensor], list[str], str]:
    """The dataset, how to display its images, each image's file name, and a description."""
    from torchvision.transforms import functional as TF

    from .zoo import default_sample

    norm: Normalization = args.normalization
    size = image_size(args)
    mean, std = torch.tensor(norm.mean).view(3, 1, 1), torch.tensor(norm.std).view(3, 1, 1)

    def transform(image: Any) -> Tensor:
        image = rgb_image(image)  # 16-bit grey scaled, not clipped white
        if image.size != (size, size):  # shorter side to size, then the centre square
            image = TF.center_crop(TF.resize(image, size), [size, size])
        return TF.normalize(TF.to_tensor(image), norm.mean, norm.std)

    def display(image: Tensor) -> Tensor:
        return (image * std.to(image) + mean.to(image)).clamp(0, 1)

    images: Any
    if args.data == "default-sample":
        images, name = default_sample(transform), "default sample (1,000 CIFAR-10 test images)"
    else:
        images, name = ImageFiles(args.data, transform=transform), str(args.data)
        skipped = (
            f"skipped {len(images.skipped)} unreadable file(s), e.g. {images.skipped[0]}" if images.skipped else ""
        )
        if len(images) == 0:  # one line: the skipped count goes into the error
            raise CommandLineError(f"--data {args.data} has no readable images" + f" ({skipped})" * bool(skipped))
        if skipped:
            print(skipped, file=sys.stderr)
    dataset: Dataset[Any] = images
    names = images.names
    if args.limit is not None:
        from torch.utils.data import Subset

        if args.limit > len(images):  # more than there are: use them all, and say so (as compare --images does)
            print(f"--limit {args.limit}: the data has only {len(images)} image(s); using all {len(images)}")
        count = min(args.limit, len(images))
        # The shipped sample is sorted by class: its first 100 are all airplanes. N of it are
        # spread evenly over it instead; a user's folder gives its first N, as documented.
        spread = args.data == "default-sample"
        indices = [i * len(images) // count for i in range(count)] if spread else list(range(count))
        subset = Subset(images, indices)
        names = [images.names[i] for i in indices]
        subset.names = names  # type: ignore[attr-defined]  # kept on the returned dataset for its callers
        subset.classes = getattr(images, "classes", None)  # type: ignore[attr-defined]  # class names, for mining
        dataset = subset
    return dataset, display, list(names), name


def _default_layers(args: argparse.Namespace, model: nn.Module) -> list[str]:
    """``--layers``, else the default model's four ReLUs, else up to 8 convolutions spread from the
    first to the last among those whose output is a map (more than 1x1 at the image size) and
    that run once: a squeeze-excitation gate's or a head's convolution after global pooling sees
    one pixel, where a patch and a projection show nothing of what the network looks at."""
    if args.layers:
        return list(args.layers)
    if args.model == "default":
        from .zoo import DEFAULT_LAYERS

        return list(DEFAULT_LAYERS)
    convs = _spatial_convolutions(model, image_size(args))
    if len(convs) <= 8:
        return convs
    step = (len(convs) - 1) / 7
    return [convs[round(i * step)] for i in range(8)]


def _spatial_convolutions(model: nn.Module, size: int) -> list[str]:
    """The ``Conv2d`` modules, in forward order, that run once on a ``size`` image with an output over 1x1."""
    shapes: dict[str, list[tuple[int, ...]]] = {}
    handles = [
        module.register_forward_hook(lambda _m, _i, out, name=name: shapes.setdefault(name, []).append(out.shape))
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d)
    ]
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    try:
        with torch.no_grad(), EvalMode(model):
            model(torch.zeros(1, 3, size, size, dtype=dtype, device=model_device(model)))
    except Exception:  # a model that does not take the size: every conv, and check_model_fits says why
        return [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    finally:
        for handle in handles:
            handle.remove()
    return [name for name, seen in shapes.items() if len(seen) == 1 and seen[0][-1] * seen[0][-2] > 1]


def _carries_labels(dataset: Any) -> bool:
    """Whether the images come with class labels: a class-folder dataset or the shipped sample."""
    base = getattr(dataset, "dataset", dataset)  # through --limit's Subset
    return bool(getattr(base, "classes", None)) and any(label >= 0 for label in getattr(base, "labels", ()))


def _mine(args: argparse.Namespace, model: nn.Module, dataset: Any, layers: list[str], exemplars: bool = False) -> Any:
    """Mine ``layers``; with ``exemplars`` (the report's), also the class statistics where the data
    has labels, and the bottom-k (as many as ``--k``)."""
    from .diagnose import watch_aliasing
    from .mining import mine_topk

    device = model_device(model)  # where _to_device put it
    checkpoint = getattr(args, "checkpoint", None)
    # One pass over the data: the aliasing scores the report's diagnosis needs are taken from
    # mining's own forward passes and kept in the result (docs/diagnostics.md). Only a fresh run on
    # one process sees the first images in order; a resumed or sharded run leaves them to diagnose.
    fresh = not _distributed.active() and (checkpoint is None or not Path(checkpoint).exists())
    watch = watch_aliasing(model, dataset, max_images=ALIASING_IMAGES) if fresh else None
    extra: dict[str, Any] = {}
    if exemplars:
        extra = {"bottom_k": args.k, **({"labels": True} if _carries_labels(dataset) else {})}
    with watch if watch is not None else contextlib.nullcontext():
        result = mine_topk(
            model, layers, dataset, k=args.k, unique=args.unique, batch_size=args.batch_size, device=device,
            checkpoint=checkpoint, progress=_distributed.is_main(), num_workers=args.workers, **extra,
        )  # fmt: skip
    if watch is not None:
        watch.record(result, args.batch_size)
    return result


def cmd_mine(args: argparse.Namespace) -> int:
    with _distributed.group_from_env():  # under torchrun; left on the way out, errors included
        return _mine_and_save(args)


def _mine_and_save(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    model = _model(args)
    layers = _default_layers(args, model)
    check_model_fits(model, args, layers)
    dataset, _, _, name = _data(args)
    model = _to_device(args, model)
    result = _mine(args, model, dataset, layers)

    if not _distributed.is_main():
        return 0  # rank 0 writes the one output
    result.meta["command"] = sys.argv
    result.meta["normalization"] = args.normalization.to_meta()
    result.save(args.out)
    print(f"mined {result.num_images} images of {name} at {len(layers)} layers in {time.perf_counter() - start:.0f}s: "
          f"wrote {args.out}")  # fmt: skip
    return 0


def _load_result(path: str) -> Any:
    from .mining_result import MiningResult

    try:
        return MiningResult.load(path)
    except ValueError as err:  # the reader's own checks: say which option gave the file
        raise CommandLineError(f"--result: {' '.join(str(err).split())}") from None
    except (RuntimeError, EOFError, KeyError, IndexError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        # Whatever the reader trips on, the cause is the file the user named.
        reason = " ".join(str(err).split())[:200]
        raise CommandLineError(
            f"--result {path} is not a result written by 'deconvviz mine' ({type(err).__name__}: {reason})"
        ) from None


def _comparison(model: nn.Module, dataset: Any, count: int = 4) -> Any:
    """The methods compared on the first ``count`` images, for the explorer; None where the model is no
    classifier (compare_methods refuses it)."""
    from .compare import compare_methods

    images = on_model_device(torch.stack([dataset[i][0] for i in range(min(count, len(dataset)))]), model)
    try:
        with torch.no_grad():
            target = model(images).argmax(1).tolist()
        return compare_methods(model, images, target=target, methods=list(COMPARE_METHODS))
    except (ValueError, TypeError, RuntimeError, IndexError):
        return None


def cmd_report(args: argparse.Namespace, title: str = "DeconvNet report") -> int:
    from .explorer import write_explorer
    from .report import write_report

    start = time.perf_counter()
    used = args.normalization.to_meta()
    loaded = _load_result(args.result) if getattr(args, "result", None) else None
    if loaded is not None:
        check_result_options(loaded, args)
    recorded = loaded.meta.get("normalization") if loaded is not None else None
    # Older results record none: nothing to check. The numbers matter, not the preset's name.
    if recorded is not None and [recorded["mean"], recorded["std"]] != [used["mean"], used["std"]]:
        raise CommandLineError(
            f"--result {args.result} was mined with normalization {_describe(recorded)}, but this report would "
            f"use {_describe(used)}: give the same --normalize/--mean/--std as 'deconvviz mine'"
        )
    model = _model(args)
    if loaded is not None:
        check_result_model(loaded, model, args)
    layers = list(loaded.layers) if loaded is not None else _default_layers(args, model)
    check_model_fits(model, args, layers)
    dataset, display, labels, name = _data(args)
    if loaded is not None:
        check_result_data(loaded, dataset, args)
    model = _to_device(args, model)
    result = loaded if loaded is not None else _mine(args, model, dataset, layers, exemplars=True)
    result.meta["normalization"] = used  # shown in the report's header
    from .diagnose import diagnose

    # Dead filters come from the mining statistics and aliasing from the scores mining recorded:
    # no second pass, unless the result came from a resumed run or another batch size.
    diagnosis = diagnose(
        model,
        dataset,
        batch_size=args.batch_size,
        max_images=ALIASING_IMAGES,
        progress=_distributed.is_main(),
        result=result,
    )
    common = {
        "title": title, "denormalize": display, "image_labels": labels, "model_name": args.model, "data_name": name,
        "command": ["deconvviz", *sys.argv[1:]], "diagnosis": diagnosis,
    }  # fmt: skip
    if getattr(args, "static", False):
        index = write_report(args.out, model, dataset, result, guided=True, **common)
    else:
        common["title"] = title.replace("report", "explorer")
        index = write_explorer(args.out, model, dataset, result, comparison=_comparison(model, dataset),
                               lossless=not getattr(args, "lossy", False), **common)  # fmt: skip
    print(f"wrote {index} ({result.num_images} images, {len(result.layers)} layers, "
          f"{time.perf_counter() - start:.0f}s); open it in a browser")  # fmt: skip
    return 0


def _describe(normalization: dict[str, Any]) -> str:
    def numbers(values: Sequence[float]) -> str:
        return " ".join(f"{v:g}" for v in values)

    return f"{normalization['preset']} (mean {numbers(normalization['mean'])}, std {numbers(normalization['std'])})"


def cmd_demo(args: argparse.Namespace) -> int:
    args.model, args.weights, args.arch, args.trust_code = "default", None, None, False
    args.data, args.layers, args.unique, args.image_size = "default-sample", None, "image", None
    args.workers, args.result = 0, None
    args.normalization = normalization(args)
    return cmd_report(args, title="deconvviz demo: the default ZF-style CIFAR-10 model")


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare_methods
    from .viz import plot_comparison

    model = _model(args)
    check_model_fits(model, args, None)
    dataset, display, names, _ = _data(args)
    count = min(args.images, len(dataset))
    if count < args.images:  # fewer images than asked: compare them all, and say so
        limit = f" (--limit {args.limit})" if args.limit is not None and args.limit < args.images else ""
        print(f"--images {args.images}: the data has only {len(dataset)} image(s){limit}; comparing {count}")
    images = torch.stack([dataset[i][0] for i in range(count)])
    if args.target == "predicted":
        with torch.no_grad():
            target: Any = model(images).argmax(1).tolist()
    else:
        target = int(args.target)
    result = compare_methods(model, images, target=target, methods=args.methods or list(COMPARE_METHODS))
    fig, _ = plot_comparison(result, examples=list(range(count)), display=display, use_pyplot=False)
    fig.savefig(args.out, dpi=200)
    print(result.table())
    print(f"wrote {args.out} ({count} images: {', '.join(names[:count])}; target {args.target}; "
          f"normalization {_describe(args.normalization.to_meta())})")  # fmt: skip
    return 0


def cmd_rf(args: argparse.Namespace) -> int:
    model = _model(args)
    check_input_size(model, args)
    shape = tuple(args.input_size)
    if args.layer:
        rf = receptive_field(model, args.layer, shape, method=args.method, verify=args.verify, channel=args.channel)
        print(rf)
        for reason in rf.global_via:
            print(f"  also depends on the whole input through the {reason}")
        if args.verify:  # receptive_field raised if the two disagreed
            if args.method == "probe":  # the probe was printed: was there an analytic field it was checked against?
                rf = receptive_field(model, args.layer, shape, verify=False, channel=args.channel)
            print(
                "verified: the probe's gradient support of the probed units (centre, neighbours, borders) equals the "
                "analytic box clipped to the image"
                if rf.method == "analytic"
                else "not verified: no analytic field to check (the analysis fell back to the probe, which this is)"
            )
        return 0
    table = receptive_field_table(model, shape)
    print(table.to_markdown() if args.markdown else table)
    return 0
