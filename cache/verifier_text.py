"""What a request asks, reduced to comparable parts: the text analysis behind `cache.verifier`.

Why word lists and not only embeddings: sentence embeddings place "translate into Spanish" and
"translate into French" (or "bad for your heart" and "good for your heart") close together,
because the two requests share almost every word. Whether they ask the same thing depends on a
few words from closed classes (languages, places, units, formats, time words, names...), on
negations, antonyms, numbers and on which side of "to"/"from" a word stands. This module finds
those parts; `cache.verifier` compares two profiles.

`analyse(text)` returns a `Profile`:
- `slots`: closed-class members per class, canonicalised ("km" and "kilometres" -> kilometer);
- `numbers`: canonical numbers, digits and words alike ("five" == "5"; ordinals as `#2`);
- `negations`: how many negating words;
- `poles`: for each antonym group found, which pole(s) ("cheap" vs "expensive");
- `roles`: for closed-class, polar and content words, their role around direction markers
  (`from`/`to`/`than`): "Celsius to Fahrenheit" vs "Fahrenheit to Celsius", "a string to an
  integer" vs "an integer to a string";
- `content`: the remaining content words, lightly stemmed and mapped to a synonym;
- `caps`: capitalised words found in no list (likely names or titles);
- `questions`: the question words (who, what/which, when, where, why, how, how many/much).

Deterministic and pure; results are memoised per text (`functools.lru_cache`).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

from .verifier_lexicon import TOKEN as _TOKEN
from .verifier_lexicon import Lexicon, lexicon, parse_lexicon
from .verifier_lexicon import singulars as _singulars
from .verifier_lexicon import stem as _stem

__all__ = ["Lexicon", "Profile", "analyse", "lexicon", "numbers_key", "parse_lexicon"]

_MAX_PHRASE = 4

_PRE = tuple(
    (re.compile(pattern, re.IGNORECASE), repl)
    for pattern, repl in (
        (r"[’`´]", "'"),
        (r"\bcan'?t\b", "can not"),
        (r"\bwon'?t\b", "will not"),
        (r"n't\b", " not"),
        (r"'s\b", ""),
        (r"°\s*c\b", " celsius "),
        (r"°\s*f\b", " fahrenheit "),
        (r"%", " percent "),
        (r"\bkm\s*/\s*h\b", " kmh "),
        (r"\$", " dollar "),
        (r"€", " euro "),
        (r"£", " pound "),
        (r"(\d),(\d{3})\b", r"\1\2"),
        (r"\b([A-Za-z]+)-free\b", r"no \1"),  # "gluten-free": without gluten
        # ... also written apart, for the words that take it ("gluten free", not "feel free")
        (r"\b(gluten|sugar|dairy|lactose|caffeine|alcohol|fat|nut|soy|egg|meat|wheat|grain|tax|duty|toll|rent|"
         r"interest|fee|commission|risk|cruelty|visa|smoke|debt|royalty|hands|error|bug)\s+free\b", r"no \1"),
        (r"\bor\s+not\s*(?=[?.!]*\s*$)", ""),  # "does X answer to Y or not?": the same yes/no question
        # clock times written differently are one time: "9am" / "9 a.m." / "09:00" / "9 am"
        (r"\b(\d{1,2})\s*([ap])\.?\s?m\b\.?", r"\1 \2m"),
        (r"\b0?(\d{1,2}):00\b", r"\1"),
        # a number glued to its unit ("110V", "5kg", "8min") reads as number + unit ("110 volt");
        # ordinals ("5th") are left whole
        (r"\b(\d+(?:\.\d+)?)(?!st\b|nd\b|rd\b|th\b)([A-Za-z]{1,3})\b", r"\1 \2"),
        (r"(?<=\d )v\b", "volt"),
        # a lone "m" after a number or a conversion word is metres ("3 m in feet", "feet to m")
        (r"(?<=\d )m\b|(?<=\b(?:in|to) )m\b(?=\s*[?.!]*\s*$)", "meter"),
    )
)
_SENTENCE_END = frozenset(".!?:;\n\"'(")
_DIRECTION = {"to": "to", "into": "to", "in": "to", "as": "to", "onto": "to", "from": "from"}
_SKIP = frozenset({"a", "an", "the", "my", "your", "our", "this", "that", "one"})
_ROLE_TOKENS = frozenset({*_DIRECTION, "than"})

_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * (i + 2) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9, "trillion": 10**12}
_ORDINALS = {w: i + 1 for i, w in enumerate(
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth "
    "fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth".split())}
_ORDINALS |= {w: 10 * (i + 3) for i, w in enumerate("thirtieth fortieth fiftieth sixtieth seventieth eightieth ninetieth".split())}
_ORDINALS |= {"hundredth": 100, "thousandth": 1000}
_EXTRA_NUMBERS = {"single": 1, "pair": 2, "couple": 2, "dozen": 12, "half": 0.5}
_DIGITS = re.compile(r"^\d+(?:\.\d+)?$")
_DIGIT_ORDINAL = re.compile(r"^(\d+)(?:st|nd|rd|th)$")


@dataclass(frozen=True, slots=True)
class Profile:
    slots: dict[str, frozenset[str]] = field(default_factory=dict)
    numbers: tuple[str, ...] = ()
    negations: int = 0
    poles: dict[int, frozenset[int]] = field(default_factory=dict)
    roles: dict[str, frozenset[str]] = field(default_factory=dict)
    content: frozenset[str] = frozenset()
    caps: frozenset[str] = frozenset()
    # Canonical token sequence for alignment: content words as `c:<word>`, closed-class words as
    # `s:<slot>:<canonical>`, numbers as `n:<value>`, poles as `p:<group>:<pole>`, others as is.
    sequence: tuple[str, ...] = ()
    questions: frozenset[str] = frozenset()  # who / what / when / where / why / how / quantity
    words: frozenset[str] = frozenset()  # the content words as written (lower case): "inedible", "edible"
    choice: bool = False  # offers alternatives ("X or Y"): a question answered by one of them
    vague: frozenset[str] = frozenset()  # vague words used mid-request (`v:` tokens), canonical
    articles: int = 0  # "a" / "an": "a week" is "one week"
    # `sequence` without words that never change what is asked (articles, auxiliaries, the
    # asker's and the assistant's pronouns, filler): equal cores ask the same thing.
    core: tuple[str, ...] = ()


# Words a request can gain or lose without asking something else ("How do I" / "How can I",
# "for the heart" / "for your heart"). Third-person pronouns are not here: "she" is not "he".
_IGNORABLE = frozenset(
    "a an the do does did can could would will shall should may might must is are was were be been "
    "am i me my mine myself you your yours yourself we us our ours please kindly".split()
)
_CANONICAL = {"into": "to", "onto": "to", "which": "what", "whats": "what", "whom": "who", "hows": "how"}


_QUESTIONS = {"who": "who", "whom": "who", "whose": "who", "what": "what", "whats": "what", "which": "what",
              "when": "when", "where": "where", "why": "why", "how": "how", "hows": "how"}


# "how" before a measure word asks for a quantity, like "how many": "how long", "how old", "how
# expensive" (the antonym lists hold the measure adjectives); otherwise for a manner ("How do I...",
# "explain how vaccines work"); "how come" asks why.
_HOW_MEASURE = frozenset("many much often far soon deep".split())


def _how(follow: str) -> str:
    if follow == "come":
        return "why"
    return "quantity" if follow in _HOW_MEASURE or follow in lexicon().poles else "how"


_ONE_PRONOUN = frozenset("which each this that the every any no another other".split())
_OPERATORS = frozenset("plus minus times by over than and to from into is equals x divided multiplied add subtract".split())
_AUXILIARIES = frozenset("is are was were do does did can could should would will shall may might must has have had "
                         "am".split())


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _pronoun_one(tokens: list[str], i: int) -> bool:
    """"which one", "the one", "one of them", "a friendly one" (last word): a pronoun, not a count;
    but "five minus one", "one of 6" after or before an operand stay numbers."""
    prev = tokens[i - 1] if i > 0 else ""
    follow = tokens[i + 1] if i + 1 < len(tokens) else ""
    if prev in _ONE_PRONOUN:
        return True
    operand = prev in _OPERATORS or _DIGITS.match(prev) is not None or prev in _UNITS or prev in _TENS
    if follow == "of":
        return not operand and not (i + 2 < len(tokens) and _DIGITS.match(tokens[i + 2]))
    return follow == "" and not operand


def _word_number(tokens: list[str], i: int) -> tuple[str | None, int]:
    """A number written in words starting at tokens[i] ("twenty five", "one hundred and two")."""
    word = tokens[i]
    if word == "one" and _pronoun_one(tokens, i):
        return None, i
    if word in _ORDINALS:
        return f"#{_ORDINALS[word]}", i + 1
    if word in _EXTRA_NUMBERS:
        return _number(_EXTRA_NUMBERS[word]), i + 1
    total, current, j = 0, 0, i
    while j < len(tokens):
        w = tokens[j]
        if w in _UNITS:
            current += _UNITS[w]
        elif w in _TENS:
            current += _TENS[w]
        elif w in _SCALES:
            scale = _SCALES[w]
            if scale == 100:
                current = max(current, 1) * 100
            else:
                total += max(current, 1) * scale
                current = 0
        elif w == "and" and j > i and j + 1 < len(tokens) and (tokens[j + 1] in _UNITS or tokens[j + 1] in _TENS):
            pass
        else:
            break
        j += 1
    if j == i:
        return None, i
    return _number(total + current), j


def numbers_key(profile: Profile) -> str:
    """The semantic cache's guard: the numbers but "1", which "a"/"an" can stand for ("a week" /
    "one week"); the verifier's numbers rule checks the ones."""
    return "\x00".join(n for n in profile.numbers if n != "1")


