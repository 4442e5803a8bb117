"""Job-completion webhooks, signed per the Standard Webhooks specification.

https://www.standardwebhooks.com: each delivery carries ``webhook-id`` (stable across
retries of one message), ``webhook-timestamp`` (Unix seconds) and
``webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>``. Signing
and verification are the specification's own Python package (``standardwebhooks``), so
the key is read as it reads it: the secret is base64, with or without the ``whsec_``
prefix. Receivers verify with ``standardwebhooks.Webhook(secret).verify(body, headers)``
(or :func:`verify`, or any Standard Webhooks library), which rejects timestamps more than
five minutes from now.

Destinations are checked twice, at submission (:func:`check_url`, :func:`resolve_checked` from
the job registry) and again at every delivery, which connects to the address it checked (no
window for DNS rebinding): only http(s), no credentials in the URL, and every address the host
resolves to public, unless it is in the deployment's allow-list
(``StoreConfig.webhook_allowed_networks``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
import time
from collections.abc import Sequence

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


def check_url(url: str) -> httpx.URL:
    """``url`` parsed by the client that sends webhooks, if it may be one.

    Raises:
        ValueError: not parseable, control characters, not http(s), no host, or credentials
            in the URL (they would be stored and sent in plain text).
    """
    if any(ord(ch) < 0x21 or ch == "\x7f" for ch in url):
        raise ValueError("the webhook URL contains whitespace or control characters")
    try:
        u = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"the webhook URL cannot be parsed ({exc})") from None
    if u.scheme not in ("http", "https") or not u.host:
        raise ValueError("the webhook URL must be http(s)://host/...")
    if u.userinfo:
        raise ValueError("the webhook URL must not carry credentials")
    return u


def address_allowed(address: str, allowed_networks: Sequence[str] = ()) -> bool:
    """Whether webhooks may go to IP ``address``: in ``allowed_networks`` (CIDRs), or public —
    not loopback, private, link-local, multicast, reserved, unspecified or shared (v4 and v6;
    IPv4-mapped IPv6 as its IPv4 address)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in ipaddress.ip_network(n, strict=False) for n in allowed_networks):
        return True
    return ip.is_global and not ip.is_multicast


async def resolve_checked(u: httpx.URL, allowed_networks: Sequence[str] = ()) -> str:
    """The address to connect to for ``u``: its host's first address, once every address it
    resolves to is allowed (:func:`address_allowed`); numeric forms (``2130706433``,
    ``0x7f.1``) resolve as the system resolver reads them.

    Raises:
        ValueError: the host does not resolve, or resolves to an address not allowed.
    """
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(u.host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise ValueError(f"the webhook host {u.host!r} does not resolve") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses or not all(address_allowed(a, allowed_networks) for a in addresses):
        raise ValueError(f"the webhook host {u.host!r} resolves to an address webhooks may not reach "
                         "(loopback, private, link-local, reserved; see webhook_allowed_networks)")
    return addresses[0]


async def deliver(url: str, secret: str, msg_id: str, body: bytes, *, timeout_s: float = 10.0,
                  allowed_networks: Sequence[str] = ()) -> str | None:
    """POST one signed delivery to the address checked by :func:`resolve_checked` (the
    ``Host`` header and TLS server name stay the URL's); returns ``None`` on a 2xx answer, else
    a short error description (a refused or unparseable URL included: a failed attempt)."""
    try:
        u = check_url(url)
        address = await resolve_checked(u, allowed_networks)
    except ValueError as exc:
        return str(exc)
    headers = sign(secret, msg_id, int(time.time()), body)
    headers["host"] = u.netloc.decode("ascii")
    extensions = {"sni_hostname": u.host} if u.scheme == "https" else {}
    try:
        async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) as client:
            r = await client.post(u.copy_with(host=address), content=body, headers=headers, extensions=extensions)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}"
    return None if 200 <= r.status_code < 300 else f"HTTP {r.status_code}"
