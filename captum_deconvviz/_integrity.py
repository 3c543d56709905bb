"""Files that are whole or refused: atomic saves, checksums, and checks of saved top-k states.

Checkpoints and results are ``torch.save`` files of plain values and tensors. ``torch.load``
does not check the zip members' CRCs, so one flipped bit in a tensor loads as a wrong value.
Each file therefore carries ``"checksum"``: ``"sha256:<hex>"`` of a canonical encoding of
everything else in it (every key and value, every tensor's dtype, shape and bytes, in a
fixed order). A file whose checksum does not match, that does not unpickle, or whose
contents contradict each other (see :func:`check_state`) is refused with a ValueError
naming the file. Files written before the checksum existed have no such key: they are
read with the consistency checks only.

:func:`atomic_save` writes ``.NAME.tmp-PID@HOST`` next to the file and renames it over
the file, so a killed process leaves the previous file whole; the temporary files such a
kill leaves behind are removed by the next save to the same path (see
:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ._topk import TopKState

__all__ = [
    "CHECKSUM_KEY",
    "add_checksum",
    "atomic_save",
    "check_state",
    "payload_checksum",
    "read_payload",
    "remove_stale_temporaries",
]

CHECKSUM_KEY = "checksum"
#: A temporary file not modified for this long is stale even if its process id is alive
#: (ids are reused) or cannot be checked (another host, Windows).
STALE_AFTER_S = 3600.0
_HOST = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "host"
_TEMP = re.compile(r"\.tmp-(\d+)(?:@(.+))?$")
_STATE_TENSORS = ("values", "key", "maximum", "total", "positions", "active_images", "nan_count")


# ---- checksums --------------------------------------------------------------------------


def payload_checksum(payload: dict[str, Any]) -> str:
    """``"sha256:<hex>"`` of every entry of ``payload`` but its checksum, in a canonical encoding.

    Example:
        >>> payload_checksum({"a": torch.zeros(2)}) == payload_checksum({"a": torch.zeros(2)})
        True
    """
    digest = hashlib.sha256()
    _feed(digest, {key: value for key, value in payload.items() if key != CHECKSUM_KEY})
    return "sha256:" + digest.hexdigest()


def add_checksum(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with its checksum added (a new dict; ``payload`` is not changed)."""
    return {**payload, CHECKSUM_KEY: payload_checksum(payload)}


