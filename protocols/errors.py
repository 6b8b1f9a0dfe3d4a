"""The one exception tree callers see, and its error bodies in each protocol's shape.

A `GatewayError` carries an HTTP status and OpenAI-style fields (`type`, `code`, `param`); the
route renders it in the caller's protocol (`body_for`), so the same refusal reaches an OpenAI SDK
as `{"error": {...}}` and an Anthropic SDK as `{"type": "error", "error": {...}}`, each with the
status its SDK maps to the right exception class.
"""

from __future__ import annotations

from contextlib import contextmanager

import msgspec

from protocols.api import Api

# HTTP status → Anthropic error type (as documented for the Messages API).
ANTHROPIC_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


class GatewayError(Exception):
    """An error the caller sees: HTTP status plus the fields every protocol's error body needs."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        details: object | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}
        self.details = details

    def body(self, api: Api = Api.CHAT) -> bytes:
        return body_for(api, self.status, self.message, type=self.type, code=self.code, param=self.param,
                        details=self.details)


def error_body(
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    details: object | None = None,
) -> bytes:
    """OpenAI's error JSON: `{"error": {"message", "type", "param", "code"}}`."""
    error: dict[str, object] = {"message": message, "type": type, "param": param, "code": code}
    if details is not None:
        error["details"] = details
    return msgspec.json.encode({"error": error})


def anthropic_error_body(status: int, message: str) -> bytes:
    """Anthropic's error JSON: `{"type": "error", "error": {"type", "message"}}`."""
    kind = ANTHROPIC_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return msgspec.json.encode({"type": "error", "error": {"type": kind, "message": message}})


def body_for(api: Api, status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
             param: str | None = None, details: object | None = None) -> bytes:
    if api is Api.MESSAGES:
        return anthropic_error_body(status, message)
    return error_body(message, type=type, code=code, param=param, details=details)


def status_for(api: Api, status: int) -> int:
    """The status a protocol's SDKs expect: Anthropic's say "overloaded" with 529, not 503."""
    return 529 if api is Api.MESSAGES and status == 503 else status


def bad_request(message: str, *, param: str | None = None, code: str | None = "invalid_request") -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


class Untranslatable(ValueError):
    """A request that cannot be expressed in the target's protocol; the caller gets a 400 naming why."""


@contextmanager
def translating(target: str):
    """Around a request translation: a shape the request struct let through but the translator
    cannot read (a missing key, a wrong type) is an `Untranslatable` 400 too, never a 500."""
    try:
        yield
    except Untranslatable:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise Untranslatable(f"request cannot be translated for {target}: {exc}") from exc


class UpstreamStreamError(Exception):
    """An in-band error event inside an upstream stream (the provider maps it to its taxonomy)."""

    def __init__(self, payload: dict) -> None:
        error = payload.get("error") if isinstance(payload.get("error"), dict) else {}
        super().__init__(error.get("message") or "upstream stream error")
        self.kind = error.get("type") or "api_error"
        self.message = str(self)