# Quoted text is what the request is about, not how it asks: the "where" of 'Translate "where is
# the station"' is not a question word of the request.
_QUOTED = re.compile(r"\"[^\"]*\"|“[^”]*”|(?<![A-Za-z0-9])'[^']*'(?![A-Za-z0-9])")


def _quoted(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _QUOTED.finditer(text)]


def _negative(text: str, start: int) -> bool:
    """A minus sign right before the digits, not between two operands ("-17", "(-3)", not "3-5")."""
    return start > 0 and text[start - 1] in "-−" and (start < 2 or text[start - 2] in " \t(=,[")


def _initial(text: str, start: int) -> bool:
    k = start - 1
    while k >= 0 and text[k] in " \t":
        k -= 1
    return k < 0 or text[k] in _SENTENCE_END


@functools.lru_cache(maxsize=4096)
def analyse(text: str) -> Profile:
    lex = lexicon()
    for pattern, repl in _PRE:
        text = pattern.sub(repl, text)
    matches = list(_TOKEN.finditer(text))
    orig = [m.group(0) for m in matches]
    initial = [_initial(text, m.start()) for m in matches]
    quoted = _quoted(text)
    in_quotes = [any(start <= m.start() < end for start, end in quoted) for m in matches]
    tokens = [t.lower() for t in orig]
    items: list[tuple[str, int, int]] = []  # (key for roles, first token, one past the last)
    slots: dict[str, set[str]] = {}
    numbers: list[str] = []
    poles: dict[int, set[int]] = {}
    content: set[str] = set()
    caps: set[str] = set()
    negations = 0
    sequence: list[str] = []
    questions: set[str] = set()
    words: set[str] = set()
    vague: set[str] = set()
    i = 0
    while i < len(tokens):
        word = tokens[i]
        hit = lex.cased.get(orig[i]) if not initial[i] else None
        n = 1
        if hit is None:
            for n in range(min(_MAX_PHRASE, len(tokens) - i), 0, -1):
                hit = lex.phrases.get(tuple(tokens[i : i + n]))
                if hit is None and n == 1:
                    hit = next((lex.phrases[(w,)] for w in _singulars(word) if (w,) in lex.phrases), None)
                if hit is not None and hit[0] in lex.case_slots and (initial[i] or not orig[i][:1].isupper()):
                    hit = None
                if hit is not None:
                    break
        if hit is not None:
            slot, canonical = hit
            slots.setdefault(slot, set()).add(canonical)
            items.append((f"{slot}:{canonical}", i, i + n))
            sequence.append(f"s:{slot}:{canonical}")
            i += n
            continue
        digit = _DIGIT_ORDINAL.match(word)
        if digit or _DIGITS.match(word):
            sign = "-" if _negative(text, matches[i].start()) else ""
            numbers.append(f"#{int(digit.group(1))}" if digit else sign + _number(float(word)))
            sequence.append("n:" + numbers[-1])
            i += 1
            continue
        value, j = _word_number(tokens, i)
        if value is not None:
            numbers.append(value)
            sequence.append("n:" + value)
            i = j
            continue
        token = word
        # a question word right after a noun or a name is a relative pronoun ("my friend Emma who...")
        # ... unless an auxiliary follows: "For analytics, why is Postgres better?"
        follow = tokens[i + 1] if i + 1 < len(tokens) else ""
        relative = (not initial[i] and bool(sequence) and sequence[-1][:2] in ("c:", "s:", "n:", "p:", "v:")
                    and follow not in _AUXILIARIES)
        if word in _QUESTIONS and not in_quotes[i] and not relative:
            questions.add(_how(follow) if word in ("how", "hows") else _QUESTIONS[word])
        if word in lex.negations:
            negations += 1
            token = "not"
        elif word in lex.poles:
            for g, pole in lex.poles[word]:
                poles.setdefault(g, set()).add(pole)
                items.append((f"polar{g}:{pole}", i, i + 1))
            token = "p:" + ",".join(f"{g}:{pole}" for g, pole in lex.poles[word])
        elif len(orig[i]) == 1 and orig[i].isupper() and orig[i] != "I" and not initial[i]:
            token = "c:" + word  # a label: "folder A", "plan B" (the article "a" is lower case)
            content.add(word)
            items.append((token, i, i + 1))
        elif word not in lex.stop and word not in _ROLE_TOKENS:
            stem = _stem(word)
            if word in lex.filler or stem in lex.filler:
                if not initial[i] and (word in lex.vague or stem in lex.vague):
                    vague.add(lex.synonyms.get(word) or lex.synonyms.get(stem) or stem)
                    token = "v:" + stem
            elif stem not in lex.stop:
                canonical = lex.synonyms.get(word) or lex.synonyms.get(stem) or stem
                content.add(canonical)
                words.add(word)
                token = "c:" + canonical
                items.append((token, i, i + 1))
                if orig[i][:1].isupper() and not initial[i] and not orig[i].isupper():
                    caps.add(canonical)
        sequence.append(token)
        i += 1
    return Profile(
        slots={k: frozenset(v) for k, v in slots.items()},
        numbers=tuple(sorted(numbers)),
        negations=negations,
        poles={k: frozenset(v) for k, v in poles.items()},
        roles=_roles(tokens, items),
        content=frozenset(content),
        caps=frozenset(caps),
        sequence=tuple(sequence),
        questions=frozenset(questions),
        words=frozenset(words),
        choice="or" in tokens,
        vague=frozenset(vague),
        articles=sum(1 for t in tokens if t in ("a", "an")),
        core=tuple(_CANONICAL.get(t, t) for t in sequence if t not in _IGNORABLE and t not in lex.filler),
    )


