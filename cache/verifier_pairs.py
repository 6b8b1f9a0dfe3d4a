"""The project's labelled prompt pairs (`cache/verifier_data/pairs.txt`) and their tune/test split.

Why blocks: each block holds one base question with its paraphrases and near misses; splitting
whole blocks keeps a base question's wordings out of the split that did not see it, so the test
figures measure questions the verifier was not fitted on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["DATA_DIR", "Pair", "load_pairs", "split_of"]

DATA_DIR = Path(__file__).resolve().parent / "verifier_data"
SAME = "same"


@dataclass(frozen=True, slots=True)
class Pair:
    kind: str  # "same" for a paraphrase, else the kind of near miss
    a: str
    b: str
    block: int
    split: Literal["tune", "test"]

    @property
    def same(self) -> bool:
        return self.kind == SAME


def split_of(first_line: str) -> Literal["tune", "test"]:
    """Deterministic: the first byte of sha256(first line of the block), even -> tune."""
    return "tune" if hashlib.sha256(first_line.encode()).digest()[0] % 2 == 0 else "test"


def load_pairs(path: Path | None = None) -> list[Pair]:
    text = (path or DATA_DIR / "pairs.txt").read_text(encoding="utf-8")
    pairs: list[Pair] = []
    block, split = 0, None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            continue
        if not line:
            split = None
            continue
        fields = [f.strip() for f in line.split(" | ")]
        if len(fields) != 3 or not all(fields):
            raise ValueError(f"bad pair line: {raw!r}")
        if split is None:
            block += 1
            split = split_of(line)
        kind, a, b = fields
        pairs.append(Pair(kind, a, b, block, split))
    return pairs
