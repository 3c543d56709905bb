"""Exact, mergeable building blocks of mining's state: ranked record rows and float32 sums.

Both are associative and commutative, so a state folded batch by batch, shard by shard or
after a resume equals a single pass bit for bit.

- :func:`rank_rows`: records ranked by value (descending or ascending), ties to the lower key.
- :class:`Ranking`: rows of the best ``n`` records, with a label per record.
- :func:`add_f32` / :func:`f32_sums`: exact sums of float32 values in ten int64 limbs.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor

__all__ = [
    "LIMBS",
    "NO_KEY",
    "Ranking",
    "add_f32",
    "best_rows",
    "f32_means",
    "f32_sums",
    "normalize_limbs",
    "rank_rows",
]

NO_KEY = -1

# A finite float32 is m * 2**(e - 24) with an integer |m| < 2**24 and e = frexp's exponent in
# [-148, 128]; in units of 2**-173 it is the integer m << (e + 149), below 2**301. Its 32-bit
# pieces go to limbs of int64 (each add below 2**32: 2**31 adds before a limb could overflow;
# normalize_limbs carries them back under 2**32). Ten limbs hold 320 bits.
LIMBS = 10
_UNIT_EXPONENT = 173
_LOW = 0xFFFFFFFF


def rank_rows(values: Tensor, key: Tensor, descending: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Sort each row by value (``descending`` or not), ties to the lower key; returns the order too.

    Empty slots hold the value that sorts last (-inf descending, +inf ascending) and key -1.
    """
    order = torch.argsort(key, dim=-1, stable=True)
    values, key = values.gather(-1, order), key.gather(-1, order)
    second = torch.argsort(values, dim=-1, descending=descending, stable=True)
    return values.gather(-1, second), key.gather(-1, second), order.gather(-1, second)


def best_rows(
    values: Tensor, key: Tensor, n: int, descending: bool = True, key_bound: int = 0, ordered: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """The best ``n`` of each row as :func:`rank_rows` ranks them: ``(values, keys, their columns)``.

    Where every key fits in 32 bits, value and key are packed into one int64 whose order is
    the ranking's (the float's bits made order-preserving, above the key or its complement),
    and one ``topk`` replaces two stable sorts and their gathers. ``key_bound``: all keys are
    below it (0: unknown, then the keys are looked at, a device sync). ``ordered=False``: the
    best ``n`` in any order (cheaper, where only the set matters).
    """
    bound = key_bound if key_bound > 0 else (int(key.max()) + 1 if key.numel() else 0)
    if key.numel() == 0 or bound > 2**32:
        values, key, order = rank_rows(values, key, descending)
        return values[..., :n], key[..., :n], order[..., :n]
    bits = (values.float() + 0.0).view(torch.int32).long()  # + 0.0: -0.0 ties with 0.0, as compared
    ranked = torch.where(bits >= 0, bits, -(bits & 0x7FFFFFFF) - 1)  # the floats' order, as integers
    low = torch.where(key >= 0, _LOW - key, 0) if descending else torch.where(key >= 0, key, _LOW)
    order = torch.topk((ranked << 32) | low, n, dim=-1, largest=descending, sorted=ordered).indices
    return values.gather(-1, order), key.gather(-1, order), order


@dataclass
class Ranking:
    """Rows of the best ``n`` records (value, key, label), best first.

    Attributes:
        values: ``[..., n]`` float32; empty slots hold -inf (descending) or +inf (ascending).
        key: ``[..., n]`` int64: ``index * plane + position``, -1 for empty slots.
        label: ``[..., n]`` int64: the image's class, -1 if unknown or empty.
        descending: the best record is the largest value (True) or the smallest.
        key_bound: every key is below it (0: unknown); see :func:`best_rows`.
        ordered: rows are kept best first; False: the best ``n`` in any order (where only
            the set matters, as for the class histogram; cheaper to keep).
    """

    values: Tensor
    key: Tensor
    label: Tensor
    descending: bool = True
    key_bound: int = 0
    ordered: bool = True

    @classmethod
    def empty(
        cls, shape: tuple[int, ...], n: int, descending: bool, device: torch.device, key_bound: int = 0
    ) -> Ranking:
        fill = float("-inf") if descending else float("inf")
        return cls(
            values=torch.full((*shape, n), fill, device=device),
            key=torch.full((*shape, n), NO_KEY, dtype=torch.long, device=device),
            label=torch.full((*shape, n), NO_KEY, dtype=torch.long, device=device),
            descending=descending,
            key_bound=key_bound,
        )

    @property
    def empty_value(self) -> float:
        return float("-inf") if self.descending else float("inf")

    def offer(self, values: Tensor, key: Tensor, label: Tensor) -> None:
        """Keep the best ``n`` of the rows and the candidates ``[..., M]`` (empty value: no candidate)."""
        values = values.float()
        if self.ordered:
            worst = self.values[..., -1:]
        else:  # the set's worst value (ties with it may still enter: they are ranked below)
            worst = (self.values.amin if self.descending else self.values.amax)(dim=-1, keepdim=True)
        better = (values >= worst if self.descending else values <= worst) & (values != self.empty_value)
        most = int(better.sum(dim=-1).max()) if better.numel() else 0
        if most == 0:  # most batches of a long stream bring nothing
            return
        label = label.expand_as(key)
        if most < values.shape[-1]:
            # Only candidates that can enter take part in the ranking: each row's are among its
            # ``most`` best (those ranking below its worst record are dropped whichever they are).
            chosen = torch.topk(values, most, dim=-1, largest=self.descending).indices
            values, key, label = values.gather(-1, chosen), key.gather(-1, chosen), label.gather(-1, chosen)
        key = torch.where(values == self.empty_value, NO_KEY, key)
        n = self.values.shape[-1]
        best_values, best_keys, order = best_rows(
            torch.cat([self.values, values], dim=-1),
            torch.cat([self.key, key], dim=-1),
            n,
            self.descending,
            self.key_bound,
            self.ordered,
        )
        labels = torch.cat([self.label, label], dim=-1).gather(-1, order)
        self.values, self.key = best_values.contiguous(), best_keys.contiguous()
        self.label = torch.where(self.key == NO_KEY, NO_KEY, labels).contiguous()

    def merge(self, other: Ranking) -> None:
        device = self.values.device
        self.offer(other.values.to(device), other.key.to(device), other.label.to(device))

    def tensors(self, prefix: str) -> dict[str, Tensor]:
        return {f"{prefix}_values": self.values, f"{prefix}_key": self.key, f"{prefix}_label": self.label}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], prefix: str, descending: bool, key_bound: int = 0) -> Ranking:
        values, key, label = (tensors[f"{prefix}_{name}"] for name in ("values", "key", "label"))
        return cls(values, key, label, descending, key_bound)

    def to(self, device: torch.device | str) -> Ranking:
        return Ranking(
            self.values.to(device),
            self.key.to(device),
            self.label.to(device),
            self.descending,
            self.key_bound,
            self.ordered,
        )


