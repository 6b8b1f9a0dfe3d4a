"""Decoding the store's replies: per window a (spent, reserved) pair, by name, never by index
arithmetic. The Lua script answers a flat list `s1, r1, s2, r2, ...` aligned with the windows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple


class Count(NamedTuple):
    """(spent, reserved) of one window, by name. A NamedTuple: built 12 times per request on the
    memory backend's hot path, where a frozen dataclass costs several times more."""

    spent: int = 0
    reserved: int = 0

    @property
    def used(self) -> int:
        return self.spent + self.reserved

    def plus_reserved(self, amount: int) -> "Count":
        return Count(self.spent, self.reserved + amount)


def pairs(flat: Sequence[int]) -> list[Count]:
    """`[s1, r1, s2, r2, ...]` → `[Count(s1, r1), Count(s2, r2), ...]`."""
    if len(flat) % 2:
        raise ValueError(f"budget reply has an odd number of values ({len(flat)})")
    it = iter(int(v) for v in flat)
    return [Count(s, r) for s, r in zip(it, it)]
