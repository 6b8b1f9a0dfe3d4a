"""The heuristic's hand features: each a value in [0, 1], cheap (well under a millisecond) and
explainable. `DifficultyScorer` weighs them (`scorer.py`); the learned model takes them as half of
its input (`model.py`).

Heuristic score (clipped-linear, not logistic, so that the contributions in the
`x-gateway-difficulty` header add up to the score the router saw):

    raw_f        = feature value in [0, 1] (saturating: more evidence stops counting past a point)
    contribution = weight_f * raw_f
    heuristic    = clip(bias + sum(contributions), 0, 1)
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from dataclasses import dataclass, fields
from typing import Any

from protocols.text import conversation_text

# scanning stays O(1) per request.
_SCAN_HEAD = 3000
_SCAN_TAIL = 1000
# Length feature: log-scaled between these prompt sizes (characters): 0 at or below the first,
# 1 at or beyond the second.
_LEN_LOW = 80.0
_LEN_HIGH = 12000.0
# kNN input: the head of the last user message. Transformer cost on a CPU grows with the number
# of word pieces, and the kind of task is almost always stated in the first sentences, so the text


@dataclass(frozen=True, slots=True)
class DifficultyWeights:
    """One weight per feature (its contribution when the feature is saturated) plus a bias.

    Defaults are hand-tuned so that a greeting scores ~0, a one-line fact question < 0.2, and a
    proof, a system design or a multi-step coding task > 0.5.
    """

    length: float = 0.20
    code: float = 0.45
    math: float = 0.50
    reasoning: float = 0.50
    constraints: float = 0.15
    turns: float = 0.10
    tools: float = 0.15
    # Unclipped log length (0 at 1 char, 1 at 12,000): no weight in the hand-tuned score; the
    # learned model uses it (the clipped `length` above is 0 for every prompt under 80 chars).
    chars: float = 0.0
    bias: float = 0.0


FEATURES: tuple[str, ...] = tuple(f.name for f in fields(DifficultyWeights) if f.name != "bias")


# ---------------------------------------------------------------------------------------------
# Features: each returns a value in [0, 1]
#
# Speed: Python's `re` tries every alternative of a keyword alternation at every position, which
# costs milliseconds on a long prompt. So the text is lowered and split into words ONCE; single
# keywords are set lookups, phrases and operator tokens are `str.count` (C substring search), and
# only two cheap regular expressions remain (math expressions, list items).

_PUNCT = str.maketrans({c: " " for c in string.punctuation if c not in "+#"} | {"\n": " ", "\t": " "})


def _words(*groups: str) -> frozenset[str]:
    return frozenset(w for g in groups for w in g.split())


_CODE_SYMBOLS = ("```", "=>", "->", "::", "!=", "==", "&&", "||", "()", "};", "#include", "traceback", "):\n")
_CODE_KEYWORDS = _words(
    "def lambda const void struct impl fn elif printf println async await nullptr namespace typedef",
    "func isinstance kwargs args stdout stderr malloc",
)
_CODE_WORDS = _words(
    "implement implementation debug debugging refactor refactoring algorithm algorithms compile compiler",
    "compiles bug bugs regex python rust golang java javascript typescript c++ c# sql kubernetes",
    "concurrency concurrent thread threads threadsafe deadlock segfault stacktrace api endpoint",
    "unittest pytest",
)
_CODE_PHRASES = ("race condition", "memory leak", "stack trace", "unit test", "data structure", "time complexity")

_MATH_CHARS = "∫∑∏√π∞≤≥≠≈∂∇∈∀∃λθσμ"
_LATEX = ("\\frac", "\\int", "\\sum", "\\sqrt", "\\lim", "\\prod", "\\partial", "\\cdot", "\\infty", "^")
_MATH_EXPR = re.compile(r"[\d)]\s?[-+*/=<>×÷]\s?[\d(]")
_MATH_WORDS = _words(
    "prove proof proofs theorem lemma corollary integral integrate integration derivative derivatives",
    "differentiate eigenvalue eigenvalues eigenvector eigenvectors matrix matrices probability variance",
    "equation equations polynomial logarithm modulo prime primes induction converge converges convergence",
    "series limit topology combinatorics combinatorial optimization optimisation inequality geometry",
    "calculus bayesian irrational infinitely",
)
_MATH_PHRASES = ("expected value", "vector space", "closed form", "if and only if")

_REASONING_WORDS = _words(
    "compare contrast design architect architecture analyze analyse analysis tradeoff tradeoffs evaluate",
    "justify derive diagnose critique plan strategy scalable scalability scale distributed",
    "fault consistency multistep prove",
)
_REASONING_PHRASES = (
    "step by step", "step-by-step", "each step", "every step", "show that", "explain why", "explain how",
    "why does", "why is", "trade-off", "pros and cons", "walk me through", "in detail", "root cause",
    "reason about", "multi-step", "first,", "then,", "finally,",
)
_NUMBERED = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+\S", re.MULTILINE)

_CONSTRAINT_WORDS = _words("must exactly format json yaml schema ensure guarantee constraint constraints requirement requirements only")
_CONSTRAINT_PHRASES = (
    "at least", "at most", "no more than", "no fewer than", "without using", "do not", "don't",
    "should not", "within ", "under ",
)


def _saturate(count: float, full: float) -> float:
    """count / full, capped at 1: `full` pieces of evidence saturate the feature."""
    return min(1.0, count / full) if count > 0 else 0.0


def _scan_window(text: str) -> str:
    if len(text) <= _SCAN_HEAD + _SCAN_TAIL:
        return text
    return text[:_SCAN_HEAD] + "\n" + text[-_SCAN_TAIL:]


def _length_value(chars: int) -> float:
    if chars <= _LEN_LOW:
        return 0.0
    return min(1.0, math.log(chars / _LEN_LOW) / math.log(_LEN_HIGH / _LEN_LOW))


def _hits(words: Counter[str], vocab: frozenset[str]) -> int:
    """Occurrences of any vocabulary word (a pass over the small vocabulary, not over the text)."""
    return sum(words[w] for w in vocab if w in words)


def _phrases(lower: str, phrases: tuple[str, ...]) -> int:
    return sum(lower.count(p) for p in phrases)


def _code_value(text: str, lower: str, words: Counter[str]) -> float:
    fences = lower.count("```") // 2
    tokens = _phrases(lower, _CODE_SYMBOLS) + _hits(words, _CODE_KEYWORDS) + text.count(";\n") + text.count("{\n")
    cues = _hits(words, _CODE_WORDS) + _phrases(lower, _CODE_PHRASES)
    return min(1.0, 0.5 * min(fences, 1) + _saturate(tokens, 8) * 0.6 + _saturate(cues, 2) * 0.5)


def _math_value(text: str, lower: str, words: Counter[str]) -> float:
    symbols = sum(text.count(c) for c in _MATH_CHARS) + _phrases(text, _LATEX)
    exprs = len(_MATH_EXPR.findall(text))
    cues = _hits(words, _MATH_WORDS) + _phrases(lower, _MATH_PHRASES)
    return min(1.0, _saturate(symbols, 2) * 0.4 + _saturate(exprs, 2) * 0.3 + _saturate(cues, 1) * 0.7)


def _reasoning_value(text: str, lower: str, words: Counter[str]) -> float:
    cues = _hits(words, _REASONING_WORDS) + _phrases(lower, _REASONING_PHRASES)
    items = len(_NUMBERED.findall(text))
    questions = text.count("?")
    return min(
        1.0,
        _saturate(cues, 2) * 0.8 + _saturate(items, 3) * 0.3 + _saturate(max(0, questions - 1), 3) * 0.2,
    )


def _constraints_value(lower: str, words: Counter[str]) -> float:
    return _saturate(_hits(words, _CONSTRAINT_WORDS) + _phrases(lower, _CONSTRAINT_PHRASES), 4)


def _chars_value(chars: int) -> float:
    return min(1.0, math.log1p(chars) / math.log(_LEN_HIGH))


def _turns_value(turns: int) -> float:
    return _saturate(max(0, turns - 1), 10)


def _tools_value(tools: Any) -> float:
    if not tools:
        return 0.0
    n = len(tools) if isinstance(tools, list) else 1
    return min(1.0, 0.5 + 0.1 * n)


def raw_features(body: dict[str, Any]) -> tuple[dict[str, float], str]:
    """Raw feature values in [0, 1] (before weights) and the text an embedding should look at
    (the last user message, or the whole conversation when there is none)."""
    text, last_user, turns = conversation_text(body.get("messages"))
    window = _scan_window(text)
    lower = window.lower()
    words = Counter(lower.translate(_PUNCT).split())
    raw = {
        "length": _length_value(len(text)),
        "code": _code_value(window, lower, words),
        "math": _math_value(window, lower, words),
        "reasoning": _reasoning_value(window, lower, words),
        "constraints": _constraints_value(lower, words),
        "turns": _turns_value(turns),
        "tools": _tools_value(body.get("tools")),
        "chars": _chars_value(len(text)),
    }
    return raw, last_user or text
