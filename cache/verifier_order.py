"""Who does what to whom: two requests with the same words whose operands trade places.

Why: "9 minus 3" / "3 minus 9", "Is Rust faster than Go?" / "Is Go faster than Rust?", "Do cats
eat mice?" / "Do mice eat cats?" share every word, so their embeddings are nearly identical
(cosine 0.98-0.99) and no bag-of-words feature sees a difference. What differs is which operand
stands on which side of the relation word (minus, faster, eat, from, of...).

The test is about crossings, so that a request that only moves a clause ("In Python, how do I
reverse a list?" / "How do I reverse a list in Python?") is not taken for a swap:

- `crossed`: some word present once on both sides (the pivot: "minus", "eat", "than", "from")
  has an operand (content word, closed-class word, number, antonym) on its left in one request
  and on its right in the other, AND another operand that moves the opposite way. A moved clause
  moves operands one way only. Exempt: a pivot that joins its operands symmetrically ("and", "or",
  "plus", "times", "vs", "between": "6 plus 4" is "4 plus 6"), question words with the word they
  ask about ("which city" may open or close a request), and a change of voice (the operand that
  moved behind the pivot now follows a "by" that the other request lacks: "Did Brutus betray
  Caesar?" / "Was Caesar betrayed by Brutus?").
- `numbers_reordered`: the same words and the same numbers, the numbers in another order, with
  more than symmetric joiners between them ("Is 3/4 larger than 2/3?" / "Is 2/3 larger than
  3/4?"; but "7 times 8" is "8 times 7").
- `transposed`: no pivot in between, but the same words with two runs of operands trading
  places ("Is a tomato a fruit?" / "Is a fruit a tomato?", "Is every integer a rational
  number?" / "Is every rational number an integer?"), unless only symmetric joiners stand between
  them ("Python vs Java"); a run holding a function or question word is a clause, which may move.

A refusal here costs a cache miss when the relation was symmetric after all ("Does Germany border
Poland?"); a wrong hit serves the answer to another question.
"""

from __future__ import annotations

import difflib
import functools

import numpy as np

from .verifier_text import Profile, analyse

__all__ = ["crossed", "numbers_reordered", "symmetric_swap", "transposed"]

# Joiners whose operands may trade places without changing the answer.
_SYMMETRIC_WORDS = "and or plus times multiplied multiply vs versus between"  # not "nor": it reads as "not"
_QUESTION_WORDS = frozenset("who whom whose what whats which when where why how hows many much".split())
# Question words that take a noun along ("which city", "what year", "how many miles"); read on the
# full sequence, so that "What is the largest planet" does not take "largest" along.
_DETERMINERS = frozenset("what which whose many much".split())
_PASSIVE_MARK = "by"
# Crossings are looked for in the head of long requests only (a swap that matters is a short
# question; the check is quadratic in the words).
_MAX_TOKENS = 96
_MAX_PAIRS = 16
# Putting the crossed operands back must make the requests read (almost) alike: a swap, not a
# reformulation that happens to invert a genitive ("health benefits of green tea" / "is green
# tea good for your health").
_SWAP_MATCH = 0.75


@functools.cache
def _symmetric() -> frozenset[str]:
    """The canonical tokens of the symmetric joiners, as `analyse` writes them."""
    return frozenset(analyse(_SYMMETRIC_WORDS).sequence)


def _is_operand(token: str) -> bool:
    return token[:2] in ("c:", "s:", "n:", "p:", "v:")


def _unique_positions(sequence: tuple[str, ...]) -> dict[str, int]:
    seen: dict[str, int] = {}
    repeated: set[str] = set()
    for i, token in enumerate(sequence):
        if token in seen:
            repeated.add(token)
        seen[token] = i
    return {t: i for t, i in seen.items() if t not in repeated}


def _asked_about(profile: Profile) -> set[str]:
    """Words that a question word takes along ("which city", "how many miles"): they move with it.
    Not the subject after "why"/"when"/"how" ("Why do dogs chase cats?")."""
    sequence = profile.sequence
    return {sequence[i] for i in range(1, len(sequence)) if sequence[i - 1] in _DETERMINERS}


def crossed(a: Profile, b: Profile) -> bool:
    """Two operands cross a shared pivot in opposite directions, and putting them back makes the
    two requests read alike (see the module docstring)."""
    left, right = a.core[:_MAX_TOKENS], b.core[:_MAX_TOKENS]
    for x, y in _crossings(left, right, _asked_about(a) | _asked_about(b))[:_MAX_PAIRS]:
        swapped = tuple(y if t == x else x if t == y else t for t in right)
        if difflib.SequenceMatcher(None, left, swapped, autojunk=False).ratio() >= _SWAP_MATCH:
            return True
    return False


