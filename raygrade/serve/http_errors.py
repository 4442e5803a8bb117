"""The HTTP API's error bodies for FastAPI's own errors (validation) and the error statuses each
route declares in the OpenAPI document; :mod:`raygrade.serve.ingress` installs them."""

from typing import Any

from raygrade.protocol import ErrorResponse


def _loc_to_param(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


def validation_error_body(errs: list[dict[str, Any]], body: Any = None) -> dict[str, Any]:
    """The OpenAI-shaped error body for FastAPI's validation errors of one request.

    Args:
        errs: ``RequestValidationError.errors()``.
        body: ``RequestValidationError.body``: for a body that is not JSON, the text FastAPI
            tried to parse (its error's ``loc`` is ``("body", <character offset>)``).

    Returns:
        ``{"error": {"message", "type": "invalid_request_error", "param", "code": None}}``:
        ``param`` names the first invalid field (``None`` for a body that is not JSON, whose
        message gives the line and column instead, as Python's ``json`` counts them: from 1).
        Messages name fields and constraints only and never echo input values (student text).
    """
    first: dict[str, Any] = errs[0] if errs else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        loc = tuple(first.get("loc", ()))
        pos = loc[-1] if loc and isinstance(loc[-1], int) else None
        reason = str((first.get("ctx") or {}).get("error") or "JSON decode error")
        where = ""
        if pos is not None and isinstance(body, str | bytes):
            text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
            line = text.count("\n", 0, pos) + 1
            where = f" at line {line}, column {pos - (text.rfind(chr(10), 0, pos) + 1) + 1} (character {pos})"
        return {"error": {"message": f"the request body is not valid JSON: {reason}{where}",
                          "type": "invalid_request_error", "param": None, "code": None}}
    param = _loc_to_param(tuple(first.get("loc", ())))
    msg = f"{param}: {first.get('msg', 'invalid value')}"
    if len(errs) > 1:
        msg += f" (and {len(errs) - 1} more errors)"
    return {"error": {"message": msg, "type": "invalid_request_error", "param": param, "code": None}}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route really answers (401 and 429 on every
    authenticated route, 400 for a malformed path or query, 503 when the store is down)."""
    what = {400: "Invalid request (``param`` names the field).", 401: "No API key, or an invalid or revoked one.",
            404: "No such job (or another tenant's).", 408: "The request body did not arrive in time.",
            409: "Conflict: an idempotency key reused with another body, or a job that already ended.",
            413: "The request body is over the size limit.",
            429: "Too many requests: this client sent too many unknown API keys (`rate_limit_error`, code "
                 "`too_many_failed_authentications`), or, for a new job or file, the tenant's quota refuses it "
                 "(`insufficient_quota`); `Retry-After` says when to retry where a wait helps.",
            501: "An optional extra the route needs is not installed on the server (`missing_dependency`; the "
                 "message names the extra).",
            503: "The job store is unavailable; try again."}
    return {c: {"model": ErrorResponse, "description": what[c]} for c in sorted({400, 401, 429, 503, *codes})}
