"""Mining checkpoints: save the top-k states atomically, resume only the run that wrote them, whole.

A checkpoint file holds the run's identity (the arguments that decide the result: layers,
k, uniqueness, NaN policy, dataset length, input shape, model fingerprint, shard), the
index of the next image to mine, every layer's :meth:`TopKState.to_dict`, and since
integrity checks exist a fingerprint of the mined data (``"data"``) and a checksum of
everything (``"checksum"``, see ``_integrity``). The format string is unchanged since
the first release: files without the two new keys are older checkpoints, which resume
with every check but those two.

A checkpoint is resumed only if it is whole and consistent: it unpickles, its checksum
matches, its identity and data are this run's, ``next_index`` lies within the shard,
every mined layer is present (and no other), and every state agrees with itself and the
run (shapes ``[channels, k]``, records ranked, of images already mined, counts that add
up). Anything else is a ValueError naming the file; the file is left as it is.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ._fingerprint import dataset_mismatch
from ._integrity import add_checksum, atomic_save, check_state, read_payload
from ._topk import TopKState

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "shard_path"]

CHECKPOINT_FORMAT = "captum_deconvviz.mining-checkpoint/1"
_KEYS = {"config", "next_index", "states"}
_OPTIONAL_KEYS = {"data"}  # added with the checksum; absent from older checkpoints


def shard_path(path: Path, rank: int, world: int) -> Path:
    """Each shard's own checkpoint file: ``state.pt`` becomes ``state.rank1-of-4.pt``.

    Example:
        >>> shard_path(Path("state.pt"), 1, 4).name
        'state.rank1-of-4.pt'
    """
    if world == 1:
        return path
    return path.with_name(f"{path.stem}.rank{rank}-of-{world}{path.suffix}")


class Checkpoint:
    """One run's checkpoint file: resume from it, then save to it every ``every`` seconds.

    Args:
        path: the file (this shard's own, see :func:`shard_path`).
        identity: the run's arguments a resume must match (compared key by key); its
            ``layers``, ``k``, ``num_images`` and ``shard`` also bound what the states may hold.
        every: seconds between the saves of :meth:`save_if_due`.
        data: the fingerprint of the data being mined (``_fingerprint.dataset_fingerprint``),
            saved and compared on resume; None: neither.

    Example:
        >>> checkpoint = Checkpoint(Path("run.pt"), {"k": 9}, every=60.0)  # doctest: +SKIP
        >>> states, start = checkpoint.resume(torch.device("cpu"))
        >>> checkpoint.save(states, start)
    """

    def __init__(self, path: Path, identity: dict[str, Any], every: float, data: dict[str, Any] | None = None) -> None:
        self.path, self.identity, self.every, self.data = path, identity, every, data
        self._last_save = time.monotonic()

    def resume(self, device: torch.device) -> tuple[dict[str, TopKState], int]:
        """The saved states (on ``device``) and the position to go on from; nothing saved: ``({}, 0)``.

        Starts the clock of :meth:`save_if_due`.

        Raises:
            ValueError: the file cannot be read, is no mining checkpoint, is corrupt or
                inconsistent, or was written by a run with other arguments or data (the
                message names the file and what is wrong). It is never resumed.
        """
        self._last_save = time.monotonic()
        if not self.path.exists():
            return {}, 0
        try:
            payload = read_payload(self.path, CHECKPOINT_FORMAT, "mining checkpoint", _KEYS, _OPTIONAL_KEYS)
        except ValueError as err:
            raise ValueError(f"{err}; it will not be resumed: delete it to start over") from None
        config = payload["config"]
        if not isinstance(config, dict) or config != self.identity:
            changed = sorted(
                key for key in self.identity if not isinstance(config, dict) or config.get(key) != self.identity[key]
            )
            raise ValueError(
                f"checkpoint {self.path} was written by a run with other arguments ({', '.join(changed)} differ); "
                "rerun with the same arguments to resume, or delete the file to start over"
            )
        if self.data is not None and payload.get("data") is not None:
            try:
                reason = dataset_mismatch(payload["data"], self.data)
            except ValueError as err:
                raise ValueError(f"checkpoint {self.path} is corrupt ({err}): it will not be resumed") from None
            if reason is not None:
                raise ValueError(
                    f"checkpoint {self.path} was written while mining other data: this data {reason}; rerun with "
                    "the same data to resume, or delete the file to start over"
                )
        try:
            next_index = self._check_contents(payload)
        except ValueError as err:
            raise ValueError(
                f"checkpoint {self.path} is corrupt ({err}): it will not be resumed; delete it to start over"
            ) from None
        try:
            states = {name: TopKState.from_dict(entry, device) for name, entry in payload["states"].items()}
        except ValueError as err:  # the exemplar statistics' own checks
            raise ValueError(
                f"checkpoint {self.path} is corrupt ({err}): it will not be resumed; delete it to start over"
            ) from None
        return states, next_index

    def _check_contents(self, payload: dict[str, Any]) -> int:
        """``next_index`` once the states are checked against it and the run's identity."""
        next_index, states = payload["next_index"], payload["states"]
        rank, world = self.identity["shard"]
        shard_size = len(range(rank, self.identity["num_images"], world))
        if isinstance(next_index, bool) or not isinstance(next_index, int) or not 0 <= next_index <= shard_size:
            raise ValueError(f"next_index {next_index!r:.80} is not within [0, {shard_size}], the images of this shard")
        if not isinstance(states, dict):
            raise ValueError(f"its states are a {type(states).__name__}, not a dict by layer")
        layers = list(self.identity["layers"])
        expected = set(layers) if next_index > 0 else set()
        if set(states) != expected:
            missing, extra = sorted(expected - set(states)), sorted(set(states) - expected, key=repr)
            raise ValueError(f"its layers do not match the run's: missing {missing}, unexpected {extra}")
        # Records may point only at images of this shard that were mined before next_index.
        end = rank + next_index * world

        def index_ok(indices: torch.Tensor) -> torch.Tensor:
            return (indices >= rank) & (indices < end) & ((indices - rank) % world == 0)

        for name in layers if next_index > 0 else []:
            entry = states[name]
            if not isinstance(entry, dict) or set(entry) - {"exemplars"} != {"tensors", "height", "width", "images"}:
                raise ValueError(f"layer {name!r}: its entry must hold tensors, height, width and images")
            if ("exemplars" in entry) != ("exemplars" in self.identity):
                raise ValueError(f"layer {name!r}: its exemplar statistics do not match the run's options")
            check_state(
                entry["tensors"], f"layer {name!r}", k=self.identity["k"], height=entry["height"],
                width=entry["width"], images=entry["images"], expected_images=next_index, index_ok=index_ok,
            )  # fmt: skip
        return next_index

    def save(self, states: dict[str, TopKState], next_index: int) -> None:
        """Write the states atomically: a killed process leaves the previous checkpoint whole."""
        payload: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "config": self.identity,
            "next_index": next_index,
            "states": {name: state.to_dict() for name, state in states.items()},
        }
        if self.data is not None:
            payload["data"] = self.data
        atomic_save(add_checksum(payload), self.path)
        self._last_save = time.monotonic()

    def save_if_due(self, states: dict[str, TopKState], next_index: int) -> None:
        """:meth:`save` if ``every`` seconds have passed since the last save (or the resume)."""
        if time.monotonic() - self._last_save >= self.every:
            self.save(states, next_index)
