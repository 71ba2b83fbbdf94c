"""apps/core/errors.py: the one error type, its contract codes and HTTP statuses."""

import pytest

from apps.core.errors import (
    CODES,
    AccountDisabled,
    RateLimited,
    ServiceError,
    forbidden,
    invalid,
    not_found,
)


def test_every_contract_code_has_its_http_status():
    assert {code: ServiceError(code, "x").status for code in CODES} == {
        "invalid": 400,
        "unauthenticated": 401,
        "forbidden": 403,
        "not_found": 404,
        "rate_limited": 429,
        "too_large": 413,
        "unavailable": 503,
    }


def test_a_code_outside_the_contract_is_refused():
    with pytest.raises(ValueError, match="unknown error code 'oops'"):
        ServiceError("oops", "not a contract code")


def test_the_helpers_make_the_codes_and_keep_the_field_at_fault():
    error = invalid("body must not be blank", field="body")
    assert (error.code, error.message, error.field, error.extra) == (
        "invalid",
        "body must not be blank",
        "body",
        {},
    )
    assert (forbidden("no").code, not_found().code, not_found().message) == (
        "forbidden",
        "not_found",
        "not found",
    )


def test_rate_limited_carries_whole_seconds_of_at_least_one():
    assert RateLimited("slow down", retry_after=0.2).extra == {"retry_after": 1}
    error = RateLimited("slow down", retry_after=7.9)
    assert (error.code, error.status, error.retry_after) == ("rate_limited", 429, 7)


def test_a_disabled_account_is_forbidden():
    error = AccountDisabled()
    assert isinstance(error, ServiceError)
    assert (error.code, error.message) == ("forbidden", "this account is disabled")
