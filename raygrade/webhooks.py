"""Job-completion webhooks, signed per the Standard Webhooks specification.

https://www.standardwebhooks.com: each delivery carries ``webhook-id`` (stable across
retries of one message), ``webhook-timestamp`` (Unix seconds) and
``webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>``. The key
is the secret's bytes, or for a ``whsec_``-prefixed secret the base64 after the prefix.
Receivers verify with :func:`verify` (or any Standard Webhooks library) and should
reject timestamps more than a few minutes old.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import time

import httpx


def _key(secret: str) -> bytes:
    return base64.b64decode(secret[len("whsec_"):]) if secret.startswith("whsec_") else secret.encode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Headers for one delivery of ``body`` (bytes as sent)."""
    mac = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": "v1," + base64.b64encode(mac).decode(), "content-type": "application/json"}


def verify(secret: str, headers: dict[str, str], body: bytes, *, tolerance_s: float = 300,
           now: float | None = None) -> bool:
    """Whether ``headers`` (lower-case names) carry a valid, fresh signature of ``body``."""
    try:
        ts = int(headers["webhook-timestamp"])
        expected = sign(secret, headers["webhook-id"], ts, body)["webhook-signature"].split(",", 1)[1]
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    given = [s.split(",", 1)[1] for s in headers.get("webhook-signature", "").split() if s.startswith("v1,")]
    return any(hmac.compare_digest(expected, g) for g in given)


def backoff_s(attempt: int, *, base_s: float = 1.0, cap_s: float = 300.0) -> float:
    """Seconds before retry ``attempt + 1``: full-jitter exponential backoff (AWS Architecture Blog, 2015)."""
    return random.uniform(0, min(cap_s, base_s * 2 ** attempt))


async def deliver(url: str, secret: str, msg_id: str, body: bytes, *, timeout_s: float = 10.0) -> str | None:
    """POST one signed delivery; returns ``None`` on a 2xx answer, else a short error description."""
    headers = sign(secret, msg_id, int(time.time()), body)
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            r = await client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}"
    return None if 200 <= r.status_code < 300 else f"HTTP {r.status_code}"
