"""Which caller headers travel to an upstream that speaks the caller's protocol.

Verbatim means verbatim: clients put meaning in headers (Anthropic betas, Codex's
`x-openai-internal-codex-responses-lite`, session ids), and an upstream of the same protocol must
see them as sent. What never travels: the caller's credentials (the gateway authenticates with its
own), hop-by-hop and framing headers (the gateway's HTTP client writes its own), and the gateway's
own `x-gateway-*` controls.
"""

from __future__ import annotations

from collections.abc import Mapping

_NEVER = frozenset({
    # credentials: the upstream gets the gateway's key, never the caller's
    "authorization", "x-api-key", "api-key", "cookie", "proxy-authorization",
    # whose account the gateway's key bills: the operator's choice, never the caller's
    "openai-organization", "openai-project",
    # framing and hop-by-hop (RFC 9110 §7.6.1): the gateway's client sets its own
    "host", "content-length", "content-type", "content-encoding", "transfer-encoding", "connection",
    "keep-alive", "te", "trailer", "upgrade", "expect", "accept", "accept-encoding", "proxy-connection",
    # where the request came from: the gateway is the upstream's client
    "forwarded", "via", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-real-ip",
    "x-request-id", "user-agent",
})
_OWN_PREFIXES = ("x-gateway-", "x-stainless-", ":")


def verbatim_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The caller's headers a same-protocol upstream should see, names lower-cased."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in _NEVER or lowered.startswith(_OWN_PREFIXES):
            continue
        out[lowered] = value
    return out


def for_target(forwarded: Mapping[str, str], configured: Mapping[str, str]) -> dict[str, str]:
    """The forwarded headers minus those the operator set for the target (`targets.*.headers`):
    an operator's routing, auth or billing header is never replaced by a caller's."""
    if not configured or not forwarded:
        return dict(forwarded)
    taken = {name.lower() for name in configured}
    return {name: value for name, value in forwarded.items() if name.lower() not in taken}
