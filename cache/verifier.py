"""Second opinion on a semantic-cache candidate: do the two requests ask the same thing?

Why: cosine similarity of sentence embeddings cannot separate paraphrases from near misses
("good"/"bad for your heart" score 0.95, above many true paraphrases). A false hit serves a
wrong answer with full confidence, so a candidate above the similarity floor is served only when
this verifier agrees.

How: both texts are reduced to profiles (`cache.verifier_text.analyse`: closed-class words,
numbers, negations, antonym poles, direction roles, content words) and compared.

1. Hard rules refuse outright, whatever the wording around them (`RULES`, in order): different
   numbers (digits or words: "five" == "5"; "one" may stand for "a"), a closed-class word swapped
   for another of its class (language, place, programming language, unit, format, tool, time
   word, name, colour...), a different count of negations or a negating prefix ("edible" /
   "inedible", "gluten-free"), an antonym ("cheap" vs "expensive"; stance: "for" / "against",
   "support" / "oppose"), a direction swapped ("Celsius to Fahrenheit" vs "Fahrenheit to
   Celsius", or the same words with two closed-class words trading places: "Earth ... Sun" vs
   "Sun ... Earth"), operands trading places around any asymmetric word ("9 minus 3" / "3 minus
   9", "Do cats eat mice?" / "Do mice eat cats?": `cache.verifier_order`), and questions asking
   for another kind of answer (who / when / where / why / how / how many on both sides but not the
   same; or who / when / where / why on one side while the other neither asks it nor names that
   kind of answer: "What is X about?" / "Who wrote X?").
2. Two requests whose words are the same, in the same order, once articles, auxiliaries,
   first/second-person pronouns, "what" and filler ("please", "tell me", "can you") are set aside
   and synonyms, word forms (Snowball stems) and number forms unified, ask the same thing: agreed
   with score 1 ("equivalent"). Vague filler nouns mid-request ("by value" / "by key") are not
   set aside.
3. Otherwise a small logistic model over pair features (`FEATURES`; weights in
   `verifier_data/weights.json`, fitted on the tune split by `python -m cache.verifier_fit`)
   gives the probability that the two ask the same thing; the verdict is `score >= cutoff`, the
   cutoff shipped with the weights (chosen on the tune pairs for no false hits, in and out of fold).

Deterministic: pure functions of the two texts and the similarity; symmetric in the two texts.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .verifier_order import crossed, numbers_reordered, symmetric_swap, transposed
from .verifier_text import Profile, analyse, lexicon

__all__ = ["FEATURES", "RULES", "Verdict", "Verifier", "VerifierModel", "equivalent", "get_verifier", "pair_features",
           "refusal"]

WEIGHTS_PATH = Path(__file__).resolve().parent / "verifier_data" / "weights.json"

FEATURES: tuple[str, ...] = (
    "similarity",  # cosine of the two embeddings
    "slot_omitted",  # closed classes where one side names more members than the other
    "polar_mismatch",  # each side has a polar word the other lacks, across groups ("tallest"/"smallest")
    "role_partial",  # a shared word marked by from/to/than on one side only
    "content_diff",  # content words on one side only (both sides counted)
    "content_substituted",  # min(one side's extra content words, the other's)
    "caps_diff",  # capitalised unknown words (names, titles) on one side only
    "content_jaccard",  # Jaccard overlap of the content words (1 when both have none)
    "aligned_substituted",  # short spans where otherwise aligned texts swap one content word for another
    "aligned_inserted",  # short spans of content words that only one otherwise aligned text has
    "sequence_ratio",  # difflib similarity of the canonical token sequences
    "sequence_ratio_sq",  # its square: a minimal edit (ratio near 1) and a rewording pull differently
    "question_diff",  # question words on one side only ("where" vs "what is")
)

_SHORT_SPAN = 2
# difflib is quadratic in the worst case (repetitive text): align only the head of long requests,
# where a minimal edit would show; every other feature still sees the whole text.
_ALIGN_MAX = 64


def _slots_swapped(a: Profile, b: Profile) -> list[str]:
    """Closed classes where each side has a member the other lacks ("Spanish" vs "French")."""
    return sorted(s for s in a.slots.keys() & b.slots.keys() if a.slots[s] - b.slots[s] and b.slots[s] - a.slots[s])


def _slots_omitted(a: Profile, b: Profile) -> int:
    """Closed classes where one side names more ("JSON to YAML" vs "as YAML")."""
    swapped = set(_slots_swapped(a, b))
    return sum(1 for s in a.slots.keys() | b.slots.keys()
               if s not in swapped and a.slots.get(s, frozenset()) != b.slots.get(s, frozenset()))


def _roles(a: Profile, b: Profile) -> tuple[int, int]:
    """(shared words whose from/to/than roles differ on both sides, words marked on one side only).

    A word that only stands before "to" on one side and after it on the other ("learn to play" /
    "a way to learn") is a swap only when another word swaps too ("Celsius to Fahrenheit" /
    "Fahrenheit to Celsius"): "to" also marks infinitives. An explicit "from" or "than" swaps alone."""
    swapped = weak = partial = 0
    for key in a.roles.keys() & b.roles.keys():
        left, right = a.roles[key] - {"none"}, b.roles[key] - {"none"}
        if left and right and not _as_from(left) & _as_from(right):
            if {*left, *right} == {"source", "to"}:
                weak += 1
            else:
                swapped += 1
        elif bool(left) != bool(right):
            partial += 1
    return swapped + (weak if weak >= 2 else 0), partial


def _as_from(roles: frozenset[str]) -> frozenset[str]:
    return frozenset("from" if r == "source" else r for r in roles)


def _antonyms(a: Profile, b: Profile) -> int:
    """Antonym groups where the two sides take different poles ("cheap" vs "expensive")."""
    return sum(1 for g in a.poles.keys() & b.poles.keys() if a.poles[g] != b.poles[g])


def _polar_mismatch(a: Profile, b: Profile) -> int:
    left = {(g, p) for g, poles in a.poles.items() for p in poles}
    right = {(g, p) for g, poles in b.poles.items() for p in poles}
    return int(bool(left - right) and bool(right - left))


def _has_content(tokens: tuple[str, ...]) -> bool:
    return any(t.startswith("c:") for t in tokens)


def _alignment(a: Profile, b: Profile) -> tuple[int, int, float]:
    """Edits between the canonical sequences: a near miss is often one word swapped in an
    otherwise identical request ("time" -> "space complexity"), a paraphrase a rewording."""
    left, right = a.sequence[:_ALIGN_MAX], b.sequence[:_ALIGN_MAX]
    if len(left) > len(right) or (len(left) == len(right) and left > right):  # symmetric
        left, right = right, left
    matcher = difflib.SequenceMatcher(None, left, right, autojunk=False)
    substituted = inserted = 0
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal" or i2 - i1 > _SHORT_SPAN or j2 - j1 > _SHORT_SPAN:
            continue
        one, other = left[i1:i2], right[j1:j2]
        if op == "replace" and _has_content(one) and _has_content(other):
            substituted += 1
        elif _has_content(one) != _has_content(other):
            inserted += 1
    return substituted, inserted, matcher.ratio()


def _reordered(a: Profile, b: Profile) -> bool:
    """The same words, but closed-class ones in another order: "Does the Earth revolve around the
    Sun?" / "Does the Sun revolve around the Earth?" (no from/to marks the direction there)."""
    if a.core == b.core or sorted(a.core) != sorted(b.core) or symmetric_swap(a, b):
        return False
    return [t for t in a.core if t.startswith("s:")] != [t for t in b.core if t.startswith("s:")]


