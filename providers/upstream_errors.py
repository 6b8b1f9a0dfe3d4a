"""Upstream HTTP errors → the provider taxonomy, for the providers that speak HTTP themselves.

(Wire formats live in `protocols/`; this is only about what an upstream's error body means.)
"""

from __future__ import annotations

import msgspec

from providers.base import ProviderError, error_from_status, parse_retry_after


class _ErrorDetail(msgspec.Struct):
    message: str | None = None


class _ErrorPeek(msgspec.Struct):
    error: _ErrorDetail | str | None = None
    message: str | None = None
    detail: str | None = None


_error_decoder = msgspec.json.Decoder(_ErrorPeek)


def error_message(body: bytes, status: int) -> str:
    try:
        peek = _error_decoder.decode(body)
    except msgspec.DecodeError:
        text = body[:500].decode("utf-8", "replace").strip()
        return text or f"upstream answered HTTP {status}"
    if isinstance(peek.error, _ErrorDetail) and peek.error.message:
        return peek.error.message
    if isinstance(peek.error, str):
        return peek.error
    return peek.message or peek.detail or f"upstream answered HTTP {status}"


def status_error(status: int, body: bytes, headers, target: str) -> ProviderError:
    return error_from_status(
        status, error_message(body, status), target=target, retry_after=parse_retry_after(headers.get("retry-after"))
    )
