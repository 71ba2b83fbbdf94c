"""The OpenAPI schema: valid, warning-free, and covering every endpoint of the contract."""

import pytest
import yaml
from django.core.management import call_command

from tests import factories

CONTRACT_PATHS = {
    "/api/users/": {"get", "post"},
    "/api/auth/token/": {"post"},
    "/api/me/": {"get", "patch"},
    "/api/blocks/": {"get", "post"},
    "/api/blocks/{user_id}/": {"delete"},
    "/api/rooms/": {"get", "post"},
    "/api/rooms/direct/": {"post"},
    "/api/rooms/{room_id}/": {"get", "patch", "delete"},
    "/api/rooms/{room_id}/join/": {"post"},
    "/api/rooms/{room_id}/leave/": {"post"},
    "/api/rooms/{room_id}/invite/": {"post"},
    "/api/rooms/{room_id}/read/": {"post"},
    "/api/rooms/{room_id}/events/": {"get"},
    "/api/rooms/{room_id}/members/": {"get"},
    "/api/rooms/{room_id}/members/{user_id}/ban/": {"post"},
    "/api/rooms/{room_id}/members/{user_id}/unban/": {"post"},
    "/api/rooms/{room_id}/members/{user_id}/mute/": {"post"},
    "/api/rooms/{room_id}/members/{user_id}/kick/": {"post"},
    "/api/rooms/{room_id}/members/{user_id}/role/": {"post"},
    "/api/rooms/{room_id}/messages/": {"get", "post"},
    "/api/messages/{message_id}/": {"get", "patch", "delete"},
    "/api/messages/{message_id}/reactions/": {"post", "delete"},
}


def test_schema_validates_without_warnings(tmp_path):
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    schema = yaml.safe_load(out.read_text())
    for path, methods in CONTRACT_PATHS.items():
        assert path in schema["paths"], path
        assert methods <= set(schema["paths"][path]), path


@pytest.mark.django_db
def test_schema_and_docs_are_served(user):
    client = factories.api_client(user)
    schema = client.get("/api/schema/?format=json")
    assert schema.status_code == 200 and schema.json()["openapi"].startswith("3.")
    assert client.get("/api/docs/").status_code == 200


@pytest.mark.django_db
def test_api_docs_page_is_served_without_any_cdn(client):
    response = client.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "swagger-ui" in html
    assert "cdn." not in html and "unpkg" not in html
    assert "/static/drf_spectacular_sidecar/" in html
