"""The saved form of a :class:`~captum_deconvviz.MiningResult`: its payload, written and checked.

The format string ``captum_deconvviz.MiningResult/1`` is unchanged since the first
release. Files written since integrity checks exist also hold ``"checksum"`` (see
``_integrity``), and their ``meta`` holds ``"data_fingerprint"`` (see ``_fingerprint``);
older files have neither and still load, checked for consistency only (and, when used
with data, for the data's length only).

:func:`result_arguments` checks a payload before a result is built from it: every key
present with the right type, every layer's state consistent (shapes, ranking, records of
mined images only, counts), so a damaged or hand-made payload is a ValueError saying
what is wrong, never a KeyError or a wrong result later.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor

from ._exemplar_state import ExemplarOptions, ExemplarState
from ._integrity import check_state
from ._topk import TopKState
from .receptive_field import ReceptiveField

__all__ = ["RESULT_FORMAT", "RESULT_KEYS", "result_arguments", "result_payload"]

RESULT_FORMAT = "captum_deconvviz.MiningResult/1"
RESULT_KEYS = {"k", "unique", "nms_threshold", "num_images", "input_shape", "fingerprint", "meta", "layers"}
_LAYER_KEYS = {"state", "height", "width", "images", "field"}


def result_payload(
    states: dict[str, TopKState], fields: dict[str, ReceptiveField | None], **scalars: Any
) -> dict[str, Any]:
    """The payload of a result: ``scalars`` (k, unique, ...) and each layer's state and field."""
    return {
        "format": RESULT_FORMAT,
        **scalars,
        "layers": {
            name: {
                "state": state.tensors(),
                "height": state.height,
                "width": state.width,
                "images": state.images,
                "field": _field_to_dict(fields.get(name)),
                **({"exemplars": state.exemplars.to_dict()} if state.exemplars is not None else {}),
            }
            for name, state in states.items()
        },
    }


