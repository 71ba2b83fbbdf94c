"""The one error type services raise; every interface maps it to the contract's error codes."""

CODES = (
    "invalid",
    "unauthenticated",
    "forbidden",
    "not_found",
    "rate_limited",
    "too_large",
    "unavailable",
)


class ServiceError(Exception):
    """A refused action: `code` is one of the contract's error codes (PROTOCOL §3)."""

    http_status = {
        "invalid": 400,
        "unauthenticated": 401,
        "forbidden": 403,
        "not_found": 404,
        "rate_limited": 429,
        "too_large": 413,
        "unavailable": 503,
    }

    def __init__(self, code: str, message: str, *, field: str | None = None):
        if code not in CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field  # the input field at fault, when there is one (REST: `errors`)

    @property
    def status(self) -> int:
        return self.http_status[self.code]

    @property
    def extra(self) -> dict:
        """Further fields of the error frame / body (beyond code and message)."""
        return {}


class RateLimited(ServiceError):
    """`rate_limited` with `retry_after` (whole seconds): in the WebSocket error frame, and in
    the REST body and its Retry-After header."""

    def __init__(self, message: str, *, retry_after: int):
        super().__init__("rate_limited", message)
        self.retry_after = max(1, int(retry_after))

    @property
    def extra(self) -> dict:
        return {"retry_after": self.retry_after}


class AccountDisabled(ServiceError):
    """The acting account was deactivated (a WebSocket gets `forbidden`, then close 4403)."""

    def __init__(self):
        super().__init__("forbidden", "this account is disabled")


def invalid(message, *, field=None):
    return ServiceError("invalid", message, field=field)


def forbidden(message):
    return ServiceError("forbidden", message)


def not_found(message="not found"):
    return ServiceError("not_found", message)
