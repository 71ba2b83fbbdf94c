"""apps/core/api.py: the REST helpers every app's views use, and the exception handler that
turns every error into the contract's JSON body."""

import pytest
from rest_framework import exceptions, serializers
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from apps.core.api import (
    ErrorSerializer,
    bool_param,
    code_for_status,
    exception_handler,
    int_param,
    limit_param,
    next_url,
    validated,
)
from apps.core.errors import CODES, RateLimited, ServiceError, invalid


def get(query=""):
    return Request(APIRequestFactory().get(f"/api/things/{query}"))


def post(data):
    from rest_framework.parsers import JSONParser

    return Request(
        APIRequestFactory().post("/api/things/", data, format="json"), parsers=[JSONParser()]
    )


def refused(call, *args, **kwargs) -> str:
    with pytest.raises(ServiceError) as caught:
        call(*args, **kwargs)
    assert caught.value.code == "invalid"
    return caught.value.message


def test_int_param_reads_bounds_and_defaults():
    assert int_param(get("?after=5"), "after") == 5
    assert int_param(get(), "after", default=3) == 3
    assert int_param(get("?after="), "after", default=3) == 3
    assert refused(int_param, get("?after=x"), "after") == "after must be an integer"
    assert refused(int_param, get("?after=-1"), "after") == "after must be >= 0"
    assert (
        refused(int_param, get("?n=11"), "n", minimum=1, maximum=10) == "n must be between 1 and 10"
    )


def test_limit_param_defaults_and_caps_the_page():
    assert limit_param(get(), (50, 200)) == 50
    assert limit_param(get("?limit=200"), (50, 200)) == 200
    assert refused(limit_param, get("?limit=0"), (50, 200)) == "limit must be between 1 and 200"


def test_bool_param_and_next_url():
    assert [bool_param(get(f"?joined={v}"), "joined") for v in ("1", "true", "YES", "0", "")] == [
        True,
        True,
        True,
        False,
        False,
    ]
    assert bool_param(get(), "joined") is False
    assert (
        next_url(get("?limit=5&after=1"), after=9)
        == "http://testserver/api/things/?after=9&limit=5"
    )


def test_validated_returns_the_clean_body_or_raises_drf_validation():
    class Form(serializers.Serializer):
        seq = serializers.IntegerField(min_value=0)

    assert validated(Form, post({"seq": "4"})) == {"seq": 4}
    with pytest.raises(exceptions.ValidationError):
        validated(Form, post({"seq": -1}))


def test_a_service_error_becomes_its_code_detail_field_and_retry_after():
    response = exception_handler(invalid("body must not be blank", field="body"), {})
    assert response.status_code == 400
    assert response.data == {
        "code": "invalid",
        "detail": "body must not be blank",
        "errors": {"body": ["body must not be blank"]},
    }
    limited = exception_handler(RateLimited("slow down", retry_after=3), {})
    assert (limited.status_code, limited["Retry-After"]) == (429, "3")
    assert limited.data == {"code": "rate_limited", "detail": "slow down", "retry_after": 3}


def test_drf_errors_get_contract_codes():
    bad = exception_handler(exceptions.ValidationError({"seq": ["must be >= 0"]}), {})
    assert bad.status_code == 400
    assert bad.data == {
        "code": "invalid",
        "detail": "invalid input",
        "errors": {"seq": ["must be >= 0"]},
    }
    anonymous = exception_handler(exceptions.NotAuthenticated(), {})
    assert anonymous.status_code == 401 and anonymous.data["code"] == "unauthenticated"
    assert exception_handler(ValueError("not an API error"), {}) is None


def test_every_status_maps_to_a_contract_code():
    assert [code_for_status(s) for s in (400, 401, 403, 404, 405, 413, 429, 500, 502, 418)] == [
        "invalid",
        "unauthenticated",
        "forbidden",
        "not_found",
        "invalid",
        "too_large",
        "rate_limited",
        "unavailable",
        "unavailable",
        "invalid",
    ]
    assert set(ErrorSerializer().fields["code"].choices) == set(CODES)
