"""Fingerprints of a model and of a dataset: is this the model, and the data, that was mined?

Records point at dataset indices and were measured with one model's weights, so a result
(or a checkpoint) used with other data or another model gives wrong patches silently, or
fails deep inside indexing. These fingerprints are cheap enough to take on every call:

* :func:`model_fingerprint` hashes every parameter's and buffer's name, shape and sums.
* :func:`dataset_fingerprint` reads a handful of images at fixed indices (first, quarters,
  last), and records the length, an exact hash of those images, a 4x4 thumbnail of each,
  and for the package's own folder and zip datasets a hash of the file names.

Two dataset fingerprints match (:func:`dataset_mismatch`) when the lengths, the file
names and the images' shapes are equal and the images are equal, or their thumbnails
agree within 5% of the thumbnails' range: another JPEG decoder or resize implementation
still matches, other images, another order at the sampled indices, another
normalization do not. It is a cheap check, not a proof: data that differs only away from
the sampled indices passes (``MiningResult.verify`` re-runs every record).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from . import _datasource
from .data import ImageFiles, ZipImages

__all__ = ["dataset_fingerprint", "dataset_mismatch", "model_fingerprint", "sample_indices"]

#: Bumped if the sampled indices or the thumbnail change; fingerprints of another version
#: are compared by length only.
FINGERPRINT_VERSION = 1
_THUMBNAIL = 4
_TOLERANCE = 0.05  # of the recorded thumbnails' range


def model_fingerprint(model: nn.Module) -> str:
    """A short hash of the model's parameter and buffer names, shapes and values.

    Results and checkpoints carry it, so that merging, resuming, projecting or diagnosing
    with another model (or other weights) is refused. Sums are taken on the CPU, so the
    model's device does not change the fingerprint.

    Args:
        model: the model.

    Returns:
        16 hexadecimal digits.

    Example:
        >>> model_fingerprint(torch.nn.Linear(2, 2)) == model_fingerprint(torch.nn.Linear(2, 2))  # doctest: +SKIP
        False
    """
    digest = hashlib.sha1()
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        flat = tensor.detach().to("cpu", torch.float64).flatten()
        if tensor.is_floating_point() or tensor.is_complex():
            digest.update(f"{float(flat.sum()):.12e}|{float(flat.abs().sum()):.12e}".encode())
        else:
            digest.update(str(int(flat.sum())).encode())
    return digest.hexdigest()[:16]


def sample_indices(length: int) -> list[int]:
    """The indices a fingerprint reads: first, quarters, last (fewer for tiny datasets)."""
    if length <= 0:
        return []
    return sorted({0, length // 4, length // 2, (3 * length) // 4, length - 1})


def dataset_fingerprint(data: Any) -> dict[str, Any]:
    """A fingerprint of ``data`` (a tensor, Dataset or DataLoader) from a few of its images.

    Reads five images at most (see :func:`sample_indices`), so its cost is that of
    decoding five images, whatever the dataset's size.

    Args:
        data: what ``mine_topk`` takes as ``data``.

    Returns:
        A dict of plain values: ``version``, ``length``, ``indices``, ``shapes`` (each
        sampled image's shape, None where it could not be read), ``digest`` (sha256 of the
        sampled images' bytes), ``names`` (sha256 of the file names of an
        :class:`~captum_deconvviz.data.ImageFiles` or
        :class:`~captum_deconvviz.data.ZipImages`, else None) and ``thumbnails`` (each
        sampled image average-pooled to 4x4 per channel, as a list of floats).

    Example:
        >>> dataset_fingerprint(torch.zeros(10, 3, 8, 8))["indices"]
        [0, 2, 5, 7, 9]
    """
    length = _datasource.length(data)
    indices = sample_indices(length)
    digest = hashlib.sha256()
    shapes: list[list[int] | None] = []
    thumbnails: list[list[float] | None] = []
    for index in indices:
        try:
            image = _datasource.fetch(data, [index])[0].detach().cpu()
        except Exception as err:
            digest.update(f"unreadable {index} {type(err).__name__}".encode())
            shapes.append(None)
            thumbnails.append(None)
            continue
        digest.update(f"{index} {image.dtype} {tuple(image.shape)}".encode())
        digest.update(image.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        shapes.append(list(image.shape))
        thumbnails.append(_thumbnail(image))
    return {
        "version": FINGERPRINT_VERSION,
        "length": length,
        "indices": indices,
        "shapes": shapes,
        "digest": digest.hexdigest(),
        "names": _names_digest(data),
        "thumbnails": thumbnails,
    }


def _thumbnail(image: Tensor) -> list[float]:
    """The image average-pooled to at most 4x4 per channel (a vector: 16 bins)."""
    values = image.to(torch.float64)
    if values.dim() >= 3:
        planes = values.reshape(-1, *values.shape[-2:])
        size = (min(_THUMBNAIL, planes.shape[-2]), min(_THUMBNAIL, planes.shape[-1]))
        return [float(v) for v in F.adaptive_avg_pool2d(planes, size).flatten()]
    flat = values.reshape(1, 1, -1)
    bins = min(_THUMBNAIL * _THUMBNAIL, flat.shape[-1])
    return [float(v) for v in F.adaptive_avg_pool1d(flat, max(bins, 1)).flatten()] if flat.numel() else []


def _names_digest(data: Any) -> str | None:
    owner = data.dataset if isinstance(data, DataLoader) else data
    if not isinstance(owner, (ImageFiles, ZipImages)):
        return None
    joined = "\n".join(name.replace("\\", "/") for name in owner.names)
    return hashlib.sha256(joined.encode("utf-8", "surrogatepass")).hexdigest()


def dataset_mismatch(recorded: Any, current: dict[str, Any]) -> str | None:
    """Why ``current`` is not the data ``recorded`` describes, or None if it matches.

    Args:
        recorded: a fingerprint saved with a result or checkpoint.
        current: :func:`dataset_fingerprint` of the data given now.

    Returns:
        None when they match (see the module documentation for what that means), else a
        reason that fits after "the data ...".

    Raises:
        ValueError: either is not a fingerprint.
    """
    try:
        return _mismatch(recorded, current)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"a data fingerprint is malformed ({type(err).__name__}: {err}): {recorded!r:.200}") from None


def _mismatch(recorded: dict[str, Any], current: dict[str, Any]) -> str | None:
    if recorded["length"] != current["length"]:
        return f"has {current['length']} images, but {recorded['length']} were mined"
    if recorded.get("version") != current.get("version"):
        return None  # another sampling plan: only the length can be compared
    if recorded.get("names") is not None and current.get("names") is not None and recorded["names"] != current["names"]:
        return "holds other file names (or another order) than the mined data"
    if recorded["digest"] == current["digest"]:
        return None
    old_shapes, old_thumbs = list(recorded["shapes"]), list(recorded["thumbnails"])
    shapes, thumbs = list(current["shapes"]), list(current["thumbnails"])
    if list(recorded["indices"]) != list(current["indices"]) or not (
        len(old_shapes) == len(shapes) == len(old_thumbs) == len(thumbs) == len(current["indices"])
    ):
        raise ValueError("its sampled images do not match its indices")
    tolerance = _TOLERANCE * _spread(old_thumbs)
    for index, shape, old_shape, thumb, old_thumb in zip(
        current["indices"], shapes, old_shapes, thumbs, old_thumbs, strict=True
    ):
        if shape is None or old_shape is None:
            continue  # unreadable when one fingerprint was taken: nothing to compare
        if shape != old_shape:
            return f"gives image {index} of shape {shape}, but the mined image {index} had shape {old_shape}"
        if len(thumb) != len(old_thumb):
            continue
        if any(not _close(float(a), float(b), tolerance) for a, b in zip(thumb, old_thumb, strict=True)):
            return f"gives another image {index} than the mined data (its pixels differ)"
    return None


def _spread(thumbnails: list[Any]) -> float:
    values = [v for thumb in thumbnails if thumb for v in thumb if math.isfinite(v)]
    return max(max(values) - min(values), 1e-6) if values else 1e-6


def _close(a: float, b: float, tolerance: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or abs(a - b) <= tolerance
