"""Image datasets for mining and reports: folders, zip archives, CIFAR-10's JPEG zips.

Every file is decoded when the dataset is built, and one that does not decode (truncated,
corrupt, empty, not an image, unreadable) is skipped and counted, never a crash: records
refer to dataset indices, so every index a dataset exposes must decode later.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageFiles",
    "UnreadableImageError",
    "ZipImages",
    "find_cifar10",
    "load_cifar10",
    "rgb_image",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class UnreadableImageError(OSError):
    """An image that decoded when its dataset was built no longer does (changed on disk since).

    Args:
        message: what happened, naming the image and its index.
        filename: the file (for a zip member, the archive), as on every ``OSError`` about a file.
    """

    def __init__(self, message: str, filename: str | None = None) -> None:
        super().__init__(message)
        self.filename = filename

    def __str__(self) -> str:  # OSError's own would print "[Errno None] None: 'filename'"
        return str(self.args[0]) if self.args else ""


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be None or an int >= 0, got {limit!r}")


def _check_transform(transform: object) -> None:
    if transform is not None and not callable(transform):
        raise TypeError(f"transform must be None or a callable on PIL images, got {type(transform).__name__}")


def _label_of(relative: Path) -> str | None:
    """ImageFolder layout: the parent folder names the class; flat folders have none."""
    return relative.parts[-2] if len(relative.parts) >= 2 else None


@contextmanager
def _truncated_images_refused() -> Iterator[None]:
    """PIL's global ``ImageFile.LOAD_TRUNCATED_IMAGES`` off inside the block, then as found.

    A user or another library may have set it to True. PIL then fills a truncated file's
    missing rows with grey, and skips the checksums of a PNG's ancillary chunks: silently
    wrong pixels instead of an error. The flag is global (another thread decoding during
    the block sees it off too), so the block is kept to one file.
    """
    allowed = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = allowed


def _png_damage(data: bytes) -> str | None:
    """What is wrong with a PNG's chunks, or ``None``: every CRC, up to a complete IEND.

    PIL's decoder checks no CRC of the pixel data (IDAT), so a damaged file whose zlib
    stream still inflates would decode to wrong pixels without this.
    """
    position = len(_PNG_SIGNATURE)
    while position + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        end = position + 12 + length
        if end > len(data):
            return f"truncated inside its {kind!r} chunk"
        if zlib.crc32(data[position + 4 : end - 4]) != int.from_bytes(data[end - 4 : end], "big"):
            return f"bad CRC in its {kind!r} chunk"
        if kind == b"IEND":
            return None
        position = end
    return "truncated: no IEND chunk at the end"


def _decode_problem(data: bytes) -> str | None:
    """Why ``data`` is not an image that decodes, or ``None``: decided by decoding it.

    ``Image.verify()`` reads headers only and passes a truncated JPEG. A JPEG is decoded
    at 1/8 scale (``draft``): libjpeg still reads the whole entropy-coded stream, so a
    truncation is still found (tests/test_bad_images.py checks every third cut, and damaged
    bytes, against a full decode); only the inverse DCT and the colour conversion get cheaper.
    """
    if not data:
        return "empty file (0 bytes)"
    if data.startswith(_PNG_SIGNATURE) and (damage := _png_damage(data)) is not None:
        return damage
    try:
        with _truncated_images_refused(), Image.open(io.BytesIO(data)) as image:
            image.draft(None, (1, 1))
            image.load()
            if 0 in image.size:
                return "the image has no pixels"
            rgb_image(image.crop((0, 0, 1, 1)))  # a mode PIL cannot convert fails here, not later
    # Any error while decoding a file says only that this file is bad: PIL's plugins raise
    # OSError, SyntaxError, ValueError, EOFError, struct.error, DecompressionBombError...
    except Exception as err:
        return _reason(err)
    return None


def _reason(err: Exception) -> str:
    """One line on why PIL failed (its "cannot identify" message names a BytesIO object)."""
    if isinstance(err, UnidentifiedImageError):
        return "not an image PIL can read"
    return f"{type(err).__name__}: {err}"


#: PIL modes of 16-bit grey pixels (PNG, TIFF).
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def rgb_image(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB, its grey levels scaled from the range its mode holds.

    PIL's ``convert("RGB")`` clips wider grey values at 255: a 16-bit PNG (mode ``I;16``,
    0-65535) came out all white. Here 16-bit grey is scaled by 255/65535; 32-bit integer grey
    (``I``) the same way when it holds values above 255 (a 16-bit file opened as ``I``), as is
    otherwise; float grey (``F``) by 255 when its values lie in [0, 1]. Other modes (1, L, P,
    RGBA, CMYK, YCbCr, ...) are PIL's own conversion.

    Args:
        image: a PIL image of any mode.

    Returns:
        The RGB image.

    Example:
        >>> import numpy as np
        >>> sixteen = Image.fromarray(np.full((2, 2), 32896, dtype=np.uint16))  # mode I;16, half of 65535
        >>> rgb_image(sixteen).getpixel((0, 0))
        (128, 128, 128)
    """
    if image.mode in _SIXTEEN_BIT or image.mode in ("I", "F"):
        grey = np.asarray(image, dtype=np.float64)
        finite = grey[np.isfinite(grey)]
        top = float(finite.max()) if finite.size else 0.0
        if image.mode in _SIXTEEN_BIT or (image.mode == "I" and top > 255):
            grey = grey * (255.0 / 65535.0)
        elif image.mode == "F" and top <= 1.0:
            grey = grey * 255.0
        image = Image.fromarray(np.clip(np.round(np.nan_to_num(grey)), 0, 255).astype(np.uint8), "L")
    return image.convert("RGB")


