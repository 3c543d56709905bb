"""``torch.distributed`` glue for mining: shard identity, argument checks, gathering results.

Collectives run on the process group the user (or torchrun + ``deconvviz mine``) set up;
they time out after the group's ``timeout`` (see docs/mining-imagenet.md).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, Protocol, TypeVar

import torch
import torch.distributed as dist

__all__ = [
    "Gatherable",
    "active",
    "all_gather_results",
    "check_same_config",
    "group_from_env",
    "init_from_env",
    "is_main",
    "rank_and_world",
]


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    return dist.get_rank(), dist.get_world_size()


def is_main() -> bool:
    """True on rank 0, and when not distributed: logs and outputs come from here only."""
    return not active() or dist.get_rank() == 0


def init_from_env(timeout_minutes: float = 30.0) -> bool:
    """Start the process group torchrun describes (``WORLD_SIZE`` > 1), if not started yet.

    Uses NCCL when CUDA is available, else gloo. Returns True if this process is distributed.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes))
    return True


@contextlib.contextmanager
def group_from_env(timeout_minutes: float = 30.0) -> Iterator[bool]:
    """:func:`init_from_env` for the length of a command; the group it started is destroyed at the end.

    Yields True if this process is distributed. Destroying the group on the way out, after an
    error too, matters: a rank that exits with its group alive while a peer still holds one can
    make gloo abort the peer with SIGABRT instead of the peer's own clear error.
    """
    started = not (dist.is_available() and dist.is_initialized())
    distributed = init_from_env(timeout_minutes)
    try:
        yield distributed
    finally:
        if distributed and started and dist.is_initialized():
            dist.destroy_process_group()


def check_same_config(config: dict[str, Any]) -> None:
    """Raise on every rank if the ranks were started with different mining arguments."""
    mine = {key: value for key, value in config.items() if key != "shard"}
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    for rank, other in enumerate(everyone):
        if other != mine:
            differ = sorted(key for key in set(mine) | set(other) if mine.get(key) != other.get(key))
            raise ValueError(
                f"rank {dist.get_rank()} and rank {rank} were started with different mining arguments "
                f"({', '.join(differ)}): every rank must mine the same model, layers, data and k"
            )


ResultT = TypeVar("ResultT", bound="Gatherable")


class Gatherable(Protocol):
    """What :func:`all_gather_results` carries: a result that round-trips through a dict."""

    def to_dict(self) -> dict[str, Any]: ...

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> Any: ...


def all_gather_results(result: ResultT) -> list[ResultT]:
    """Every rank's result, on every rank, rebuilt as the class of ``result``.

    Results travel as their public :meth:`to_dict` (plain values and CPU tensors), so this
    module needs no import of the result class.

    Example:
        >>> merged = MiningResult.merge(all_gather_results(result))  # doctest: +SKIP
    """
    payloads: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(payloads, result.to_dict())
    return [type(result).from_dict(payload) for payload in payloads]