def _counted(tokens: list[str], pos: int) -> bool:
    """The word at `pos` is what a count asks for: "how many bones", "the number of bones"."""
    return (pos > 0 and tokens[pos - 1] in ("many", "much")) or (
        pos > 1 and tokens[pos - 1] == "of" and tokens[pos - 2] in ("number", "count", "amount"))


def _roles(tokens: list[str], items: list[tuple[str, int, int]]) -> dict[str, frozenset[str]]:
    """Role of each salient word: after to/into/in/as -> `to`, after from -> `from`, after than ->
    `than`; right before to/into -> `source`; shortly before than -> `subject`; else `none`."""
    roles: dict[str, set[str]] = {}
    # "How many X are in Y": X is what is asked for (`to`), the thing after "in" is the source.
    counted = any(_counted(tokens, pos) for _, pos, _ in items)
    # positions that no infinitive starts with: articles and pronouns, numbers, closed-class words
    marked = {i for i, t in enumerate(tokens) if t in _SKIP or _DIGITS.match(t)}
    marked |= {pos for key, pos, _ in items if not key.startswith(("c:", "polar"))}
    for key, pos, end in items:
        role = "none"
        k = pos - 1
        while k >= 0 and k >= pos - 3 and (tokens[k] in _SKIP or tokens[k] in _UNITS or tokens[k] in _TENS or _DIGITS.match(tokens[k])):
            k -= 1
        before = tokens[k] if k >= 0 else ""
        after = tokens[end] if end < len(tokens) else ""
        if before == "than":
            role = "than"
        elif before in ("many", "much") or _counted(tokens, pos):
            role = "to"
        elif before == "in" and counted:
            role = "from"
        elif before == "to" and k == pos - 1 and after in ("to", "into", "in"):
            pass  # "unable to log in to": an infinitive, no direction
        elif before in _DIRECTION:
            role = _DIRECTION[before]
        elif after in ("to", "into", "in"):
            # before "to a list", "to JSON", "to 5": a source; before "to play" (maybe an infinitive) or
            # "in" ("indentation in Python") only perhaps
            role = "from" if end + 1 in marked and after != "in" else "source"
        elif "than" in tokens[end : end + 3]:
            role = "subject"
        roles.setdefault(key, set()).add(role)
    return {k: frozenset(v) for k, v in roles.items()}
