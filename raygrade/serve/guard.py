"""The API's gate: API keys to tenants (:class:`Authenticator`), and bounded request bodies
(:class:`RequestGuard`, ASGI middleware, which authenticates before a byte of the body is read).

Serve's proxy hands a request to the ingress replica as soon as its headers arrive; the body
follows as the client sends it, and until it has arrived the request holds one of the replica's
``max_ongoing_requests``. So the replica itself bounds what a body may cost: its size, from
``Content-Length`` before a byte is read and again while it streams (413), and its pace, a
``body_idle_timeout_s`` between parts and ``body_timeout_s`` in all (408).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

from fastapi import HTTPException
from fastapi.responses import JSONResponse

from raygrade.config import DEFAULT_TENANT, ApiConfig
from raygrade.errors import (
    AuthenticationError,
    RaygradeError,
    RequestTooLargeError,
    TooManyFailedAuthenticationsError,
)
from raygrade.store.keys import KEY_PREFIX, hash_key

#: Routes FastAPI serves itself: the API's description (a key needed unless ``public_docs``).
DOC_PATHS = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
#: Routes answered without a key.
#: Paths served without a key: the probes, and the review page's static files (they hold no data;
#: the page's script calls the API with the key the reviewer enters).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/review", "/review/review.js", "/review/review.css"})


class FailedLookups:
    """Per client, a token bucket of look-ups of unknown keys (GCRA: one theoretical arrival time
    per client; Turner's generic cell rate algorithm as in ATM's I.371). Memory is bounded: the
    table starts over when it holds :attr:`MAX_CLIENTS` clients.

    Args:
        per_min: Failed look-ups a client may cause per minute.
        burst: How many it may cause at once.
        clock: Monotonic seconds.
    """

    MAX_CLIENTS = 10_000

    def __init__(self, per_min: float, burst: int, clock: Callable[[], float]):
        self._interval, self._tolerance = 60.0 / per_min, (burst - 1) * 60.0 / per_min
        self._clock = clock
        self._tat: dict[str, float] = {}

    def wait_s(self, client: str) -> float:
        """Seconds until ``client`` may cause another failed look-up (0 when it may now)."""
        tat = self._tat.get(client)
        return 0.0 if tat is None else max(0.0, tat - self._tolerance - self._clock())

    def failed(self, client: str) -> None:
        """Count one failed look-up of ``client``'s."""
        now = self._clock()
        if len(self._tat) >= self.MAX_CLIENTS and client not in self._tat:
            self._tat.clear()
        self._tat[client] = max(self._tat.get(client, now), now) + self._interval


class Authenticator:
    """API key → tenant, with a short cache of verified keys, a longer one of unknown keys, one
    look-up at a time per key, and a per-client budget of look-ups that find no key
    (:class:`FailedLookups`): made-up keys cost the store little, and one client's flood of
    them does not slow other tenants.

    Args:
        lookup: ``async (sha256 hex) -> tenant | None`` (the job registry's ``tenant_for_key``).
        config: The API settings (``auth``, ``key_cache_s``, ``unknown_key_cache_s``,
            ``failed_auth_per_min``, ``failed_auth_burst``).
        clock: Monotonic seconds (injected in tests).
    """

    #: Keys remembered at once (each cache); a cache starts over when full.
    MAX_CACHED = 10_000

    def __init__(self, lookup: Callable[[str], Awaitable[str | None]], config: ApiConfig,
                 clock: Callable[[], float] = time.monotonic):
        self._lookup, self._cfg, self._clock = lookup, config, clock
        self._cache: dict[str, tuple[str, float]] = {}
        self._unknown: dict[str, float] = {}  # key hash → until when it is known to be unknown
        self._in_flight: dict[str, asyncio.Future] = {}
        self._failed = FailedLookups(config.failed_auth_per_min, config.failed_auth_burst, clock)

    async def tenant(self, key: str | None, client: str = "") -> str:
        """The tenant ``key`` (the bearer token, without ``Bearer``) acts for; ``default`` while
        authentication is disabled. ``client``: who sends it (the peer's address), for the
        budget of failed look-ups.

        Raises:
            AuthenticationError: no key, or one the store does not know or has revoked (401).
            TooManyFailedAuthenticationsError: ``client`` has spent its failed look-ups and the
                key was not verified recently (429, with when to retry).
        """
        if self._cfg.auth == "disabled":
            return DEFAULT_TENANT
        if not key:
            raise AuthenticationError("no API key: send 'Authorization: Bearer <key>' (create one with "
                                      "'raygrade keys create --tenant NAME')", code="missing_api_key")
        if not key.startswith(KEY_PREFIX) or len(key) > 128:
            raise AuthenticationError("invalid API key", code="invalid_api_key")
        h, now = hash_key(key), self._clock()
        hit = self._cache.get(h)
        if hit is not None and hit[1] > now:
            return hit[0]
        if self._unknown.get(h, 0.0) > now:
            raise AuthenticationError("invalid API key", code="invalid_api_key")
        if (wait := self._failed.wait_s(client)) > 0:
            raise TooManyFailedAuthenticationsError(
                f"too many requests with unknown API keys from this client; retry in {math.ceil(wait)} s",
                retry_after_s=wait)
        tenant = await self._look_up(h)
        now = self._clock()
        if tenant is None:  # unknown or revoked (a key created later is a new random one: never cached here)
            self._cache.pop(h, None)
            self._failed.failed(client)
            self._remember(self._unknown, h, now + self._cfg.unknown_key_cache_s)
            raise AuthenticationError("invalid API key", code="invalid_api_key")
        self._remember(self._cache, h, (tenant, now + self._cfg.key_cache_s))
        return tenant

    async def _look_up(self, h: str) -> str | None:
        """One store look-up per key hash at a time: concurrent callers share it."""
        fut = self._in_flight.get(h)
        if fut is None:
            fut = self._in_flight[h] = asyncio.ensure_future(self._lookup(h))
            fut.add_done_callback(lambda _: self._in_flight.pop(h, None))
        return await asyncio.shield(fut)

    def _remember(self, cache: dict, h: str, value) -> None:
        if len(cache) >= self.MAX_CACHED and h not in cache:
            cache.clear()
        cache[h] = value


