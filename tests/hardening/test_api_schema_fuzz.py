"""schemathesis against the project's own OpenAPI schema (/api/schema/), with and without a token.

Every operation gets generated requests (bounded: HARDENING_SCHEMA_EXAMPLES per operation and
auth mode, default 8); no response may be a 5xx, and every response -- status code, content
type, body -- must match what the schema documents.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests import factories

EXAMPLES = int(os.environ.get("HARDENING_SCHEMA_EXAMPLES", "8"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def api_schema(db):
    # In-process WSGI inside the test's transaction: keep the connection open between requests,
    # as Django's own test client does.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def seeded(db):
    """A caller with a token, a room with messages, someone else's private room."""
    caller, other = factories.make_user(), factories.make_user()
    room = factories.make_room(caller, members=[other])
    factories.send(room, other, "hello")
    factories.send(room, caller, "hi")
    factories.make_room(other, kind="private")
    return factories.make_token(caller)


def fuzz_every_operation(schema, headers) -> int:
    """Generated requests for every operation (schemathesis' pytest plugin does not run
    under this pytest; the loop is what it would do). Returns the operations covered."""
    failures, covered, calls = [], 0, [0]
    for result in schema.get_all_operations():
        operation = result.ok()
        covered += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case):
            calls[0] += 1
            case.call_and_validate(headers=headers, checks=CHECKS)

        try:
            check()
        except (Exception, BaseExceptionGroup) as exc:  # collect every failure, report all
            failures.append(f"{operation.label}: {exc}"[:3000])
    print(
        f"\nschemathesis: {covered} operations, {calls[0]} requests "
        f"({'token' if headers else 'anonymous'}), {len(failures)} failing"
    )
    assert not failures, "\n\n".join(failures)
    return covered


def test_api_answers_authenticated_requests_as_documented(api_schema, seeded):
    assert fuzz_every_operation(api_schema, {"Authorization": f"Token {seeded}"}) >= 20


def test_api_answers_anonymous_requests_as_documented(api_schema, seeded):
    assert fuzz_every_operation(api_schema, {}) >= 20
