"""The one error type services raise; every interface maps it to the contract's error codes."""

CODES = ("invalid", "unauthenticated", "forbidden", "not_found", "rate_limited", "too_large",
         "unavailable")


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