def add_f32(sums: Tensor, rows: Tensor, values: Tensor) -> None:
    """Add float32 ``values [M]`` exactly to the sums ``sums.view(-1, LIMBS)[rows]``, in place.

    ``values`` are rounded to float32 first; they must be finite (callers drop the others).
    """
    mantissa, exponent = torch.frexp(values.float())
    m = torch.ldexp(mantissa, torch.full_like(exponent, 24)).long()  # exact: 24 bits
    shift = exponent.long() + 149  # in [1, 277] for finite nonzero float32; zero adds nothing
    limb, offset = shift.clamp(0, 32 * LIMBS - 64) // 32, shift.clamp_min(0) % 32
    magnitude, sign = m.abs() << offset, m.sign()
    flat = sums.view(-1)
    base = rows.long() * LIMBS + limb
    flat.index_add_(0, base, sign * (magnitude & _LOW))
    flat.index_add_(0, base + 1, sign * (magnitude >> 32))


def normalize_limbs(sums: Tensor) -> Tensor:
    """Carry every limb's bits past 32 into the next one (in place); the value is unchanged."""
    for _ in range(2):  # after adds below 2**62, two passes bound every limb but the last by 2**32
        carry = sums[..., :-1] >> 32
        sums[..., :-1] -= carry << 32
        sums[..., 1:] += carry
    return sums


def f32_sums(sums: Tensor) -> list[int]:
    """The exact sums as integers in units of ``2**-173``, one per row of ``sums [..., LIMBS]``."""
    rows = sums.reshape(-1, LIMBS).cpu().tolist()
    return [sum(limb << (32 * i) for i, limb in enumerate(row)) for row in rows]


def f32_means(sums: Tensor, counts: Tensor) -> Tensor:
    """Correctly rounded float64 ``sum / count`` per row; NaN where the count is 0."""
    scale = 1 << _UNIT_EXPONENT
    out = [
        float(Fraction(total, scale * n)) if n > 0 else float("nan")
        for total, n in zip(f32_sums(sums), counts.reshape(-1).tolist(), strict=True)
    ]
    return torch.tensor(out, dtype=torch.float64).view(counts.shape)
