"""Job-completion webhooks, signed per the Standard Webhooks specification.

https://www.standardwebhooks.com: each delivery carries ``webhook-id`` (stable across
retries of one message), ``webhook-timestamp`` (Unix seconds) and
``webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>``. Signing
and verification are the specification's own Python package (``standardwebhooks``), so
the key is read as it reads it: the secret is base64, with or without the ``whsec_``
prefix. Receivers verify with ``standardwebhooks.Webhook(secret).verify(body, headers)``
(or :func:`verify`, or any Standard Webhooks library), which rejects timestamps more than
five minutes from now.
"""

from __future__ import annotations

import datetime as dt
import time

import httpx
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Headers for one delivery of ``body`` (the UTF-8 JSON bytes as sent), ``timestamp`` in Unix seconds.

    Raises:
        standardwebhooks.webhooks.EmptyWebhookSecretError: ``secret`` decodes to no bytes.
    """
    signature = Webhook(secret).sign(msg_id, dt.datetime.fromtimestamp(timestamp, dt.UTC), body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": signature,
            "content-type": "application/json"}


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Whether ``headers`` carry a valid signature of ``body`` dated within five minutes of now."""
    try:
        Webhook(secret).verify(body, headers, json_parse=False)
    except (WebhookVerificationError, ValueError):
        return False
    return True


async def deliver(url: str, secret: str, msg_id: str, body: bytes, *, timeout_s: float = 10.0) -> str | None:
    """POST one signed delivery; returns ``None`` on a 2xx answer, else a short error description."""
    headers = sign(secret, msg_id, int(time.time()), body)
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            r = await client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}"
    return None if 200 <= r.status_code < 300 else f"HTTP {r.status_code}"