def result_arguments(payload: Any) -> dict[str, Any]:
    """The checked arguments of ``MiningResult(...)`` that ``payload`` describes.

    Args:
        payload: what :func:`result_payload` wrote (or a file held).

    Returns:
        ``states``, ``fields`` and the keyword arguments of ``MiningResult``.

    Raises:
        ValueError: the first thing missing, mistyped or inconsistent, named.
    """
    if not isinstance(payload, dict):
        raise ValueError(f"a result payload must be a dict, got {type(payload).__name__}")
    missing = sorted(RESULT_KEYS - set(payload))
    if missing:
        raise ValueError(f"the result payload misses {missing}")
    k, num_images = payload["k"], payload["num_images"]
    if not _is_int(k) or k < 1:
        raise ValueError(f"the result's k must be a positive int, got {k!r:.80}")
    if not _is_int(num_images) or num_images < 1:
        raise ValueError(f"the result's num_images must be a positive int, got {num_images!r:.80}")
    if payload["unique"] not in ("image", "none", "nms"):
        raise ValueError(f"the result's unique must be 'image', 'none' or 'nms', got {payload['unique']!r:.80}")
    threshold = payload["nms_threshold"]
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool):
        raise ValueError(f"the result's nms_threshold must be a number, got {threshold!r:.80}")
    shape = payload["input_shape"]
    if not isinstance(shape, (list, tuple)) or not shape or not all(_is_int(s) and s > 0 for s in shape):
        raise ValueError(f"the result's input_shape must be a list of positive ints, got {shape!r:.80}")
    if not isinstance(payload["fingerprint"], str):
        raise ValueError(f"the result's fingerprint must be a str, got {payload['fingerprint']!r:.80}")
    meta, layers = payload["meta"], payload["layers"]
    if not isinstance(meta, dict):
        raise ValueError(f"the result's meta must be a dict, got {type(meta).__name__}")
    if not isinstance(layers, dict) or not layers or not all(isinstance(name, str) for name in layers):
        raise ValueError("the result's layers must be a non-empty dict by layer name")
    index_ok = _index_check(meta)
    states, fields = {}, {}
    for name, entry in layers.items():
        where = f"layer {name!r}"
        if not isinstance(entry, dict) or set(entry) - {"exemplars"} != _LAYER_KEYS:
            got = sorted(entry, key=repr) if isinstance(entry, dict) else type(entry).__name__
            raise ValueError(f"{where} must hold {sorted(_LAYER_KEYS)}, got {got}")
        check_state(
            entry["state"], where, k=k, height=entry["height"], width=entry["width"], images=entry["images"],
            expected_images=num_images, index_ok=index_ok,
        )  # fmt: skip
        tensors: dict[str, Any] = entry["state"]
        states[name] = TopKState(height=entry["height"], width=entry["width"], images=entry["images"], **tensors)
        if "exemplars" in entry:
            try:
                options = ExemplarOptions.from_dict(entry["exemplars"])
                states[name].exemplars = ExemplarState.from_dict(entry["exemplars"], options)
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from None
        try:
            fields[name] = _field_from_dict(entry["field"])
        except (TypeError, ValueError, KeyError, AttributeError) as err:
            raise ValueError(f"{where}: its receptive field is malformed ({type(err).__name__}: {err})") from None
    return {
        "states": states,
        "fields": fields,
        "k": k,
        "unique": payload["unique"],
        "nms_threshold": float(threshold),
        "num_images": num_images,
        "input_shape": tuple(shape),
        "fingerprint": payload["fingerprint"],
        "meta": meta,
    }


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _index_check(meta: dict[str, Any]) -> Callable[[Tensor], Tensor]:
    """Which dataset indices records may hold: within the dataset, of the result's shards."""
    length = meta.get("dataset_length")
    if length is not None and (not _is_int(length) or length < 1):
        raise ValueError(f"the result's meta['dataset_length'] must be a positive int, got {length!r:.80}")
    shards = meta.get("shards") or {"world": 1, "ranks": [0]}
    try:
        world, ranks = int(shards["world"]), sorted({int(r) for r in shards["ranks"]})
    except (TypeError, KeyError, ValueError):
        raise ValueError(f"the result's meta['shards'] is malformed: {shards!r:.120}") from None
    if world < 1 or not ranks or not all(0 <= r < world for r in ranks):
        raise ValueError(f"the result's meta['shards'] is malformed: {shards!r:.120}")

    def index_ok(indices: Tensor) -> Tensor:
        ok = indices >= 0
        if length is not None:
            ok &= indices < length
        if world > 1:
            in_shards = torch.zeros_like(ok)
            for rank in ranks:
                in_shards |= indices % world == rank
            ok &= in_shards
        return ok

    return index_ok


def _field_to_dict(field: ReceptiveField | None) -> dict[str, Any] | None:
    if field is None:
        return None
    entry = asdict(field)
    entry["reach"] = [[list(lo), list(hi)] for lo, hi in field.reach] if field.reach is not None else None
    return entry


def _field_from_dict(entry: dict[str, Any] | None) -> ReceptiveField | None:
    if entry is None:
        return None
    entry = dict(entry)
    reach = entry.pop("reach")
    fields: dict[str, Any] = {key: tuple(value) if isinstance(value, list) else value for key, value in entry.items()}
    # The dataclass checks nothing; a damaged box would fail only when a record is cropped.
    dims = len(fields["size"]) if isinstance(fields.get("size"), tuple) else -1
    for name in ("size", "stride", "offset", "input_size", "output_size"):
        value = fields.get(name)
        minimum = 1 if name in ("size", "stride") else None
        if not isinstance(value, tuple) or len(value) != dims or not all(_is_int(v) for v in value):
            raise ValueError(f"{name} must be {max(dims, 1)} ints, got {value!r:.80}")
        if minimum is not None and any(v < minimum for v in value):
            raise ValueError(f"{name} must be positive, got {value!r:.80}")
    return ReceptiveField(**fields, reach=tuple((tuple(lo), tuple(hi)) for lo, hi in reach) if reach else None)
