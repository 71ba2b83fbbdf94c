"""Sign-up, tokens, /api/me/ and finding people."""

import itertools

import pytest
from django.contrib.auth import get_user_model
from django.test import override_settings
from rest_framework.test import APIClient

from tests import factories

pytestmark = pytest.mark.django_db
_addresses = (f"10.9.{i // 250}.{i % 250 + 1}" for i in itertools.count())


def anonymous():
    """A client from its own address, so the per-address throttles of other tests don't count."""
    return APIClient(REMOTE_ADDR=next(_addresses))


def test_signup_creates_an_account_that_can_get_a_token_and_see_itself():
    client = anonymous()
    response = client.post(
        "/api/users/", {"username": "newbie", "password": "long-enough-pw"}, format="json"
    )
    assert response.status_code == 201, response.content
    assert response.json()["username"] == "newbie" and "password" not in response.json()
    token = client.post(
        "/api/auth/token/", {"username": "newbie", "password": "long-enough-pw"}, format="json"
    )
    assert token.status_code == 200 and set(token.json()) == {"token"}
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.json()['token']}")
    me = client.get("/api/me/").json()
    assert me["username"] == "newbie" and me["is_moderator"] is False


@pytest.mark.parametrize(
    "body",
    [
        {"username": "", "password": "long-enough-pw"},
        {"username": "has space", "password": "long-enough-pw"},
        {"username": "short", "password": "1234567"},
        {"username": "nopw"},
        {},
    ],
)
def test_bad_signups_are_refused_with_a_code(body):
    before = get_user_model().objects.count()
    response = anonymous().post("/api/users/", body, format="json")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert get_user_model().objects.count() == before


def test_usernames_are_unique_regardless_of_case():
    factories.make_user("Ada")
    response = anonymous().post(
        "/api/users/", {"username": "ada", "password": "long-enough-pw"}, format="json"
    )
    assert response.status_code == 400 and "taken" in response.json()["detail"]


@override_settings(SIGNUP_ENABLED=False)
def test_signup_can_be_switched_off():
    response = anonymous().post(
        "/api/users/", {"username": "late", "password": "long-enough-pw"}, format="json"
    )
    assert response.status_code == 403 and response.json()["code"] == "forbidden"
    assert not get_user_model().objects.filter(username="late").exists()


def test_wrong_password_gets_401_and_no_token():
    factories.make_user("grace")
    response = anonymous().post(
        "/api/auth/token/", {"username": "grace", "password": "nope"}, format="json"
    )
    assert response.status_code == 401 and response.json()["code"] == "unauthenticated"


def test_signup_and_token_are_throttled_per_address():
    rates = {"signup": "2/hour", "token": "2/minute"}
    with override_settings(REST_FRAMEWORK={**_rest(), "DEFAULT_THROTTLE_RATES": rates}):
        client = anonymous()
        codes = [
            client.post(
                "/api/users/",
                {"username": f"flood{i}", "password": "long-enough-pw"},
                format="json",
            ).status_code
            for i in range(3)
        ]
        assert codes == [201, 201, 429]
        third = client.post(
            "/api/auth/token/", {"username": "flood0", "password": "x"}, format="json"
        )
        client.post("/api/auth/token/", {"username": "flood0", "password": "x"}, format="json")
        limited = client.post(
            "/api/auth/token/", {"username": "flood0", "password": "long-enough-pw"}, format="json"
        )
    assert third.status_code == 401
    assert limited.status_code == 429 and limited.json()["code"] == "rate_limited"
    assert not get_user_model().objects.filter(username="flood2").exists()


def _rest():
    from django.conf import settings

    return settings.REST_FRAMEWORK


def test_me_and_search_need_authentication():
    for path in ("/api/me/", "/api/users/?search=a"):
        response = anonymous().get(path)
        assert response.status_code == 401 and response.json()["code"] == "unauthenticated"


def test_search_finds_active_users_by_part_of_the_name_and_shows_usernames_only(user):
    factories.make_user("marie.curie", email="marie@example.com")
    factories.make_user("pierre.curie")
    factories.make_user("curie.gone", is_active=False)
    found = factories.api_client(user).get("/api/users/?search=CURIE").json()
    assert [u["username"] for u in found] == ["marie.curie", "pierre.curie"]
    assert all(set(u) == {"id", "username"} for u in found)


def test_moderator_is_flagged_on_me():
    moderator = factories.make_moderator()
    assert (
        factories.api_client(moderator, token=True).get("/api/me/").json()["is_moderator"] is True
    )
