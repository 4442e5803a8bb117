"""API keys: who may call the HTTP API, and for which tenant.

A key is ``rg_`` + 43 URL-safe characters (:func:`secrets.token_urlsafe` of 32 random bytes).
The store keeps only its SHA-256 (:func:`hash_key`) and its first characters (to recognise it
in a listing); the secret is shown once, when it is created (``raygrade keys create``), and is
never logged.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from raygrade.errors import InvalidRequestError, NotFoundError
from raygrade.store.schema import api_keys

#: What every key starts with (so a leaked one is recognisable by secret scanners).
KEY_PREFIX = "rg_"
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def hash_key(secret: str) -> str:
    """The SHA-256 (hex) under which the store keeps the key ``secret``."""
    return hashlib.sha256(secret.encode()).hexdigest()


def check_tenant(tenant: str) -> str:
    """``tenant`` if it is a tenant name: 1–128 of ``A-Z a-z 0-9 . _ -``, starting alphanumeric.

    Raises:
        InvalidRequestError: not a tenant name.
    """
    if not _TENANT.match(tenant):
        raise InvalidRequestError("a tenant name is 1-128 characters of A-Z a-z 0-9 . _ -, starting with a "
                                  "letter or digit", param="tenant")
    return tenant


@dataclass(frozen=True)
class ApiKeyInfo:
    """One key as listed: never its secret.

    Attributes:
        id: ``key_`` + 12 hex characters (what ``raygrade keys revoke`` takes).
        tenant: The tenant the key acts for.
        prefix: The key's first 7 characters.
        name: A label given at creation.
        created_at, revoked_at: Unix seconds (``revoked_at`` ``None`` while the key is valid).
    """

    id: str
    tenant: str
    prefix: str
    name: str | None
    created_at: float
    revoked_at: float | None


def _info(row) -> ApiKeyInfo:
    return ApiKeyInfo(id=row.id, tenant=row.tenant, prefix=row.prefix, name=row.name, created_at=row.created_at,
                      revoked_at=row.revoked_at)


class ApiKeys:
    """API-key operations of :class:`raygrade.store.JobStore` (needs ``engine`` and ``_clock``)."""

    engine: sa.Engine
    _clock: Callable[[], float]

    def create_key(self, tenant: str, name: str | None = None) -> tuple[ApiKeyInfo, str]:
        """A new key for ``tenant``: ``(its listing, the secret)``; the secret is not stored.

        Raises:
            InvalidRequestError: ``tenant`` is not a tenant name (:func:`check_tenant`).
        """
        check_tenant(tenant)
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        info = ApiKeyInfo(id=f"key_{uuid.uuid4().hex[:12]}", tenant=tenant, prefix=secret[:7],
                          name=name[:256] if name else None, created_at=self._clock(), revoked_at=None)
        with self.engine.begin() as conn:
            conn.execute(api_keys.insert().values(key_hash=hash_key(secret), **info.__dict__))
        return info, secret

    def list_keys(self, tenant: str | None = None, *, include_revoked: bool = False) -> list[ApiKeyInfo]:
        """Keys, oldest first: of ``tenant`` (or every tenant's), valid ones only unless ``include_revoked``."""
        q = sa.select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if tenant is not None:
            q = q.where(api_keys.c.tenant == tenant)
        if not include_revoked:
            q = q.where(api_keys.c.revoked_at.is_(None))
        with self.engine.connect() as conn:
            return [_info(r) for r in conn.execute(q)]

    def revoke_key(self, key_id: str) -> ApiKeyInfo:
        """Revoke a key (at once in the store; ingress replicas stop trusting it within
        ``ApiConfig.key_cache_s``). Revoking a revoked key changes nothing.

        Raises:
            NotFoundError: no key with that id.
        """
        with self.engine.begin() as conn:
            conn.execute(api_keys.update().where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                         .values(revoked_at=self._clock()))
            row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
        if row is None:
            raise NotFoundError(f"no API key with id {key_id!r}", param="key_id")
        return _info(row)

    def tenant_for_key(self, key_hash: str) -> str | None:
        """The tenant of the valid key whose SHA-256 is ``key_hash``; ``None`` for an unknown or revoked key."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(api_keys.c.tenant).where(
                api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None))).scalar_one_or_none()
