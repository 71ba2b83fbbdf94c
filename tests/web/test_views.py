"""The Django-side pages of the web client (the browser tests drive the rest)."""

import pytest
from django.test import override_settings

from tests import factories


@pytest.mark.django_db
def test_chat_page_sends_anonymous_visitors_to_log_in(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/login/?next=/"


@pytest.mark.django_db
def test_chat_page_carries_the_user_and_the_module(client):
    user = factories.make_user("ada")
    client.force_login(user)
    response = client.get("/")
    assert response.status_code == 200
    config = response.context["config"]
    assert config["user"] == {"id": user.pk, "username": "ada", "is_moderator": False}
    html = response.content.decode()
    assert 'id="chat-config"' in html and 'type="module"' in html and "/static/web/app.js" in html
    assert "csrftoken" in response.cookies
    assert "script-src 'self'" in response["Content-Security-Policy"]


@pytest.mark.django_db
def test_sign_up_creates_the_account_and_logs_in(client):
    response = client.post(
        "/signup/",
        {"username": "newbie", "password": "long enough 123", "password_again": "long enough 123"},
    )
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get("/").context["config"]["user"]["username"] == "newbie"


@pytest.mark.django_db
def test_sign_up_refuses_bad_input_without_creating_anyone(client, django_user_model):
    factories.make_user("taken")
    mismatch = client.post(
        "/signup/",
        {"username": "x1", "password": "long enough 123", "password_again": "other enough 123"},
    )
    assert "The two passwords differ." in mismatch.content.decode()
    taken = client.post(
        "/signup/",
        {"username": "TAKEN", "password": "long enough 123", "password_again": "long enough 123"},
    )
    assert "that username is taken" in taken.content.decode()
    short = client.post(
        "/signup/", {"username": "x2", "password": "short", "password_again": "short"}
    )
    assert short.status_code == 200
    assert not django_user_model.objects.filter(username__in=["x1", "x2"]).exists()


@pytest.mark.django_db
@override_settings(SIGNUP_ENABLED=False)
def test_sign_up_disabled_hides_the_page_and_the_link(client):
    assert client.get("/signup/").status_code == 404
    assert (
        client.post(
            "/signup/",
            {"username": "x", "password": "long enough 123", "password_again": "long enough 123"},
        ).status_code
        == 404
    )
    assert "Sign up" not in client.get("/login/").content.decode()


@pytest.mark.django_db
def test_log_out_needs_a_post_and_ends_the_session(client):
    client.force_login(factories.make_user())
    response = client.post("/logout/")
    assert response.status_code == 302 and response["Location"] == "/login/"
    assert client.get("/").status_code == 302


@override_settings(WHITENOISE_USE_FINDERS=True)  # as under DEBUG; production serves collectstatic's
def test_static_files_are_served_as_plain_modules(client):
    for name, kind in [("app.js", "javascript"), ("socket.js", "javascript"), ("chat.css", "css")]:
        response = client.get(f"/static/web/{name}")
        assert response.status_code == 200, name
        assert kind in response["Content-Type"]


@pytest.mark.django_db
def test_presence_answers_only_for_people_sharing_a_room(client):
    ada, bob, stranger = factories.make_user(), factories.make_user(), factories.make_user()
    factories.make_room(ada, members=[bob])
    assert client.get(f"/presence/?user={bob.pk}").status_code == 401
    client.force_login(ada)
    response = client.get(f"/presence/?user={bob.pk}&user={stranger.pk}")
    assert response.status_code == 200
    assert response.json() == {str(bob.pk): "offline"}
    bad = client.get("/presence/?user=bob")
    assert bad.status_code == 400 and bad.json()["code"] == "invalid"


def test_no_template_of_ours_has_inline_style_or_script():
    """The strict CSP (apps.web.csp) blocks inline <style>, style="" and inline <script>: every
    page's styles and scripts must come from static files."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[2] / "apps"
    offenders = []
    for path in root.glob("*/templates/**/*.html"):
        text = re.sub(r"{%\s*comment\s*%}.*?{%\s*endcomment\s*%}", "", path.read_text(), flags=re.S)
        if re.search(r"<style\b|\sstyle=\"|<script(?![^>]*\bsrc=)[^>]*>|\son[a-z]+=\"", text):
            offenders.append(str(path.relative_to(root)))
    assert offenders == []
