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

from protocols.text import estimate_messages_tokens
from protocols.turns import Turns, chat_turns

# Only this much of a prompt is scanned for cues (head and tail); length still counts all of it.
# Cues in the middle of a 100 kB document add nothing the head and tail did not already show, and
# scanning stays O(1) per request.
_SCAN_HEAD = 3000
_SCAN_TAIL = 1000
# Length feature: log-scaled between these prompt sizes (characters): 0 at or below the first,
# 1 at or beyond the second.
_LEN_LOW = 80.0
_LEN_HIGH = 12000.0
# Context feature: log-scaled prompt tokens of the whole request, 1 at this many.
_CONTEXT_HIGH = 100_000.0


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
# Facts about the conversation around the ask, offered to a learned model (its file names the
# features it uses); the hand-tuned heuristic does not weigh them.
CONVERSATION_FEATURES: tuple[str, ...] = ("tool_results", "tool_loop", "context")


@dataclass(frozen=True, slots=True)
class Conversation:
    """What surrounds the latest user turn. Scoring reads the ask's own words plus these, never
    the system prompt or the tool schemas (an agent's 20k-token system prompt says nothing about
    how hard this task is)."""

    turns: int = 1  # user and assistant turns so far, this one included
    tool_results: int = 0  # tool results in the conversation
    tool_loop: bool = False  # this request continues a tool loop (its newest input is a tool result)
    tools: int = 0  # tools declared
    context_tokens: int = 0  # the whole request's estimated prompt tokens (system, tools, history)

    @classmethod
    def of(cls, turns: Turns, context_tokens: int) -> Conversation:
        return cls(turns=max(1, turns.user_turns + turns.assistant_turns), tool_results=turns.tool_results,
                   tool_loop=turns.tool_loop, tools=turns.tools, context_tokens=context_tokens)


SINGLE = Conversation()


def ask_of(body: dict[str, Any]) -> tuple[str, Conversation]:
    """(latest user turn, conversation) of a chat-shaped body: training rows, benches, tests."""
    turns = chat_turns(body)
    messages = body.get("messages") if isinstance(body.get("messages"), list) else []
    return turns.ask, Conversation.of(turns, estimate_messages_tokens(messages, body.get("tools")))


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


def _tools_value(tools: int) -> float:
    return min(1.0, 0.5 + 0.1 * tools) if tools > 0 else 0.0


def _context_value(tokens: int) -> float:
    return min(1.0, math.log1p(max(0, tokens)) / math.log(_CONTEXT_HIGH))


def raw_features(text: str, conversation: Conversation = SINGLE) -> dict[str, float]:
    """Raw feature values in [0, 1] (before weights): the hand features of the ask's text, then
    the conversation's (`CONVERSATION_FEATURES`)."""
    window = _scan_window(text)
    lower = window.lower()
    words = Counter(lower.translate(_PUNCT).split())
    raw = {
        "length": _length_value(len(text)),
        "code": _code_value(window, lower, words),
        "math": _math_value(window, lower, words),
        "reasoning": _reasoning_value(window, lower, words),
        "constraints": _constraints_value(lower, words),
        "turns": _turns_value(conversation.turns),
        "tools": _tools_value(conversation.tools),
        "chars": _chars_value(len(text)),
        "tool_results": _saturate(conversation.tool_results, 5),
        "tool_loop": 1.0 if conversation.tool_loop else 0.0,
        "context": _context_value(conversation.context_tokens),
    }
    return raw
