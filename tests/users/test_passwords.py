"""Password rules (AUTH_PASSWORD_VALIDATORS) on every path that sets one, and the form throttles."""

import itertools

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model, password_validation
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.test import Client, override_settings
from rest_framework.test import APIClient

from apps.rooms.management.commands.demo_setup import DEMO_USERS

pytestmark = pytest.mark.django_db
_addresses = (f"10.8.{i // 250}.{i % 250 + 1}" for i in itertools.count())


def anonymous():
    """A client from its own address, so the per-address throttles of other tests don't count."""
    return APIClient(REMOTE_ADDR=next(_addresses))


@pytest.mark.parametrize(
    "password, complaint",
    [
        ("12345678", "too short"),
        ("1234567890", "entirely numeric"),
        ("password123", "too common"),
        ("margaret.hamilton", "too similar to the username"),
        ("short-1", "at least 10 characters"),
    ],
)
def test_weak_passwords_are_refused_naming_the_field(password, complaint):
    response = anonymous().post(
        "/api/users/", {"username": "margaret.hamilton", "password": password}, format="json"
    )
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["code"] == "invalid"
    assert body["detail"].startswith("password:") and complaint in body["detail"], body
    assert list(body["errors"]) == ["password"]
    assert not get_user_model().objects.filter(username="margaret.hamilton").exists()


def test_the_sign_up_page_shows_the_rule_on_the_password_field():
    client = Client(REMOTE_ADDR=next(_addresses))
    response = client.post(
        "/signup/", {"username": "pagepw", "password": "12345678", "password_again": "12345678"}
    )
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert "password" in errors and "too short" in " ".join(errors["password"])
    assert not get_user_model().objects.filter(username="pagepw").exists()


def test_the_minimum_length_is_the_setting():
    assert settings.PASSWORD_MIN_LENGTH == 10
    with pytest.raises(ValidationError, match="at least 10 characters"):
        password_validation.validate_password("a9x!b8y?c")  # nine characters


def test_the_demo_passwords_pass_the_rules():
    User = get_user_model()
    for username, password in [*DEMO_USERS, ("admin", "admin-demo-password")]:
        password_validation.validate_password(password, User(username=username))
    call_command("demo_setup", stdout=open("/dev/null", "w"))
    assert User.objects.get(username="ada").check_password("ada-demo-password")


def test_the_admin_and_createsuperuser_use_the_same_rules(admin_client):
    response = admin_client.post(
        "/admin/users/user/add/",
        {
            "username": "weakling",
            "password1": "12345678",
            "password2": "12345678",
            "usable_password": "true",
        },
    )
    assert response.status_code == 200
    assert "too short" in response.content.decode()
    assert not get_user_model().objects.filter(username="weakling").exists()


def test_the_login_page_takes_from_the_token_bucket():
    rates = {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "token": "2/minute"}
    with override_settings(
        REST_FRAMEWORK={**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}
    ):
        address = next(_addresses)
        page = Client(REMOTE_ADDR=address)
        codes = [
            page.post("/login/", {"username": "nobody", "password": "guess"}).status_code
            for _ in range(3)
        ]
        api = APIClient(REMOTE_ADDR=address).post(
            "/api/auth/token/", {"username": "nobody", "password": "guess"}, format="json"
        )
        elsewhere = Client(REMOTE_ADDR=next(_addresses)).post(
            "/login/", {"username": "nobody", "password": "guess"}
        )
    assert codes == [200, 200, 429]
    assert api.status_code == 429
    assert elsewhere.status_code == 200  # per address: another address still gets to try
    assert page.get("/login/").status_code == 200  # only posting is limited


def test_the_admin_log_in_takes_from_the_token_bucket_too():
    rates = {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "token": "2/minute"}
    with override_settings(
        REST_FRAMEWORK={**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}
    ):
        client = Client(REMOTE_ADDR=next(_addresses))
        codes = [
            client.post("/admin/login/", {"username": "admin", "password": "guess"}).status_code
            for _ in range(3)
        ]
    assert codes == [200, 200, 429]


def test_the_sign_up_page_takes_from_the_sign_up_bucket():
    rates = {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "signup": "1/hour"}
    with override_settings(
        REST_FRAMEWORK={**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}
    ):
        address = next(_addresses)
        first = Client(REMOTE_ADDR=address).post(
            "/signup/",
            {
                "username": "bucket1",
                "password": "a-long-password-1",
                "password_again": "a-long-password-1",
            },
        )
        second = Client(REMOTE_ADDR=address).post(
            "/signup/",
            {
                "username": "bucket2",
                "password": "a-long-password-1",
                "password_again": "a-long-password-1",
            },
        )
        api = APIClient(REMOTE_ADDR=address).post(
            "/api/users/", {"username": "bucket3", "password": "a-long-password-1"}, format="json"
        )
    assert first.status_code == 302
    assert second.status_code == 429 and "Too many sign-ups" in second.content.decode()
    assert api.status_code == 429
    assert list(
        get_user_model()
        .objects.filter(username__startswith="bucket")
        .values_list("username", flat=True)
    ) == ["bucket1"]