def error_response(err: RaygradeError) -> JSONResponse:
    """``err`` as the API's error body, with ``WWW-Authenticate`` on a 401 (RFC 6750) and
    ``Retry-After`` (whole seconds, rounded up; RFC 9110 §10.2.3) when the error says when to retry."""
    headers = {"WWW-Authenticate": "Bearer"} if err.status_code == 401 else {}
    if (retry_after := getattr(err, "retry_after_s", None)) is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return JSONResponse(status_code=err.status_code, content=err.to_openai_body(), headers=headers)


def route_path(scope) -> str:
    """The request's path below the application's route prefix (ASGI ``root_path``)."""
    path, root = scope["path"], scope.get("root_path", "")
    return (path[len(root):] or "/") if root and path.startswith(root) else path


def client_host(scope) -> str:
    """The peer's address as the ASGI server saw it (``""`` when it does not say). Behind Serve's
    proxy this is the client's address; behind a load balancer, the balancer's, unless Serve's
    proxy is run with forwarded headers trusted."""
    client = scope.get("client")
    return str(client[0]) if client else ""


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The token of an ``Authorization: Bearer …`` header among raw ASGI ``headers``."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


class RequestGuard:
    """ASGI middleware: the caller's key (401), then bounded bodies (413, 408).

    Every path but :data:`PUBLIC_PATHS` (and the API's description with ``public_docs``) needs a valid
    key, checked before the body is read; the tenant goes to ``request.state.tenant`` and the key's
    SHA-256 to ``request.state.key_hash`` (``None`` with authentication disabled). Reads
    its settings from the app's state (``api_config``, ``authenticator``), which the ingress
    sets when its replica starts.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = scope["app"].state
        cfg: ApiConfig = getattr(state, "api_config", None) or ApiConfig()
        path = route_path(scope)
        if path not in PUBLIC_PATHS and not (cfg.public_docs and path in DOC_PATHS):
            token = bearer_token(scope["headers"])
            try:
                tenant = await state.authenticator.tenant(token, client_host(scope))
            except RaygradeError as err:
                return await error_response(err)(scope, receive, send)
            scope.setdefault("state", {})["tenant"] = tenant
            # Who acts (reviews name their key in the audit trail): the key's hash, never the key.
            scope["state"]["key_hash"] = hash_key(token) if token and cfg.auth != "disabled" else None
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > cfg.max_body_bytes:
            too_large = RequestTooLargeError(f"the request body is {int(declared)} bytes; the limit is "
                                             f"{cfg.max_body_bytes}", code="request_too_large")
            return await error_response(too_large)(scope, receive, send)
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.body_timeout_s
        received, complete = 0, False

        async def bounded_receive():
            # FastAPI turns any other exception raised while it reads a body into a 400; an
            # HTTPException keeps its status (the ingress's handler writes raygrade's error body).
            nonlocal received, complete
            if complete:  # the body is in: later calls wait for a disconnect, unbounded
                return await receive()
            wait = min(cfg.body_idle_timeout_s, deadline - loop.time())
            try:
                message = await asyncio.wait_for(receive(), timeout=max(wait, 0.0))
            except TimeoutError:
                raise HTTPException(408, f"the request body did not arrive in time (the limits are "
                                         f"{cfg.body_idle_timeout_s:g} s between parts and {cfg.body_timeout_s:g} s "
                                         "in all)") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cfg.max_body_bytes:
                    raise HTTPException(413, f"the request body is over the limit of {cfg.max_body_bytes} bytes")
                complete = not message.get("more_body", False)
            return message

        return await self.app(scope, bounded_receive, send)
