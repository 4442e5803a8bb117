"""The review page (``GET /review``): a small static page whose script calls the HTTP API with the
key the reviewer enters (kept in the tab's ``sessionStorage`` only). Its files are package data."""

from __future__ import annotations

from importlib import resources

#: The page's files and their media types (``GET /review`` and ``GET /review/<name>``).
ASSETS = {"review.html": "text/html; charset=utf-8", "review.js": "text/javascript; charset=utf-8",
          "review.css": "text/css; charset=utf-8"}

#: Headers of every asset: the page runs only its own script, talks only to this app, shows
#: page images fetched with the key (``blob:`` URLs), and cannot be framed.
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
                                "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def asset(name: str) -> bytes:
    """The bytes of one of :data:`ASSETS`. Raises ``KeyError`` for any other name."""
    if name not in ASSETS:
        raise KeyError(name)
    return resources.files(__package__).joinpath(name).read_bytes()
