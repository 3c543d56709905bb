"""Training of the default model on CIFAR-10, seeded and reproducible, on CPU or GPU.

``python -m captum_deconvviz.zoo.train --out weights.pt`` (see ``examples/train_default_model.py``).
Training uses BatchNorm, SGD with Nesterov momentum, a one-cycle learning rate,
label smoothing, random crops (4-pixel zero padding) and horizontal flips; BatchNorm
is folded into the convolutions at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import find_cifar10, load_cifar10
from .model import ZFNetCIFAR
from .transforms import CIFAR10_MEAN, CIFAR10_STD

__all__ = ["evaluate", "train_default_model"]


def _normalize(images: Tensor) -> Tensor:
    mean = torch.tensor(CIFAR10_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def _augment(images: Tensor, gen: torch.Generator) -> Tensor:
    """Random 32x32 crops of the 4-pixel zero-padded images, and random horizontal flips."""
    n = images.shape[0]
    padded = F.pad(images, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=gen)
    dx = torch.randint(0, 9, (n,), generator=gen)
    out = torch.stack([padded[i, :, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32] for i in range(n)])
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


@torch.no_grad()
def evaluate(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` on uint8 ``images`` (normalized here)."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(images), batch_size):
        x = _normalize(images[start : start + batch_size].to(device))
        correct += int((model(x).argmax(1).cpu() == labels[start : start + batch_size]).sum())
    return correct / len(images)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _check_arguments(
    epochs: int,
    batch_size: int,
    lr: float,
    random_state: int,
    device: str | None,
    limit: int | None,
    first_kernel: int,
    first_stride: int,
    renormalize: float | None,
    checkpoints: list[ZFNetCIFAR] | None,
) -> torch.device:
    """Every argument of :func:`train_default_model`, checked before any data is read; the device."""
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("first_stride", first_stride)):
        _positive_int(name, value)
    if _positive_int("first_kernel", first_kernel) % 2 == 0:
        raise ValueError(f"first_kernel must be odd (padding keeps the size), got {first_kernel}")
    if limit is not None:
        _positive_int("limit", limit)
    if isinstance(random_state, bool) or not isinstance(random_state, int):
        raise ValueError(f"random_state must be an int, got {random_state!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if renormalize is not None and (
        isinstance(renormalize, bool)
        or not isinstance(renormalize, (int, float))
        or not math.isfinite(renormalize)
        or renormalize <= 0
    ):
        raise ValueError(f"renormalize must be None or a finite number > 0, got {renormalize!r}")
    if checkpoints is not None and not isinstance(checkpoints, list):
        raise TypeError(f"checkpoints must be None or a list to append to, got {type(checkpoints).__name__}")
    try:
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N'..., got {device!r} ({err})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here")
    return dev


def _too_few_steps(epochs: int, images: int, batch_size: int) -> None:
    steps = epochs * (images // batch_size)
    raise ValueError(
        f"epochs={epochs} over {images} images in batches of batch_size={batch_size} make {steps} "
        "optimizer steps; the one-cycle schedule needs at least 4 (raise epochs or limit, or lower batch_size)"
    )


def _cifar10_root(data_root: str | None) -> str:
    """The folder holding CIFAR-10's ``train.zip`` and ``test.zip``, or a FileNotFoundError saying where to put them."""
    root = data_root or find_cifar10()
    missing = [name for name in ("train.zip", "test.zip") if root is None or not (Path(root) / name).is_file()]
    if missing or root is None:
        where = f"in {str(root)!r}" if root is not None else "(data_root not given and find_cifar10() found none)"
        raise FileNotFoundError(
            f"CIFAR-10 {' and '.join(missing)} not found {where}: pass data_root or set DECONVVIZ_CIFAR10"
        )
    return str(root)


