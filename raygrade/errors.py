"""raygrade's one exception tree.

Every error raised inside raygrade is a :class:`RaygradeError`. Third-party
errors (openai, httpx, Ray) are translated into this tree at exactly one
boundary each (:func:`raygrade.providers.openai_compat.map_openai_errors` for
providers, the FastAPI exception handlers in :mod:`raygrade.serve.ingress` for
HTTP). All classes are plain picklable exceptions so they cross Ray actor
boundaries intact.

The HTTP translation follows the OpenAI error body used by vLLM's OpenAI
entrypoints: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

from typing import Any


class RaygradeError(Exception):
    """Base class of every raygrade error.

    Attributes:
        message: Human-readable description (never contains student text or secrets).
        status_code: HTTP status the ingress answers with when this error reaches it.
        error_type: The OpenAI-style ``error.type`` string.
        param: Name of the offending field, when there is one.
        http_status, body: On errors the HTTP client raises (:mod:`raygrade.client`): the
            server's status and parsed error body (``None`` elsewhere).
    """

    status_code: int = 500
    error_type: str = "internal_error"
    http_status: int | None = None
    body: Any = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def __reduce__(self):  # keep kwargs across pickling (Ray actor boundaries)
        return (_rebuild, (type(self), self.message, self.__dict__.copy()))

    def to_openai_body(self) -> dict[str, Any]:
        """Return the OpenAI-shaped error body ``{"error": {...}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,  # a string (OpenAI's convention) or null; the HTTP status says the class
            }
        }


def raygrade_cause(exc: BaseException) -> RaygradeError | None:
    """The :class:`RaygradeError` behind ``exc``: itself, or the cause Ray wraps when a replica
    or actor raised it (``RayTaskError.cause``); ``None`` for anything else (a lost replica)."""
    for candidate in (getattr(exc, "cause", None), exc.__cause__, exc):
        if isinstance(candidate, RaygradeError) and "message" in candidate.__dict__:
            return candidate
    return None


def _rebuild(cls: type[RaygradeError], message: str, state: dict[str, Any]) -> RaygradeError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class ConfigError(RaygradeError):
    """A configuration value is missing or inconsistent (raised at start-up)."""

    error_type = "config_error"


class MissingDependencyError(ConfigError, ImportError):
    """An optional dependency is not installed; the message names the extra to install. Over HTTP
    a 501 (the server does not have what the route needs, e.g. answer groups without the
    ``baseline`` extra), not a 500: nothing failed, and asking again will not help until the
    operator installs it."""

    status_code = 501
    error_type = "missing_dependency"


class StorageError(RaygradeError):
    """The job store or its blob store cannot read or write (HTTP 503: try again)."""

    status_code = 503
    error_type = "storage_error"


class InvalidRequestError(RaygradeError):
    """The client sent something raygrade cannot accept (HTTP 400)."""

    status_code = 400
    error_type = "invalid_request_error"


class AuthenticationError(RaygradeError):
    """No API key, or one the server does not know or has revoked (HTTP 401)."""

    status_code = 401
    error_type = "authentication_error"


class TooManyFailedAuthenticationsError(RaygradeError):
    """A client sent more unknown API keys than ``api.failed_auth_per_min`` allows (HTTP 429,
    OpenAI's ``rate_limit_error`` type, ``code`` ``too_many_failed_authentications``): its requests
    with keys not verified recently are refused without a store look-up for ``retry_after_s``."""

    status_code = 429
    error_type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after_s: float, code: str | None = "too_many_failed_authentications"):
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class RequestTooLargeError(InvalidRequestError):
    """The request body is over the API's size limit (HTTP 413)."""

    status_code = 413


class RequestTimeoutError(InvalidRequestError):
    """The request body did not arrive within the API's time limits (HTTP 408)."""

    status_code = 408


class NotFoundError(RaygradeError):
    """A job id or resource does not exist (HTTP 404)."""

    status_code = 404
    error_type = "not_found_error"


class ConflictError(RaygradeError):
    """The request conflicts with existing state, e.g. a reused idempotency key (HTTP 409)."""

    status_code = 409
    error_type = "conflict_error"