def _decode_rgb(data: bytes) -> Image.Image:
    """The full-size RGB image, refusing truncated data whatever PIL's global flag says."""
    with _truncated_images_refused(), Image.open(io.BytesIO(data)) as image:
        return rgb_image(image)


class _Labelled(Dataset):
    """Shared indexing: items are ``(image, label)``; ``label`` is -1 when unknown."""

    names: list[str]
    labels: list[int]
    classes: list[str]
    skipped: list[str]
    skip_reasons: dict[str, str]
    transform: Callable[[Image.Image], Any] | None

    def __len__(self) -> int:
        return len(self.names)

    def _read(self, index: int) -> bytes:
        raise NotImplementedError

    def _where(self, index: int) -> str:
        raise NotImplementedError

    def _file(self, index: int) -> str:
        raise NotImplementedError

    def _rgb(self, index: int) -> Image.Image:
        """Image ``index`` decoded; a clear error naming it if it no longer decodes."""
        where = self._where(index)  # an index out of range raises IndexError here, unwrapped
        try:
            return _decode_rgb(self._read(index))
        except Exception as err:  # any failure: the file changed since the scan decoded it
            message = (
                f"image {index} ({where}) no longer decodes: {_reason(err)}. It decoded when "
                "the dataset was built, so it changed since; build the dataset again"
            )
            raise UnreadableImageError(message, self._file(index)) from None

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self._rgb(index)
        return (self.transform(image) if self.transform else image), self.labels[index]

    def _skip(self, name: str, reason: str) -> None:
        self.skipped.append(name)
        self.skip_reasons[name] = reason

    def _index_labels(self, label_names: list[str | None]) -> None:
        self.classes = sorted({name for name in label_names if name is not None})
        lookup = {name: i for i, name in enumerate(self.classes)}
        self.labels = [lookup[name] if name is not None else -1 for name in label_names]


def _read_problem(path: Path) -> str | None:
    """Why the file at ``path`` cannot be read and decoded, or ``None``."""
    try:
        data = path.read_bytes()
    except OSError as err:  # unreadable (permissions), a dangling link, gone since the listing
        return f"cannot be read: {err.strerror or err}"
    return _decode_problem(data)


def _is_candidate(path: Path) -> bool:
    """A file with an image suffix; a dangling link counts too, so that it is reported."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return False
    return path.is_file() or (path.is_symlink() and not path.exists())


class ImageFiles(_Labelled):
    """Every image under ``root`` that decodes, in sorted path order.

    An ImageFolder layout (``root/<class>/<file>``) gives labels; a flat folder gives
    label -1. Each file is decoded once when the dataset is built (JPEGs at 1/8 scale,
    which still reads all their data), so every index decodes later. A file that does not
    (truncated, corrupt, empty, not an image, unreadable) is skipped: :attr:`skipped`
    lists the skipped names and :attr:`skip_reasons` says why, by name. Truncated files are
    refused even when PIL's ``ImageFile.LOAD_TRUNCATED_IMAGES`` is set (the flag is left
    as it was). A file that changes after that raises :class:`UnreadableImageError`,
    naming it, when its item is read.

    Args:
        root: the folder.
        transform: applied to each RGB PIL image.
        limit: keep only the first ``limit`` images that decode.

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
        self.names, self.skipped, self.skip_reasons = [], [], {}
        for path in sorted(p for p in self.root.rglob("*") if _is_candidate(p)):
            if limit is not None and len(self.names) >= limit:
                break
            name = str(path.relative_to(self.root))
            problem = _read_problem(path)
            if problem is None:
                self.names.append(name)
            else:
                self._skip(name, problem)
        self._index_labels([_label_of(Path(name)) for name in self.names])

    def _read(self, index: int) -> bytes:
        return (self.root / self.names[index]).read_bytes()

    def _where(self, index: int) -> str:
        return str(self.root / self.names[index])

    def _file(self, index: int) -> str:
        return self._where(index)


class ZipImages(_Labelled):
    """Every image in a zip archive that decodes (e.g. CIFAR-10's ``test.zip``), sorted by name.

    Each member is read (its CRC checked by :mod:`zipfile`) and decoded when the dataset
    is built; one that fails is skipped, as in :class:`ImageFiles`: :attr:`skipped` and
    :attr:`skip_reasons` name it.

    Args:
        path: the archive.
        transform: applied to each RGB PIL image.
        limit: keep only the first ``limit`` images (before checking them).
        prefix: only members under this folder of the archive.
        interleave: order members round-robin over their folders (classes), so that a
            ``limit`` keeps every class: ``a/0, b/0, ..., a/1, b/1, ...``.

    Raises:
        ValueError: ``path`` is not a file, or not a zip archive.
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
        self.names, self.skipped, self.skip_reasons = [], [], {}
        self._bytes: list[bytes] = []
        try:
            archive = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as err:
            raise ValueError(f"archive {str(self.path)!r} is not a readable zip archive: {err}") from None
        with archive:
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
            for name in members[:limit]:
                try:
                    data = archive.read(name)
                except Exception as err:  # a bad CRC, an unknown compression, encryption...
                    self._skip(name, f"cannot be read from the archive: {type(err).__name__}: {err}")
                    continue
                problem = _decode_problem(data)
                if problem is None:
                    self.names.append(name)
                    self._bytes.append(data)
                else:
                    self._skip(name, problem)
        self._index_labels([_label_of(Path(name)) for name in self.names])

    def _read(self, index: int) -> bytes:
        return self._bytes[index]

    def _where(self, index: int) -> str:
        return f"{self.names[index]!r} in {str(self.path)!r}"

    def _file(self, index: int) -> str:
        return str(self.path)


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
    images = np.stack([np.asarray(dataset._rgb(i)) for i in range(len(dataset))])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.tensor(dataset.labels), dataset.classes
