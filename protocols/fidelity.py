"""The one rule every translator follows: nothing the caller said changes silently.

For each field of a request, a translator does exactly one of four things:
  * carries it faithfully (nothing to report);
  * maps it to the nearest equivalent the target has (`mapped(name)`: the `x-gateway-mapped`
    response header), e.g. `response_format` stated as a system instruction for Anthropic;
  * drops it or changes its value (`dropped(name)`: the `x-gateway-dropped` header), e.g. a
    temperature of 1.7 clamped to Anthropic's 1.0, a whitespace-only stop sequence removed;
  * refuses the request (`Untranslatable`: a 400 in the caller's protocol).

Translators report where they decide, deep inside their helpers, so the code that drops a value
is the code that names it. `recording()` collects the reports of one translation (every hop of a
chained one, e.g. Responses → Chat → Messages, since the hops run inside it); outside a recording
(routing and estimates translate leniently too) reports go nowhere.

Names: a top-level field is its key (`temperature`); a nested one is the object it sits in and
its key (`messages.name`, `image_url.detail`, `tool_result.image`), in the caller's terms.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Report:
    """What one translation did not carry as it was said."""

    dropped: set[str] = field(default_factory=set)
    mapped: set[str] = field(default_factory=set)

    def headers(self) -> dict[str, str]:
        """The response headers that say so (none when everything was carried)."""
        headers = {}
        if self.dropped:
            headers["x-gateway-dropped"] = ",".join(sorted(self.dropped))
        if self.mapped - self.dropped:
            headers["x-gateway-mapped"] = ",".join(sorted(self.mapped - self.dropped))
        return headers


_REPORT: contextvars.ContextVar[Report | None] = contextvars.ContextVar("translation_report", default=None)


@contextmanager
def recording() -> Iterator[Report]:
    """Collect what the translations run inside the block drop or map."""
    report = Report()
    token = _REPORT.set(report)
    try:
        yield report
    finally:
        _REPORT.reset(token)


def dropped(*names: str) -> None:
    """The target will not see these fields (or not with the caller's value)."""
    report = _REPORT.get()
    if report is not None:
        report.dropped.update(names)


def mapped(*names: str) -> None:
    """These fields reach the target as their nearest equivalent, not as they were."""
    report = _REPORT.get()
    if report is not None:
        report.mapped.update(names)


def _said(value: Any) -> bool:
    return value is not None and value != "" and value != [] and value != {}


def unread(obj: Mapping[str, Any], known: Iterable[str], where: str) -> None:
    """Name every key of `obj` a translator does not read (`where.key`), unless it says nothing
    (None, empty): the generic half of the rule, for objects whose keys a target cannot take."""
    known = frozenset(known)
    dropped(*(f"{where}.{key}" for key, value in obj.items() if key not in known and _said(value)))
