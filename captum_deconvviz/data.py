"""Image datasets for mining and reports: folders, zip archives, CIFAR-10's JPEG zips.

Unreadable or corrupted files are skipped and counted, never a crash.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["IMAGE_SUFFIXES", "ImageFiles", "ZipImages", "find_cifar10", "load_cifar10"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
_BAD_IMAGE = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be None or an int >= 0, got {limit!r}")


def _check_transform(transform: object) -> None:
    if transform is not None and not callable(transform):
        raise TypeError(f"transform must be None or a callable on PIL images, got {type(transform).__name__}")


def _label_of(relative: Path) -> str | None:
    """ImageFolder layout: the parent folder names the class; flat folders have none."""
    return relative.parts[-2] if len(relative.parts) >= 2 else None


class _Labelled(Dataset):
    """Shared indexing: items are ``(image, label)``; ``label`` is -1 when unknown."""

    names: list[str]
    labels: list[int]
    classes: list[str]
    skipped: list[str]
    transform: Callable[[Image.Image], Any] | None

    def __len__(self) -> int:
        return len(self.names)

    def _open(self, index: int) -> Image.Image:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self._open(index).convert("RGB")
        return (self.transform(image) if self.transform else image), self.labels[index]

    def _index_labels(self, label_names: list[str | None]) -> None:
        self.classes = sorted({name for name in label_names if name is not None})
        lookup = {name: i for i, name in enumerate(self.classes)}
        self.labels = [lookup[name] if name is not None else -1 for name in label_names]


class ImageFiles(_Labelled):
    """Every readable image under ``root``, in sorted path order.

    An ImageFolder layout (``root/<class>/<file>``) gives labels; a flat folder gives
    label -1. Files that PIL cannot read are skipped; :attr:`skipped` lists them.

    Args:
        root: the folder.
        transform: applied to each RGB PIL image.
        limit: keep only the first ``limit`` readable images.

    Example:
        >>> images = ImageFiles("photos/", transform=default_transform())  # doctest: +SKIP
        >>> len(images), images.skipped  # doctest: +SKIP
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Callable[[Image.Image], Any] | None = None,
        limit: int | None = None,
    ) -> None:
        _check_limit(limit)
        _check_transform(transform)
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"data folder {str(self.root)!r} does not exist or is not a folder")
        self.transform = transform
        self.names, self.skipped = [], []
        paths = sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        for path in paths:
            if limit is not None and len(self.names) >= limit:
                break
            try:
                with Image.open(path) as image:
                    image.verify()
            except _BAD_IMAGE:
                self.skipped.append(str(path.relative_to(self.root)))
                continue
            self.names.append(str(path.relative_to(self.root)))
        self._index_labels([_label_of(Path(name)) for name in self.names])

    def _open(self, index: int) -> Image.Image:
        return Image.open(self.root / self.names[index])


class ZipImages(_Labelled):
    """Every readable image in a zip archive (e.g. CIFAR-10's ``test.zip``), sorted by name.

    Args:
        path: the archive.
        transform: applied to each RGB PIL image.
        limit: keep only the first ``limit`` images (before checking them).
        prefix: only members under this folder of the archive.
        interleave: order members round-robin over their folders (classes), so that a
            ``limit`` keeps every class: ``a/0, b/0, ..., a/1, b/1, ...``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        transform: Callable[[Image.Image], Any] | None = None,
        limit: int | None = None,
        prefix: str = "",
        interleave: bool = False,
    ) -> None:
        _check_limit(limit)
        _check_transform(transform)
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"archive {str(self.path)!r} does not exist")
        self.transform = transform
        with zipfile.ZipFile(self.path) as archive:
            members = sorted(
                n for n in archive.namelist() if n.startswith(prefix) and n.lower().endswith(IMAGE_SUFFIXES)
            )
            if interleave:
                rank: dict[str, int] = {}
                keyed = []
                for name in members:
                    folder = str(Path(name).parent)
                    rank[folder] = rank.get(folder, -1) + 1
                    keyed.append((rank[folder], folder, name))
                members = [name for _, _, name in sorted(keyed)]
            if limit is not None:
                members = members[:limit]
            self._bytes = [archive.read(n) for n in members]
        self.names, self.skipped, keep = [], [], []
        for name, data in zip(members, self._bytes, strict=True):
            try:
                with Image.open(io.BytesIO(data)) as image:
                    image.verify()
            except _BAD_IMAGE:
                self.skipped.append(name)
                continue
            self.names.append(name)
            keep.append(data)
        self._bytes = keep
        self._index_labels([_label_of(Path(name)) for name in self.names])

    def _open(self, index: int) -> Image.Image:
        return Image.open(io.BytesIO(self._bytes[index]))


def find_cifar10() -> Path | None:
    """The folder with CIFAR-10's ``train.zip``/``test.zip``, or ``None`` when there is none.

    ``$DECONVVIZ_CIFAR10`` when it is set (and then only that folder, so that pointing it
    at an empty folder reliably hides the data, as the fresh-clone CI step does); else
    ``shared/data/cifar10`` next to (or above) the working directory or this package.

    Example:
        >>> folder = find_cifar10()  # doctest: +SKIP
        >>> folder is None or (folder / "test.zip").is_file()  # doctest: +SKIP
        True
    """
    env = os.environ.get("DECONVVIZ_CIFAR10")
    if env:
        return Path(env) if (Path(env) / "test.zip").is_file() else None
    candidates = []
    for start in (Path.cwd(), Path(__file__).resolve()):
        candidates += [parent / "shared" / "data" / "cifar10" for parent in (start, *start.parents)]
    return next((c for c in candidates if (c / "test.zip").is_file()), None)


def load_cifar10(
    split: str = "test", limit: int | None = None, root: str | os.PathLike[str] | None = None
) -> tuple[Tensor, Tensor, list[str]]:
    """CIFAR-10 from the JPEG zips as ``(uint8 images [N, 3, 32, 32], labels [N], class names)``.

    Args:
        split: ``"train"`` or ``"test"``.
        limit: the first ``limit`` images, taken round-robin over the classes (so 200
            images hold 20 of each class), in a fixed order.
        root: the folder with the zips; default :func:`find_cifar10`.

    Returns:
        ``(images, labels, classes)``.

    Raises:
        ValueError: a bad ``split`` or ``limit`` (checked before any file is read).
        FileNotFoundError: the zip is not there.

    Example:
        >>> images, labels, classes = load_cifar10("test", limit=200)  # doctest: +SKIP
        >>> images.shape, classes[0]  # doctest: +SKIP
        (torch.Size([200, 3, 32, 32]), 'airplane')
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    _check_limit(limit)
    folder = Path(root) if root is not None else find_cifar10()
    if folder is None or not (folder / f"{split}.zip").is_file():
        where = f"{split}.zip is not in {str(folder)!r}" if folder is not None else "CIFAR-10 JPEG zips not found"
        raise FileNotFoundError(
            f"{where}: set DECONVVIZ_CIFAR10 (or pass root) to the folder holding train.zip and test.zip; "
            "without them, captum_deconvviz.zoo.default_sample() has 1,000 test images"
        )
    dataset = ZipImages(folder / f"{split}.zip", limit=limit, interleave=True)
    images = np.stack([np.asarray(dataset._open(i).convert("RGB")) for i in range(len(dataset))])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.tensor(dataset.labels), dataset.classes
