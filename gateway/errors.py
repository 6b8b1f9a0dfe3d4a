"""Errors in OpenAI's wire format, so every SDK raises its usual exception class."""

from __future__ import annotations

import msgspec


class GatewayError(Exception):
    """An error the caller sees: HTTP status plus OpenAI's `{"error": {...}}` body."""

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

    def body(self) -> bytes:
        return error_body(self.message, type=self.type, code=self.code, param=self.param, details=self.details)


def error_body(
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    details: object | None = None,
) -> bytes:
    error: dict[str, object] = {"message": message, "type": type, "param": param, "code": code}
    if details is not None:
        error["details"] = details
    return msgspec.json.encode({"error": error})


def bad_request(message: str, *, param: str | None = None, code: str | None = "invalid_request") -> GatewayError:
    return GatewayError(400, message, param=param, code=code)
