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

__all__ = ["DATA_DIR", "Pair", "load_pairs", "split_of", "tune_pairs"]

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


def load_pairs(path: Path | None = None, *, split: Literal["tune", "test"] | None = None,
               first_block: int = 0) -> list[Pair]:
    """The pairs of `path` (default `pairs.txt`), blocks numbered from `first_block + 1`; `split`
    puts every block in that split instead of the hash split."""
    forced = split
    text = (path or DATA_DIR / "pairs.txt").read_text(encoding="utf-8")
    pairs: list[Pair] = []
    block, split = first_block, None
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
            split = forced or split_of(line)
        kind, a, b = fields
        pairs.append(Pair(kind, a, b, block, split))
    return pairs


def tune_pairs() -> list[Pair]:
    """Everything the verifier may be fitted on: the tune split of `pairs.txt` and every pair of
    `tune_pairs.txt` (written for issue 25). `holdout_pairs.txt` is never read here."""
    pairs = [p for p in load_pairs() if p.split == "tune"]
    last = max((p.block for p in load_pairs()), default=0)
    return pairs + load_pairs(DATA_DIR / "tune_pairs.txt", split="tune", first_block=last)