def _feed(digest: Any, value: Any) -> None:
    """Hash ``value`` unambiguously: a type tag and a length before every variable-size part."""

    def chunk(tag: bytes, data: bytes) -> None:
        digest.update(tag + struct.pack("<Q", len(data)) + data)

    if isinstance(value, Tensor):
        tensor = value.detach().cpu().contiguous()
        chunk(b"T", f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        chunk(b"B", tensor.view(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        chunk(b"D", str(len(value)).encode())
        for key in sorted(value, key=lambda k: (type(k).__name__, repr(k))):
            _feed(digest, key)
            _feed(digest, value[key])
    elif isinstance(value, (list, tuple)):  # a tuple saved may load as either
        chunk(b"L", str(len(value)).encode())
        for item in value:
            _feed(digest, item)
    elif isinstance(value, str):
        chunk(b"S", value.encode("utf-8", "surrogatepass"))
    elif isinstance(value, bool) or value is None:
        chunk(b"C", repr(value).encode())
    elif isinstance(value, int):
        chunk(b"I", str(value).encode())
    elif isinstance(value, float):
        chunk(b"F", value.hex().encode())
    else:
        chunk(b"R", f"{type(value).__name__}:{value!r}".encode())


# ---- reading ---------------------------------------------------------------------------


def read_payload(path: Path, file_format: str, what: str, keys: set[str], optional: set[str]) -> dict[str, Any]:
    """The checked contents of a file written by :func:`atomic_save` with :func:`add_checksum`.

    Args:
        path: the file.
        file_format: the ``"format"`` string it must hold.
        what: what the file should be, for messages ("mining checkpoint").
        keys: the keys it must have (besides ``"format"``).
        optional: keys it may have (``"checksum"`` always may).

    Returns:
        The payload, its checksum verified if it has one.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file does not unpickle (truncated, garbage), is not a ``what``,
            misses keys or has unknown ones, or its checksum does not match.
    """
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"{path} cannot be read: it is not a {what}, or a truncated or corrupt one "
            f"({type(err).__name__}: {' '.join(str(err).split())[:200]})"  # one line, whatever torch says
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != file_format:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path} is not a {what} (format {file_format!r} expected, found {found!r:.80})")
    missing = sorted(keys - set(payload))
    unknown = sorted(set(payload) - keys - optional - {"format", CHECKSUM_KEY}, key=repr)
    if missing or unknown:
        raise ValueError(
            f"{path} is a corrupt {what}: "
            + "; ".join(
                part
                for part in (f"missing {missing}" if missing else "", f"unknown keys {unknown}" if unknown else "")
                if part
            )
        )
    recorded = payload.get(CHECKSUM_KEY)
    if recorded is not None and recorded != payload_checksum(payload):
        raise ValueError(f"{path} is a corrupt {what}: its checksum does not match its contents")
    return payload


# ---- consistency of a top-k state ------------------------------------------------------


def check_state(
    tensors: Any,
    where: str,
    *,
    k: int,
    height: Any,
    width: Any,
    images: Any,
    expected_images: int,
    index_ok: Callable[[Tensor], Tensor],
) -> None:
    """Check a saved top-k state (``TopKState.tensors()`` and its sizes) against itself and its run.

    Args:
        tensors: the state's tensors by name.
        where: the state's place in the file, for messages ("layer 'features.1'").
        k: the records per channel the run kept.
        height, width: the layer's map size, as saved.
        images: the images folded, as saved.
        expected_images: the images the run had folded when it saved.
        index_ok: ``index_ok(indices) -> BoolTensor``: which dataset indices the state may
            hold records of (those mined, within the dataset, of this shard).

    Raises:
        ValueError: the first contradiction, naming ``where`` and the tensor.
    """
    for name, value in (("height", height), ("width", width), ("images", images)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "images" else 1):
            raise ValueError(
                f"{where}: {name} must be a {'non-negative' if name == 'images' else 'positive'} int, got {value!r:.80}"
            )
    if images != expected_images:
        raise ValueError(f"{where}: the state holds {images} images, but the run had mined {expected_images}")
    if not isinstance(tensors, dict) or set(tensors) != set(_STATE_TENSORS):
        got = sorted(tensors, key=repr) if isinstance(tensors, dict) else type(tensors).__name__
        raise ValueError(f"{where}: the state's tensors must be {list(_STATE_TENSORS)}, got {got}")
    for name in _STATE_TENSORS:
        if not isinstance(tensors[name], Tensor):
            raise ValueError(f"{where}: {name} is a {type(tensors[name]).__name__}, not a tensor")
    values, key = tensors["values"], tensors["key"]
    if values.dim() != 2 or values.shape[1] != k or not values.is_floating_point():
        raise ValueError(f"{where}: values must be a float tensor [channels, k={k}], got {_describe(values)}")
    channels = values.shape[0]
    expected = {"key": (channels, k), "maximum": (channels,), "positions": (channels,)}
    expected.update({"active_images": (channels,), "nan_count": (channels,)})
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(
                f"{where}: {name} must have shape {list(shape)} like values, got {_describe(tensors[name])}"
            )
    total, buckets = tensors["total"], TopKState.empty(1, 1, 1, 1, torch.device("cpu")).total.shape[1]
    if tuple(total.shape) != (channels, buckets) or total.dtype != torch.int64:
        raise ValueError(f"{where}: total must be int64 [{channels}, {buckets}], got {_describe(total)}")
    if not tensors["maximum"].is_floating_point():
        raise ValueError(f"{where}: maximum must be a float tensor, got {_describe(tensors['maximum'])}")
    for name in ("key", "positions", "active_images", "nan_count"):
        if tensors[name].dtype != torch.int64:
            raise ValueError(f"{where}: {name} must be int64, got {_describe(tensors[name])}")
    _check_records(values, key, tensors["maximum"], where, height * width, index_ok)
    counts, nans, active = tensors["positions"], tensors["nan_count"], tensors["active_images"]
    if bool((counts < 0).any() or (nans < 0).any()) or not torch.equal(
        counts + nans, torch.full_like(counts, images * height * width)
    ):
        raise ValueError(
            f"{where}: positions + nan_count must count every activation ({images} images x {height}x{width})"
        )
    if bool((active < 0).any() or (active > images).any()):
        raise ValueError(f"{where}: active_images must lie in [0, {images}]")


def _check_records(
    values: Tensor, key: Tensor, maximum: Tensor, where: str, plane: int, index_ok: Callable[[Tensor], Tensor]
) -> None:
    empty = key < 0
    if bool((key < -1).any()) or not torch.equal(empty, values == float("-inf")):
        raise ValueError(f"{where}: records and empty slots disagree (key -1 exactly where value is -inf)")
    if bool(torch.isnan(values).any()):
        raise ValueError(f"{where}: values hold NaN")
    if values.shape[1] > 1:
        later_filled = ~empty[:, 1:] & empty[:, :-1]
        ahead, behind = values[:, :-1], values[:, 1:]
        tie_order = (ahead == behind) & ~empty[:, 1:] & (key[:, :-1] >= key[:, 1:])
        if bool(later_filled.any() or (ahead < behind).any() or tie_order.any()):
            raise ValueError(f"{where}: records are not ranked best first (value, then index, y, x)")
    filled = key[~empty]
    if filled.numel():
        indices = torch.div(filled, plane, rounding_mode="floor")
        bad = ~index_ok(indices)
        if bool(bad.any()):
            raise ValueError(f"{where}: records refer to image {int(indices[bad][0])}, which the run did not mine")
        # maximum keeps the activations' dtype, values float32: compare both rounded to float32.
        if bool((~empty[:, 0] & (values[:, 0] > maximum.to(values.dtype))).any()):
            raise ValueError(f"{where}: a record's value exceeds its channel's maximum")


def _describe(tensor: Tensor) -> str:
    return f"{str(tensor.dtype).replace('torch.', '')} {list(tensor.shape)}"


# ---- writing ---------------------------------------------------------------------------


def atomic_save(payload: Any, path: Path) -> None:
    """``torch.save`` to a temporary file next to ``path``, then rename it over ``path``.

    A killed process leaves ``path`` as it was (or absent) and at worst a temporary file
    ``.NAME.tmp-PID@HOST``, which the next save to ``path`` removes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}@{_HOST}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_temporaries(path: Path, now: float | None = None) -> list[Path]:
    """Delete the temporary files that killed saves to ``path`` left; returns those deleted.

    A temporary file is stale when the process that wrote it is gone: its id (in its name)
    is not a live process on this host. A file of a live process id, of another host (a
    shared file system) or on Windows (where ids cannot be probed safely) counts as stale
    only once it has not been modified for :data:`STALE_AFTER_S`, so a concurrent writer's
    file is never taken from under it.
    """
    now = time.time() if now is None else now
    removed = []
    for candidate in path.parent.glob(f".{_glob_escape(path.name)}.tmp-*"):
        match = _TEMP.search(candidate.name)
        if match is None or candidate.name[: match.start()] != f".{path.name}":
            continue
        pid, host = int(match.group(1)), match.group(2)
        if pid == os.getpid() and host in (None, _HOST):
            continue  # this process's own file: its save is in flight (another thread) or cleans up itself
        try:
            age = now - candidate.stat().st_mtime
        except FileNotFoundError:
            continue
        local = host in (None, _HOST) and os.name == "posix"
        if (local and not _alive(pid)) or age > STALE_AFTER_S:
            try:
                candidate.unlink()
                removed.append(candidate)
            except FileNotFoundError:
                pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists (POSIX only)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # exists, another user's (or an id we cannot probe: keep the file)
    return True


def _glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)
