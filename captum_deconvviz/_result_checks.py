"""Is this the data, and the model, a result was mined with? Checked once per object.

A :class:`~captum_deconvviz.MiningResult`'s records are dataset indices and values of
one model, so :meth:`~captum_deconvviz.MiningResult.patches`, ``projections`` and
``verify`` refuse other data and ``projections`` another model before any work.
Notebooks and figures call them once per channel, so each result keeps an
:class:`InputChecks` that remembers the objects that passed (weakly) with their state
from ``_result_cache`` (a dataset's identity and length, a tensor's version, a model's
parameters and buffers): a check costs a hash only for a new or changed object.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from typing import Any

from torch import nn

from . import _datasource
from ._fingerprint import dataset_fingerprint, dataset_mismatch, model_fingerprint
from ._forward import check_model
from ._result_cache import data_state, model_state

__all__ = ["InputChecks"]

#: How many data objects (and models) a result remembers as checked.
_KEPT = 4


class InputChecks:
    """The data and model checks of one result, with the objects that already passed."""

    def __init__(self) -> None:
        self._data: list[tuple[Any, Any]] = []
        self._models: list[tuple[Any, Any]] = []
        self._warned_unfingerprinted = False

    def require_data(
        self,
        data: Any,
        argname: str,
        *,
        length: int | None,
        recorded: Any,
        last_index: Callable[[], int],
        stacklevel: int,
    ) -> None:
        """Raise unless ``data`` is the mined data.

        Args:
            data: what the caller passed.
            argname: its name, for messages.
            length: the mined dataset's length (None if the result does not know it).
            recorded: the mined data's fingerprint (None for results of older releases:
                then only the length is checked, and a warning says so once).
            last_index: the largest dataset index of any record.
            stacklevel: of warnings, counted from this method (the public method's caller).

        Raises:
            ValueError: another length, records past its end, or other images.
        """
        _datasource.check_data(data, argname)
        owner, state = data_state(data)
        if _seen(self._data, owner, state):
            return
        total = _datasource.length(data)
        if length is not None and total != length:
            raise ValueError(
                f"{argname} has {total} images, but this result was mined on {length}: pass the data that was mined"
            )
        last = last_index()
        if last >= total:
            raise ValueError(f"{argname} has {total} images, but the records refer to image {last}")
        if recorded is None:
            if not self._warned_unfingerprinted:
                self._warned_unfingerprinted = True
                warnings.warn(
                    f"this result was saved before results recorded a fingerprint of their data: only the length "
                    f"of {argname} ({total} images) can be checked against the mined data",
                    UserWarning,
                    stacklevel=stacklevel,
                )
        else:
            current = dataset_fingerprint(data)
            reason = dataset_mismatch(recorded, current)
            if reason is not None:
                if dataset_fingerprint(data)["digest"] == current["digest"]:
                    raise ValueError(
                        f"{argname} is not the data this result was mined on: it {reason}; pass the mined data "
                        "(the same images, in the same order, with the same transform)"
                    )
                warnings.warn(
                    f"{argname} gives other images each time it is read (a random transform?), so it cannot be "
                    "checked against the mined data, and crops may not show what was mined",
                    UserWarning,
                    stacklevel=stacklevel,
                )
        _remember(self._data, owner, state)

    def require_model(self, model: Any, argname: str, fingerprint: str, state: Any = None) -> nn.Module:
        """The (unwrapped) model, if its :func:`model_fingerprint` is ``fingerprint``.

        Args:
            model: what the caller passed.
            argname: its name, for messages.
            fingerprint: the mined model's.
            state: ``model_state(model)`` if the caller has it (the crop cache does).

        Raises:
            ValueError: other weights, buffers or layers.
            TypeError: ``model`` is not an ``nn.Module``.
        """
        model = check_model(model, argname)
        state = model_state(model) if state is None else state
        if _seen(self._models, model, state):
            return model
        found = model_fingerprint(model)
        if found != fingerprint:
            raise ValueError(
                f"{argname} is not the model this result was mined with (fingerprint {found}, the result's is "
                f"{fingerprint}: other weights, buffers or layers); pass the mined model"
            )
        _remember(self._models, model, state)
        return model


def _seen(checked: list[tuple[Any, Any]], obj: Any, state: Any) -> bool:
    return any(ref() is obj and seen == state for ref, seen in checked)


def _remember(checked: list[tuple[Any, Any]], obj: Any, state: Any) -> None:
    try:
        ref = weakref.ref(obj)
    except TypeError:  # no weak references: checked again next time
        return
    checked.insert(0, (ref, state))
    del checked[_KEPT:]
