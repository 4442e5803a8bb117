"""The HTTP API's settings: authentication and request bounds (:class:`ApiConfig`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from raygrade.config.rate_limit import _Config

#: The tenant every caller belongs to while authentication is disabled.
DEFAULT_TENANT = "default"


class ApiConfig(_Config):
    """Who may call the HTTP API, and how much one request may ask of it.

    Attributes:
        auth: ``api_keys`` (default): every route except ``/healthz``, ``/readyz`` needs
            ``Authorization: Bearer <key>``; a key belongs to one tenant (``raygrade keys create
            --tenant …``), and a tenant sees only its own jobs. ``disabled``: no authentication,
            every caller is tenant ``default`` — for a laptop or a test, never for a network; the
            ingress logs a warning saying so at start-up.
        max_body_bytes: Largest request body, in bytes (default 64 MiB: a class of 30 students
            with four 500 KB scanned pages each, base64-encoded, with room to spare). Checked from
            ``Content-Length`` before the body is read and again while it streams: HTTP 413.
        body_idle_timeout_s: Seconds the API waits for the next part of a request body before
            it answers 408 and closes the request (a stalled upload holds nothing for longer).
        body_timeout_s: Seconds a whole request body may take to arrive (408 after that).
        key_cache_s: Seconds an ingress replica trusts a key it has verified; a revoked key
            stops working within this time.
        unknown_key_cache_s: Seconds an ingress replica remembers a key the store does not know
            (answered 401 without a look-up; keys are random, so none is created under it).
        failed_auth_per_min: Look-ups of unknown keys a client (its IP address as the ingress
            sees it) may cause per minute, a token bucket of ``failed_auth_burst``; beyond it the
            client's requests with keys not verified recently get 429 without a look-up, so a
            flood of made-up keys cannot crowd the store's thread. Keys it has verified still pass.
        failed_auth_burst: The bucket's size (failed look-ups allowed at once).
        max_request_pixels: Most pixels (width × height, summed over every page) one job's page
            files or one uploaded file may hold, read from their headers (a PDF page's at the
            rendering dpi) before a pixel is decoded: HTTP 400 above it. Default 5·10⁹: a class
            of 2,000 A4 pages at 150 dpi.
        public_docs: Serve ``/docs`` and ``/openapi.json`` without a key.
    """

    auth: Literal["api_keys", "disabled"] = "api_keys"
    max_body_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    body_idle_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=300.0, gt=0)
    key_cache_s: float = Field(default=10.0, ge=0)
    unknown_key_cache_s: float = Field(default=60.0, ge=0)
    failed_auth_per_min: float = Field(default=30.0, gt=0)
    failed_auth_burst: int = Field(default=20, ge=1)
    max_request_pixels: int = Field(default=5_000_000_000, gt=0)
    public_docs: bool = False
