"""API key → tenant. Keys are only ever stored as SHA-256 hashes; comparisons are constant-time.

The presented key is hashed first and the hash is looked up, so no lookup time depends on how
much of a secret matches; the final `hmac.compare_digest` guards the match itself.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from collections.abc import Mapping

from gateway.errors import GatewayError
from policies.schema import Policy, TenantSpec

KEY_PREFIX = "sk-gw-"
_MAX_KEY_LENGTH = 512


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    spec: TenantSpec
    key_hash: str


def _normal(digest: str) -> str:
    return digest.removeprefix("sha256:")


class KeyRing:
    """Resolves bearer keys to tenants; built from a policy and swapped with it on reload."""

    def __init__(
        self,
        policy: Policy,
        extra_tenants: Mapping[str, TenantSpec] | None = None,
        extra_admin_hashes: tuple[str, ...] = (),
    ) -> None:
        self._by_hash: dict[str, tuple[str, TenantSpec, str]] = {}
        self._admin = {_normal(h) for h in (*policy.admin_keys, *extra_admin_hashes)}
        tenants = dict(policy.tenants)
        tenants.update(extra_tenants or {})
        self._tenants = tenants
        for name, spec in tenants.items():
            revoked = {_normal(h) for h in spec.revoked_keys}
            for digest in spec.keys:
                if _normal(digest) not in revoked:
                    self._by_hash[_normal(digest)] = (name, spec, _normal(digest))

    def authenticate(self, headers: Mapping[str, str]) -> Principal:
        key = presented_key(headers)
        digest = hash_key(key)
        entry = self._by_hash.get(digest)
        if entry is None or not hmac.compare_digest(digest, entry[2]):
            raise unauthorized("Incorrect API key provided.", code="invalid_api_key")
        return Principal(tenant=entry[0], spec=entry[1], key_hash=digest)

    def tenants(self) -> list[str]:
        return list(self._tenants)

    def tenant_spec(self, tenant: str) -> TenantSpec | None:
        return self._tenants.get(tenant)

    def is_admin(self, headers: Mapping[str, str]) -> bool:
        try:
            digest = hash_key(presented_key(headers))
        except GatewayError:
            return False
        return any(hmac.compare_digest(digest, admin) for admin in self._admin)

    def require_admin(self, headers: Mapping[str, str]) -> None:
        presented_key(headers)  # 401 when missing or malformed
        if not self.is_admin(headers):
            raise GatewayError(403, "This endpoint needs an admin key.", type="permission_error", code="forbidden")


def presented_key(headers: Mapping[str, str]) -> str:
    """The key from `Authorization: Bearer` or `x-api-key`; 401 when missing or malformed."""
    authorization = headers.get("authorization")
    if authorization is not None:
        scheme, _, key = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise unauthorized("Malformed Authorization header: expected 'Bearer <key>'.", code="invalid_api_key")
        key = key.strip()
    else:
        key = (headers.get("x-api-key") or "").strip()
        if not key:
            raise unauthorized(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.", code="missing_api_key"
            )
    if len(key) > _MAX_KEY_LENGTH or not key.isprintable() or " " in key:
        raise unauthorized("Malformed API key.", code="invalid_api_key")
    return key


def unauthorized(message: str, *, code: str) -> GatewayError:
    return GatewayError(401, message, type="invalid_request_error", code=code, headers={"www-authenticate": "Bearer"})