# "what"/"which" can stand for any other question word ("What year..." = "When..."); the others
# ask for one kind of answer each: a person, a time, a place, a reason, a manner, a quantity.
_OPEN_QUESTIONS = frozenset({"what"})


def _questions_differ(a: Profile, b: Profile) -> bool:
    """Both requests ask with specific question words, and not the same ones ("Who painted the
    Mona Lisa?" / "When was the Mona Lisa painted?")."""
    left, right = a.questions - _OPEN_QUESTIONS, b.questions - _OPEN_QUESTIONS
    return bool(left) and bool(right) and left != right


# Question words whose answer the other request must name to ask the same thing, and the closed
# class whose members name it too ("Where..." / "In which country...").
_ANSWER_SLOTS = {"who": "name", "when": "time", "where": "place", "why": None}


def _question_unanswered(a: Profile, b: Profile) -> bool:
    """`a` asks who/when/where/why and `b` neither does nor names that kind of answer: "Who wrote
    Brave New World?" / "What is Brave New World about?"."""
    answers = lexicon().answers
    if a.choice and b.choice:  # "Who is taller, X or Y?" / "Which is taller: X or Y?": the answer is named
        return False
    for question in a.questions - b.questions:
        if question not in _ANSWER_SLOTS or b.questions - _OPEN_QUESTIONS:
            continue
        named = b.content.union(b.vague, *b.slots.values())  # "What year..." names a time with a unit word
        if not (named & answers.get(question, frozenset())) and _ANSWER_SLOTS[question] not in b.slots:
            return True
    return False


# Prefixes that negate the word they join ("edible" / "inedible", "legal" / "illegal").
_NEGATING_PREFIXES = ("un", "in", "im", "il", "ir", "non", "dis")


def _prefix_negated(a: Profile, b: Profile) -> bool:
    """One request has a word the other has with a negating prefix, and not without it."""
    for left, right in ((a.words, b.words), (b.words, a.words)):
        for word in right - left:
            if any(word.startswith(p) and word[len(p):] in left for p in _NEGATING_PREFIXES):
                return True
    return False


