"""The word lists behind `cache.verifier_text` (`verifier_data/lexicon.txt`) and the stemmer.

Why a file of its own: the lists are data with their own small grammar (sections, aliases,
antonym groups), read once per process; the text analysis only looks words up in them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import snowballstemmer

__all__ = ["LEXICON_PATH", "TOKEN", "Lexicon", "lexicon", "parse_lexicon", "singulars", "stem"]

LEXICON_PATH = Path(__file__).resolve().parent / "verifier_data" / "lexicon.txt"
TOKEN = re.compile(r"[A-Za-z0-9]+(?:\.[A-Za-z0-9]+)*(?:\+\+|#)?")


@dataclass(frozen=True, slots=True)
class Lexicon:
    phrases: dict[tuple[str, ...], tuple[str, str]]  # lower-case alias words -> (slot, canonical)
    case_slots: frozenset[str]  # slots whose members match only when capitalised mid-sentence
    cased: dict[str, tuple[str, str]]  # exact-case alias -> (slot, canonical)
    poles: dict[str, tuple[tuple[int, int], ...]]  # word -> ((group, pole), ...)
    negations: frozenset[str]
    synonyms: dict[str, str]
    filler: frozenset[str]
    stop: frozenset[str]
    # question word -> content words (canonical) that ask for the same kind of answer ("who":
    # author, inventor...; "when": year, date...)
    answers: dict[str, frozenset[str]] = field(default_factory=dict)
    # filler words that can also name the thing asked about mid-request ("sort by value" / "by key")
    vague: frozenset[str] = frozenset()


_STEMMER = snowballstemmer.stemmer("english")


@functools.lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """The English Snowball (Porter2) stem: every form of a word meets at one stem ("closure",
    "closures"; "divide", "divided"; "collection", "collect"), which a few suffix rules did not."""
    if len(word) <= 3 or not word.isalpha():
        return word
    return _STEMMER.stemWord(word)


def singulars(word: str) -> tuple[str, ...]:
    """Candidate singular forms of a plural ("ounces" -> "ounce", "ounc"; "cities" -> "city")."""
    if len(word) <= 3 or not word.endswith("s") or word.endswith("ss"):
        return ()
    forms = [word[:-1], word[:-2]] if word.endswith("es") else [word[:-1]]
    if word.endswith("ies"):
        forms.append(word[:-3] + "y")
    return tuple(forms)


def _words(alias: str) -> tuple[str, ...]:
    return tuple(t.lower() for t in TOKEN.findall(alias))


def _sections(text: str) -> Iterator[tuple[str, str]]:
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            continue
        yield section, line


def parse_lexicon(text: str) -> Lexicon:
    phrases: dict[tuple[str, ...], tuple[str, str]] = {}
    case_slots: set[str] = set()
    cased: dict[str, tuple[str, str]] = {}
    poles: dict[str, list[tuple[int, int]]] = {}
    sets: dict[str, set[str]] = {"negation": set(), "filler": set(), "stop": set(), "vague": set()}
    synonyms: dict[str, str] = {}
    answers: dict[str, list[str]] = {}
    group = 0
    for section, line in _sections(text):
        head, _, rest = line.partition("=")
        if section.startswith("slot "):
            words = section.split()
            slot = words[1]
            if "case" in words[2:]:
                case_slots.add(slot)
            canonical = head.strip().lower()
            for alias in [canonical, *(a for a in rest.split(",") if a.strip())]:
                phrases.setdefault(_words(alias), (slot, canonical))
        elif section == "case":
            slot, _, canonical = rest.strip().partition("/")
            cased[head.strip()] = (slot, canonical)
        elif section == "polar":
            group += 1
            for pole, side in enumerate(line.split("|")):
                for word in (w.strip().lower() for w in side.split(",")):
                    if word and (group, pole) not in poles.setdefault(word, []):
                        poles[word].append((group, pole))
        elif section == "synonym":
            canonical = stem(head.strip().lower())
            for alias in rest.split(","):
                words = _words(alias)
                if words:
                    synonyms[" ".join(words)] = canonical
                    if len(words) == 1:
                        synonyms[stem(words[0])] = canonical
        elif section == "question":
            answers.setdefault(head.strip().lower(), []).extend(w for a in rest.split(",") for w in _words(a))
        elif section in sets:
            sets[section].update(_words(line))
    return Lexicon(
        phrases=phrases,
        case_slots=frozenset(case_slots),
        cased=cased,
        poles={w: tuple(p) for w, p in poles.items()},
        negations=frozenset(sets["negation"]),
        synonyms=synonyms,
        filler=frozenset(sets["filler"]),
        stop=frozenset(sets["stop"]),
        vague=frozenset(sets["vague"]),
        answers={q: frozenset(synonyms.get(w) or synonyms.get(stem(w)) or stem(w) for w in ws)
                 for q, ws in answers.items()},
    )


@functools.cache
def lexicon() -> Lexicon:
    return parse_lexicon(LEXICON_PATH.read_text(encoding="utf-8"))