def _crossings(left: tuple[str, ...], right: tuple[str, ...], free: set[str]) -> list[tuple[str, str]]:
    """(x, y) operand pairs: x left of a shared pivot in `left` and right of it in `right`, y the
    reverse, the pivot not a symmetric joiner nor a question word, no change of voice."""
    pos_a, pos_b = _unique_positions(left), _unique_positions(right)
    shared = pos_a.keys() & pos_b.keys()
    if len(shared) < 3:
        return []
    operands = sorted(t for t in shared if _is_operand(t) and t not in free)
    symmetric = _symmetric()
    pivots = sorted(t for t in shared if t not in symmetric and t not in _QUESTION_WORDS)
    if len(operands) < 2 or not pivots:
        return []
    oa = np.array([pos_a[t] for t in operands])[None, :]
    ob = np.array([pos_b[t] for t in operands])[None, :]
    pa = np.array([pos_a[t] for t in pivots])[:, None]
    pb = np.array([pos_b[t] for t in pivots])[:, None]
    # rightward[p, x]: operand x is left of pivot p in a and right of it in b; leftward: the reverse
    rightward = (oa < pa) & (ob > pb) & ~_passive(right, left, pivots, pos_b, pos_a)[:, None]
    leftward = (oa > pa) & (ob < pb) & ~_passive(left, right, pivots, pos_a, pos_b)[:, None]
    pairs: dict[tuple[str, str], None] = {}
    for p in np.flatnonzero(rightward.any(axis=1) & leftward.any(axis=1)):
        for x in np.flatnonzero(rightward[p]):
            for y in np.flatnonzero(leftward[p]):
                pairs[(operands[x], operands[y])] = None
    return list(pairs)


def _passive(side: tuple[str, ...], other: tuple[str, ...], pivots: list[str], pos: dict[str, int],
             other_pos: dict[str, int]) -> np.ndarray:
    """Per pivot: `side` follows it with "by" and `other` does not (a change of voice)."""
    def by_after(tokens: tuple[str, ...], i: int) -> bool:
        return i + 1 < len(tokens) and tokens[i + 1] == _PASSIVE_MARK

    return np.array([by_after(side, pos[p]) and not by_after(other, other_pos[p]) for p in pivots], dtype=bool)


def _transposition(a: Profile, b: Profile) -> tuple[str, ...] | None:
    """What stands between two runs of operands that trade places when `b.core` is `a.core` with
    them swapped ("every [integer] [rational number]" / "every [rational number] [integer]": nothing
    between; "[Python] vs [Java]": "vs"); None when it is no such swap. Runs that hold a function or
    question word are clauses, and a clause may move ("In Python, how..." / "How... in Python")."""
    left, right = a.core[:_MAX_TOKENS], b.core[:_MAX_TOKENS]
    if left == right or len(left) != len(right) or sorted(left) != sorted(right):
        return None
    start = next(i for i, (x, y) in enumerate(zip(left, right)) if x != y)
    stop = len(left) - next(i for i, (x, y) in enumerate(zip(left[::-1], right[::-1])) if x != y)
    middle_a, middle_b = left[start:stop], right[start:stop]
    free = _asked_about(a) | _asked_about(b)
    for i in range(1, len(middle_a)):
        first = middle_a[:i]
        for j in range(i, len(middle_a)):
            between, last = middle_a[i:j], middle_a[j:]
            if middle_b != last + between + first:
                continue
            if all(_is_operand(t) and t not in free for t in first + last):
                return between
    return None


def _joined_symmetrically(between: tuple[str, ...] | None) -> bool:
    return bool(between) and all(t in _symmetric() for t in between)


def symmetric_swap(a: Profile, b: Profile) -> bool:
    """Operands trade places across symmetric joiners only: "Python vs Java" / "Java vs Python"."""
    return _joined_symmetrically(_transposition(a, b))


def transposed(a: Profile, b: Profile) -> bool:
    """The same words (`Profile.core`) with two runs of operands trading places, nothing or
    something other than symmetric joiners between them."""
    between = _transposition(a, b)
    return between is not None and not _joined_symmetrically(between)


def numbers_reordered(a: Profile, b: Profile) -> bool:
    """The same words around the same numbers, the numbers in another order, and something other
    than symmetric joiners between the first and the last number."""
    left, right = a.core, b.core
    if left == right or sorted(left) != sorted(right):
        return False
    if [t for t in left if not t.startswith("n:")] != [t for t in right if not t.startswith("n:")]:
        return False
    places = [i for i, t in enumerate(left) if t.startswith("n:")]
    if [i for i, t in enumerate(right) if t.startswith("n:")] != places:
        return False
    between = [t for t in left[places[0] : places[-1] + 1] if not t.startswith("n:")]
    return not all(t in _symmetric() for t in between)