class QuotaExceededError(RaygradeError):
    """A tenant's quota refuses a new job or file (HTTP 429, OpenAI's ``insufficient_quota`` type).

    ``code`` names the quota (``max_active_jobs``, ``items_per_day``, ``tokens_per_day``,
    ``file_bytes``);
    ``retry_after_s`` is when the rolling window will have room for the job (``None``
    when only the tenant can make room: ending an active job, deleting files, or a job larger
    than the whole quota). Nothing of the refused job is kept.
    """

    status_code = 429
    error_type = "insufficient_quota"

    def __init__(self, message: str, *, retry_after_s: float | None = None, param: str | None = None,
                 code: str | None = None):
        super().__init__(message, param=param, code=code)
        self.retry_after_s = retry_after_s


class IllegalTransitionError(ConflictError):
    """A state change the job, batch or item state machine does not allow (HTTP 409)."""

    error_type = "illegal_state_transition"


class PlanningError(RaygradeError):
    """A student's submission cannot fit any request under the model's budgets.

    Reported per student in the job's results; the rest of the job goes on.
    """

    status_code = 422
    error_type = "planning_error"


class ReadingError(RaygradeError):
    """A page could not be decoded or read (OCR failure, corrupt image)."""

    status_code = 422
    error_type = "reading_error"


class ProviderError(RaygradeError):
    """Base class of errors that come from a model provider."""

    status_code = 502
    error_type = "provider_error"
    retryable: bool = False


class ProviderStatusError(ProviderError):
    """The provider answered with an HTTP error status.

    Attributes:
        provider_status: The HTTP status the provider returned.
        retry_after_s: The provider's ``Retry-After``, in seconds.
        rate_limit_headers: The response's ``x-ratelimit-*`` headers (for the limiter).
    """

    def __init__(self, message: str, *, provider_status: int, retry_after_s: float | None = None,
                 rate_limit_headers: dict[str, str] | None = None, param: str | None = None,
                 code: str | None = None):
        super().__init__(message, param=param, code=code)
        self.provider_status = provider_status
        self.retry_after_s = retry_after_s
        self.rate_limit_headers = rate_limit_headers or {}

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        """408, 409, 429 and 5xx are retried (openai-python's rule)."""
        s = self.provider_status
        return s in (408, 409, 429) or s >= 500


class RateLimitedError(ProviderStatusError):
    """The provider answered 429 (requests or tokens per minute exhausted)."""

    error_type = "rate_limit_error"


class QuotaExhaustedError(ProviderStatusError):
    """The provider's quota for a longer period than the limiter's window is spent (Gemini's
    requests per day, reset at midnight Pacific time), or the limiter's count of it is: the message
    says until when. Not retried: a retry before the reset is refused again and counts against the
    per-minute limits.

    Attributes:
        reset_at: When the quota resets, seconds since the epoch (``None``: not known).
        from_provider: The provider refused the call (not the limiter's own count): the call may
            be tried again after ``reset_at`` (:func:`raygrade.retry.call_with_retries`).
    """

    error_type = "quota_exhausted"

    def __init__(self, message: str, *, provider_status: int = 429, reset_at: float | None = None,
                 from_provider: bool = False, **kwargs: Any):
        super().__init__(message, provider_status=provider_status, **kwargs)
        self.reset_at, self.from_provider = reset_at, from_provider

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return False


class ProviderTimeoutError(ProviderError):
    """The provider did not answer within the configured timeout."""

    error_type = "timeout_error"
    retryable = True


class ProviderConnectionError(ProviderError):
    """The provider could not be reached (refused, reset, DNS)."""

    error_type = "connection_error"
    retryable = True


class OutputParseError(ProviderError):
    """The model's output did not match the grading schema (invalid JSON, missing items,
    score out of range). Retried a bounded number of times, then reported per item."""

    error_type = "output_parse_error"
    retryable = True


class CircuitOpenError(ProviderError):
    """The provider's circuit breaker is open: it failed repeatedly, so nothing is sent
    to it until a probe succeeds. Not retried by the caller; ``retry_after_s`` says when
    the breaker lets a probe through."""

    status_code = 503
    error_type = "circuit_open"
    retryable = False

    def __init__(self, message: str, *, retry_after_s: float | None = None, param: str | None = None,
                 code: str | None = None):
        super().__init__(message, param=param, code=code)
        self.retry_after_s = retry_after_s
