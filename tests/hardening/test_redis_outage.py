"""Issue 12, finding 8: a Redis outage degrades the service, it does not take it down.

A real server process on a private redis-server that the test stops: REST sends and the token
endpoint still answer (the throttles fail open), new sockets are accepted, subscribe replays from
the event log and live events reach other sockets from the database (the hub's log check), and
everything is back to normal when Redis returns.
"""

import json
import time
import urllib.error
import urllib.request

import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher

from apps.rooms import services as rooms
from tests import factories
from tests.support.processes import ServerProcess
from tests.support.services import RedisServer
from tests.support.wsclient import WS

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


def bodies(client, room):
    return [e["data"]["body"] for e in client.events(room.pk) if e["type"] == "message.created"]


def http(method, url, body=None, token=None):
    headers = {"Content-Type": "application/json", "Host": "127.0.0.1"}
    if token:
        headers["Authorization"] = f"Token {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def outage(child_env):
    redis = RedisServer().start()
    server = ServerProcess(dict(child_env, REDIS_URL=redis.url, CHAT_GAP_CHECK_SECONDS="0.5"))
    server.start()
    sockets = []

    def open_socket(user):
        client = WS(server.ws_url, token=factories.make_token(user))
        sockets.append(client)
        return client

    server.open = open_socket
    redises = [redis]
    server.restart_redis = lambda: redises.append(RedisServer(port=redis.port).start())
    yield server, redis
    for client in sockets:
        client.close()
    server.stop()
    for instance in redises:
        instance.stop()


def test_rest_and_sockets_keep_working_while_redis_is_down(outage, user, other_user, room):
    server, redis = outage
    rooms.room_join(room=room, user=other_user)
    # A hash the server process accepts (the suite's own settings use a fast MD5 hasher).
    user.password = PBKDF2PasswordHasher().encode("pw-for-tests-1", "outagesalt", iterations=1000)
    user.save()
    early = server.open(user)  # joined its groups while Redis was up
    early.subscribe(room.pk, since=0)
    redis.stop()

    # REST: a send and a token request are answered, not 500s.
    status, body = http(
        "POST",
        f"{server.http_url}/api/rooms/{room.pk}/messages/",
        {"body": "rest while down", "client_id": "6f1c4a2e-1b7d-4c55-9a1e-0d5c2b7a9e01"},
        token=factories.make_token(other_user),
    )
    assert status == 201, body
    status, body = http(
        "POST",
        f"{server.http_url}/api/auth/token/",
        {"username": user.username, "password": "pw-for-tests-1"},
    )
    assert status == 200 and body["token"], body

    # A new socket is accepted, replays from the log, and its send is acknowledged.
    late = server.open(other_user)
    assert late.hello()["type"] == "hello"
    subscribed = late.subscribe(room.pk, since=0)
    assert subscribed["type"] == "subscribed", subscribed
    assert bodies(late, room) == ["rest while down"]
    ack = late.send_message(room.pk, body="ws while down")
    assert ack["type"] == "ack", ack

    # Live delivery comes from the database while the channel layer is gone.
    early.wait_seq(room.pk, ack["event"]["seq"], timeout=15)
    assert bodies(early, room) == ["rest while down", "ws while down"]
    assert early.request("ping")["type"] == "pong"

    # Redis comes back (empty): live fan-out resumes with no gap and no duplicate.
    server.restart_redis()
    deadline = time.monotonic() + 20
    while True:
        seq = late.send_message(room.pk, body="after")["event"]["seq"]
        try:
            early.wait_seq(room.pk, seq, timeout=2)
            break
        except TimeoutError:
            assert time.monotonic() < deadline, early.frames[-5:]
    seqs = early.seqs(room.pk)
    assert seqs == list(range(1, seqs[-1] + 1))


def test_a_hung_redis_does_not_hang_new_sockets(outage, user, other_user, room):
    """Redis that accepts connections but never answers (SIGSTOP): bounded waits, not hangs."""
    import os
    import signal

    server, redis = outage
    rooms.room_join(room=room, user=other_user)
    os.kill(redis.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        client = server.open(other_user)
        client.hello()
        assert client.subscribe(room.pk, since=0, timeout=30)["type"] == "subscribed"
        ack = client.send_message(room.pk, body="hung redis")
        assert ack["type"] == "ack", ack
        took = time.monotonic() - started
        status, body = http(
            "POST",
            f"{server.http_url}/api/rooms/{room.pk}/messages/",
            {"body": "rest, hung redis", "client_id": "0b2f6c1e-9d7a-4e3b-8c5f-1a2b3c4d5e6f"},
            token=factories.make_token(user),
        )
        assert status == 201, body
        assert took < 12, f"socket set-up took {took:.1f} s with a hung Redis"
    finally:
        os.kill(redis.proc.pid, signal.SIGCONT)