def _optimizer(model: nn.Module, lr: float, steps: int) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.OneCycleLR]:
    """Nesterov SGD (weight decay on weights, not on biases and BatchNorm) under a one-cycle schedule."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _name, param in model.named_parameters():
        (no_decay if param.dim() == 1 else decay).append(param)
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        momentum=0.9,
        nesterov=True,
    )
    # A quarter of the steps warm up; tiny smoke runs need at least two warm-up steps.
    warmup = max(0.25, 2.0 / steps)
    return optimizer, torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=warmup)


def _train_epoch(
    model: nn.Module,
    train_x: Tensor,
    train_y: Tensor,
    batch_size: int,
    dev: torch.device,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    gen: torch.Generator,
) -> float:
    """One pass over the training images in a random order (augmented); returns the mean loss."""
    model.train()
    order = torch.randperm(len(train_x), generator=gen)
    total = 0.0
    steps = len(train_x) // batch_size
    for step in range(steps):
        index = order[step * batch_size : (step + 1) * batch_size]
        x = _normalize(_augment(train_x[index], gen)).to(dev).contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(x), train_y[index].to(dev), label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        total += float(loss.detach())
    return total / steps


def train_default_model(
    epochs: int = 13,
    batch_size: int = 256,
    lr: float = 0.2,
    random_state: int = 0,
    data_root: str | None = None,
    device: str | None = None,
    limit: int | None = None,
    log: bool = True,
    first_kernel: int = 5,
    first_stride: int = 1,
    renormalize: float | None = None,
    checkpoints: list[ZFNetCIFAR] | None = None,
    *,
    seed: int | None = None,
) -> tuple[ZFNetCIFAR, dict[str, float | int | str]]:
    """Train the default model and return it (BatchNorm folded, eval mode) with metrics.

    Args:
        epochs: passes over the training set.
        batch_size: images per step.
        lr: peak learning rate of the one-cycle schedule.
        random_state: seeds initialization, data order and augmentation.
        data_root: folder with CIFAR-10's ``train.zip``/``test.zip``; default
            :func:`captum_deconvviz.data.find_cifar10`.
        device: ``"cpu"``, ``"cuda"``...; default CUDA when available.
        limit: train on the first ``limit`` training images only (for smoke tests).
        log: print progress.
        first_kernel, first_stride: the first convolution's geometry (see :class:`ZFNetCIFAR`).
        renormalize: if given, cap every conv filter's RMS at this radius after each step
            (Zeiler & Fergus's fix, :func:`captum_deconvviz.diagnose.renormalize_after_step`).
        checkpoints: if given, a folded copy of the model is appended after each epoch.
        seed: deprecated spelling of ``random_state``.

    Returns:
        ``(model, {"test_accuracy": ..., "train_seconds": ..., ...})``.

    Raises:
        ValueError: a bad argument (checked before any data is read), or too few optimizer steps.
        FileNotFoundError: no CIFAR-10 zips (see :func:`captum_deconvviz.data.load_cifar10`).

    Example:
        >>> model, metrics = train_default_model(epochs=1, limit=1024, log=False)  # doctest: +SKIP
        >>> sorted(metrics)[:2]  # doctest: +SKIP
        ['batch_size', 'device']
    """
    if seed is not None:
        message = "train_default_model(seed=...) is deprecated, removed in the next release: use random_state="
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        random_state = seed
    dev = _check_arguments(
        epochs, batch_size, lr, random_state, device, limit, first_kernel, first_stride, renormalize, checkpoints
    )
    if limit is not None and epochs * (limit // batch_size) < 4:
        _too_few_steps(epochs, limit, batch_size)  # known before reading a single image
    torch.manual_seed(random_state)
    root = _cifar10_root(data_root)
    train_x, train_y, _ = load_cifar10("train", limit=limit, root=root)
    test_x, test_y, _ = load_cifar10("test", root=root)
    model = ZFNetCIFAR(batch_norm=True, first_kernel=first_kernel, first_stride=first_stride)
    model = model.to(dev).to(memory_format=torch.channels_last)
    steps = epochs * (len(train_x) // batch_size)
    if steps < 4:
        _too_few_steps(epochs, len(train_x), batch_size)
    optimizer, schedule = _optimizer(model, lr, steps)
    if renormalize is not None:
        from ..diagnose import renormalize_after_step

        renormalize_after_step(optimizer, model, renormalize)
    gen = torch.Generator().manual_seed(random_state)
    start = time.perf_counter()
    for epoch in range(epochs):
        loss = _train_epoch(model, train_x, train_y, batch_size, dev, optimizer, schedule, gen)
        if checkpoints is not None:
            checkpoints.append(model.fold_batch_norm().cpu().to(memory_format=torch.contiguous_format))
        if log:
            elapsed = time.perf_counter() - start
            print(f"epoch {epoch + 1}/{epochs}: loss {loss:.3f}, {elapsed:.0f}s", flush=True)
    train_seconds = time.perf_counter() - start
    folded = model.fold_batch_norm().to(dev).to(memory_format=torch.contiguous_format)
    metrics: dict[str, float | int | str] = {
        "test_accuracy": evaluate(folded, test_x, test_y),
        "train_seconds": train_seconds,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": random_state,  # the key the shipped metrics (zf_cifar10.json) were written with
        "train_images": len(train_x),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(dev),
    }
    if log:
        print(f"test accuracy {metrics['test_accuracy']:.4f} after {train_seconds:.0f}s", flush=True)
    return folded.cpu().eval(), metrics


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m captum_deconvviz.zoo.train``: train, save float16 weights and their metrics (JSON).

    Args:
        argv: the command-line arguments (default ``sys.argv[1:]``).

    Example:
        >>> main(["--out", "weights.pt", "--epochs", "13"])  # doctest: +SKIP
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="where to write the weights (float16 state_dict)")
    parser.add_argument("--epochs", type=int, default=13)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--random-state", "--seed", dest="random_state", type=int, default=0,
                        help="seeds initialization, data order and augmentation (--seed: old spelling)")  # fmt: skip
    parser.add_argument("--data", default=None, help="folder with CIFAR-10's train.zip and test.zip")
    parser.add_argument("--device", default=None)
    parser.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if not out.parent.is_dir():  # found out now, not after an hour of training
        parser.error(f"--out {args.out!r}: folder {str(out.parent)!r} does not exist")
    try:
        model, metrics = train_default_model(
            args.epochs, args.batch_size, args.lr, args.random_state, args.data, args.device, args.limit
        )
    except (ValueError, TypeError, FileNotFoundError) as err:
        parser.error(str(err))
    # float16 halves the shipped file; accuracy is measured again after the round trip.
    state = {k: v.half() for k, v in model.state_dict().items()}
    torch.save(state, out)
    restored = ZFNetCIFAR()
    restored.load_state_dict({k: v.float() for k, v in state.items()})
    test_x, test_y, _ = load_cifar10("test", root=args.data or find_cifar10())
    metrics["test_accuracy_float16_weights"] = evaluate(restored.eval(), test_x, test_y)
    out.with_suffix(".json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