def _one_for_article(a: Profile, b: Profile) -> bool:
    """The numbers differ only by ones that stand where the other request has "a"/"an" ("How many
    cups are in a liter?" / "How many cups make up one liter?")."""
    ones_a, ones_b = a.numbers.count("1"), b.numbers.count("1")
    others = [n for n in a.numbers if n != "1"] == [n for n in b.numbers if n != "1"]
    return others and ones_a - ones_b == b.articles - a.articles


# Hard rules: (name, test) in order; the first that fires refuses the candidate.
RULES: tuple[tuple[str, Callable[[Profile, Profile], bool]], ...] = (
    ("numbers", lambda a, b: a.numbers != b.numbers and not _one_for_article(a, b)),
    ("slot", lambda a, b: bool(_slots_swapped(a, b))),
    ("negation", lambda a, b: a.negations != b.negations or _prefix_negated(a, b)),
    ("antonym", lambda a, b: _antonyms(a, b) > 0),
    ("direction", lambda a, b: _roles(a, b)[0] > 0 or _reordered(a, b)),
    ("order", lambda a, b: transposed(a, b) or numbers_reordered(a, b) or crossed(a, b)),
    ("question", lambda a, b: _questions_differ(a, b) or _question_unanswered(a, b) or _question_unanswered(b, a)),
)


def equivalent(a: Profile, b: Profile) -> bool:
    """The same words in the same order once articles, auxiliaries, first/second-person pronouns
    and filler are set aside, with synonyms and number forms unified (`Profile.core`); "what" is
    set aside too ("What's the difference between X and Y?" / "Explain the difference between X
    and Y"), the specific question words are not."""
    return a.core == b.core or _open_core(a) == _open_core(b)


def _open_core(profile: Profile) -> tuple[str, ...]:
    return tuple(t for t in profile.core if t != "what")


def refusal(a: Profile, b: Profile) -> str | None:
    """The reason a hard rule refuses the pair ("slot:place", "negation", ...), or None."""
    for name, fires in RULES:
        if fires(a, b):
            return f"slot:{','.join(_slots_swapped(a, b))}" if name == "slot" else name
    return None


def pair_features(a: Profile, b: Profile, similarity: float) -> np.ndarray:
    """The model's feature vector (order of `FEATURES`) of one pair; symmetric in a and b."""
    aligned_sub, aligned_ins, ratio = _alignment(a, b)
    only_a, only_b = a.content - b.content, b.content - a.content
    union = a.content | b.content
    return np.array(
        [
            similarity,
            _slots_omitted(a, b),
            _polar_mismatch(a, b),
            _roles(a, b)[1],
            len(only_a) + len(only_b),
            min(len(only_a), len(only_b)),
            len((a.caps - b.content) | (b.caps - a.content)),
            len(a.content & b.content) / len(union) if union else 1.0,
            aligned_sub,
            aligned_ins,
            ratio,
            ratio * ratio,
            len(a.questions ^ b.questions),
        ],
        dtype=np.float64,
    )


@dataclass(frozen=True, slots=True)
class VerifierModel:
    """Logistic model: P(same) = sigmoid(bias + weights · features); agree when P >= cutoff."""

    weights: tuple[float, ...]
    bias: float
    cutoff: float
    features: tuple[str, ...] = FEATURES

    def __post_init__(self) -> None:
        if self.features != FEATURES or len(self.weights) != len(FEATURES):
            raise ValueError("verifier weights were fitted for other features; rerun cache.verifier_fit")
        if not 0.0 < self.cutoff < 1.0:
            raise ValueError("verifier cutoff must be within (0, 1)")

    @classmethod
    def load(cls, path: Path = WEIGHTS_PATH) -> VerifierModel:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return cls(tuple(float(w) for w in doc["weights"]), float(doc["bias"]), float(doc["cutoff"]),
                   tuple(doc["features"]))

    def probability(self, features: np.ndarray) -> float:
        z = self.bias + float(np.dot(np.asarray(self.weights), features))
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0


@dataclass(frozen=True, slots=True)
class Verdict:
    agrees: bool
    score: float  # P(same answer) in [0, 1]; 0 when a hard rule refused
    reason: str  # "equivalent", "model", or the hard rule that refused ("numbers", "slot:place", ...)


class Verifier:
    def __init__(self, model: VerifierModel | None = None) -> None:
        self.model = model if model is not None else VerifierModel.load()

    def score(self, cached: str, query: str, similarity: float) -> float:
        return self.check(cached, query, similarity).score

    def check(self, cached: str, query: str, similarity: float) -> Verdict:
        a, b = analyse(cached), analyse(query)
        refused = refusal(a, b)
        if refused is not None:
            return Verdict(False, 0.0, refused)
        if equivalent(a, b):
            return Verdict(True, 1.0, "equivalent")
        score = self.model.probability(pair_features(a, b, float(similarity)))
        return Verdict(score >= self.model.cutoff, score, "model")


@functools.cache
def get_verifier() -> Verifier:
    """The verifier with the shipped weights (loaded once per process)."""
    return Verifier()
