"""Scalar argument checks shared by every entry point: ints, bools, floats, choices, devices.

Each check names the argument, shows the value and says what was expected, so a wrong
call fails on its first line, before any model work or I/O. ``bool`` is a subclass of
``int`` in Python; here it is never accepted where a number is expected (``k=True`` is a
mistake, not ``k=1``), and only real booleans are accepted where a flag is expected
(``verify="no"`` is truthy, so taking it would silently do the opposite).
"""

from __future__ import annotations

import math
import numbers
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["check_bool", "check_choice", "check_device", "check_float", "check_int", "check_output_file", "show"]


def check_int(
    value: Any, argname: str, minimum: int | None = None, maximum: int | None = None, allow_none: bool = False
) -> int | None:
    """``value`` as an ``int`` if it is an integer within ``[minimum, maximum]``, else raise.

    Args:
        value: the argument as given (numpy and 0-d tensor integers are accepted).
        argname: its name, for the message.
        minimum: the smallest value allowed, or None.
        maximum: the largest value allowed, or None.
        allow_none: whether None is allowed (and returned).

    Returns:
        The value as a Python int (None where allowed and given).

    Raises:
        TypeError: not an integer (a bool, a float, a string...).
        ValueError: out of range.

    Example:
        >>> check_int(9, "k", minimum=1)
        9
    """
    if value is None and allow_none:
        return None
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        expected = "an integer" + (" or None" if allow_none else "")
        raise TypeError(f"{argname} must be {expected}, got {show(value)} ({type(value).__name__})")
    number = int(value)
    if minimum is not None and maximum is not None and not minimum <= number <= maximum:
        raise ValueError(f"{argname} must be in [{minimum}, {maximum}], got {number}")
    if minimum is not None and number < minimum:
        raise ValueError(f"{argname} must be >= {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise ValueError(f"{argname} must be <= {maximum}, got {number}")
    return number


def check_bool(value: Any, argname: str) -> bool:
    """``value`` if it is a bool (Python or numpy), else raise ``TypeError``.

    Example:
        >>> check_bool(True, "verify")
        True
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{argname} must be True or False, got {show(value)} ({type(value).__name__})")
    return bool(value)


def check_float(
    value: Any,
    argname: str,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    above: float | None = None,
    below: float | None = None,
) -> float:
    """``value`` as a finite ``float`` within the given bounds, else raise.

    Args:
        value: the argument as given (ints and numpy numbers are accepted; bools are not).
        argname: its name, for the message.
        minimum, maximum: inclusive bounds, or None.
        above, below: exclusive bounds, or None.

    Returns:
        The value as a Python float.

    Example:
        >>> check_float(0.5, "nms_threshold", above=0.0, maximum=1.0)
        0.5
    """
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{argname} must be a number, got {show(value)} ({type(value).__name__})")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{argname} must be a finite number, got {number}")
    for bound, ok, word in (
        (minimum, lambda b: number >= b, ">="),
        (maximum, lambda b: number <= b, "<="),
        (above, lambda b: number > b, ">"),
        (below, lambda b: number < b, "<"),
    ):
        if bound is not None and not ok(bound):
            raise ValueError(f"{argname} must be {word} {bound:g}, got {number:g}")
    return number


def check_choice(value: Any, argname: str, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices``, else a ``ValueError`` listing them.

    Example:
        >>> check_choice("image", "unique", ("image", "none", "nms"))
        'image'
    """
    if not isinstance(value, (str, int, float, type(None))) or isinstance(value, bool) or value not in choices:
        raise ValueError(f"{argname} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_device(device: Any, argname: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine, else raise.

    Accepts what ``torch.device`` accepts (``"cpu"``, ``"cuda:1"``, a ``torch.device``),
    refuses the ``meta`` device (it holds no values) and accelerators this machine lacks,
    with the devices it has.

    Example:
        >>> check_device("cpu")
        device(type='cpu')
    """
    if isinstance(device, bool) or not isinstance(device, (str, torch.device, int)):
        raise TypeError(f"{argname} must be a device such as 'cpu' or 'cuda:0', got {type(device).__name__}")
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{argname}={device!r} is not a device; use e.g. 'cpu', 'cuda' or 'cuda:0'") from None
    if parsed.type == "meta":
        raise ValueError(f"{argname}={device!r}: the meta device holds shapes, not values; use 'cpu' or 'cuda'")
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"{argname}={device!r}, but CUDA is not available on this machine; use 'cpu'")
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"{argname}={device!r}, but this machine has {count} CUDA device(s): cuda:0..{count - 1}")
    elif parsed.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"{argname}={device!r}, but MPS is not available on this machine; use 'cpu'")
    return parsed


def show(value: Any, limit: int = 80) -> str:
    """A one-line, bounded description of ``value`` for error messages.

    Small tensors show their values, larger ones their shape and dtype; long reprs are cut.

    Example:
        >>> show(torch.zeros(2, 2, dtype=torch.long))
        'tensor([[0, 0], [0, 0]])'
    """
    if isinstance(value, torch.Tensor):
        if value.numel() <= 8 and value.device.type != "meta":
            text = f"tensor({value.tolist()})"
        else:
            text = f"tensor of shape {list(value.shape)} ({str(value.dtype).removeprefix('torch.')})"
    else:
        text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_output_file(path: Any, argname: str) -> Path:
    """``path`` as a ``Path`` to a file that can be written, else a ``ValueError``/``TypeError``.

    Checked before any work: not a folder, no file where a parent folder should be, and the
    nearest existing folder writable, tried with a real temporary file (``os.access`` says
    yes to root on read-only places such as ``/proc``). Missing parent folders are fine:
    writers create them.

    Example:
        >>> check_output_file("out/result.pt", "path").name
        'result.pt'
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{argname} must be a file path, got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{argname}={str(path)!r} is a folder; give a file path such as {str(path / 'result.pt')!r}")
    parent = next((p for p in (path.parent, *path.parent.parents) if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"{argname}={str(path)!r}: {str(parent)!r} is a file, not a folder")
    if parent is not None and not _can_create_in(parent):
        raise ValueError(f"{argname}={str(path)!r}: the folder {str(parent)!r} is not writable")
    return path


def _can_create_in(folder: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False
