"""Mining checkpoints: save the top-k states atomically, resume only the run that wrote them.

A checkpoint file holds the run's identity (the arguments that decide the result: layers,
k, uniqueness, NaN policy, dataset length, input shape, model fingerprint, shard), the
index of the next image to mine and every layer's :meth:`TopKState.to_dict`. The format
string is unchanged since the first release, so older checkpoints resume.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ._topk import TopKState
from .mining_result import atomic_save

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "shard_path"]

CHECKPOINT_FORMAT = "captum_deconvviz.mining-checkpoint/1"


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
        identity: the run's arguments a resume must match (compared key by key).
        every: seconds between the saves of :meth:`save_if_due`.

    Example:
        >>> checkpoint = Checkpoint(Path("run.pt"), {"k": 9}, every=60.0)  # doctest: +SKIP
        >>> states, start = checkpoint.resume(torch.device("cpu"))
        >>> checkpoint.save(states, start)
    """

    def __init__(self, path: Path, identity: dict[str, Any], every: float) -> None:
        self.path, self.identity, self.every = path, identity, every
        self._last_save = time.monotonic()

    def resume(self, device: torch.device) -> tuple[dict[str, TopKState], int]:
        """The saved states (on ``device``) and the position to go on from; nothing saved: ``({}, 0)``.

        Starts the clock of :meth:`save_if_due`.

        Raises:
            ValueError: the file cannot be read, is no mining checkpoint, or was written by a
                run with other arguments (the message names them).
        """
        self._last_save = time.monotonic()
        if not self.path.exists():
            return {}, 0
        payload = self._read()
        if payload["config"] != self.identity:
            changed = sorted(key for key in self.identity if payload["config"].get(key) != self.identity[key])
            raise ValueError(
                f"checkpoint {self.path} was written by a run with other arguments ({', '.join(changed)} differ); "
                "rerun with the same arguments to resume, or delete the file to start over"
            )
        states = {name: TopKState.from_dict(entry, device) for name, entry in payload["states"].items()}
        return states, int(payload["next_index"])

    def _read(self) -> dict[str, Any]:
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(
                f"checkpoint {self.path} cannot be read ({type(err).__name__}: {err}); delete it to start over"
            ) from None
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{self.path} is not a mining checkpoint; pass another checkpoint path")
        return payload

    def save(self, states: dict[str, TopKState], next_index: int) -> None:
        """Write the states atomically: a killed process leaves the previous checkpoint whole."""
        payload = {
            "format": CHECKPOINT_FORMAT,
            "config": self.identity,
            "next_index": next_index,
            "states": {name: state.to_dict() for name, state in states.items()},
        }
        atomic_save(payload, self.path)
        self._last_save = time.monotonic()

    def save_if_due(self, states: dict[str, TopKState], next_index: int) -> None:
        """:meth:`save` if ``every`` seconds have passed since the last save (or the resume)."""
        if time.monotonic() - self._last_save >= self.every:
            self.save(states, next_index)
