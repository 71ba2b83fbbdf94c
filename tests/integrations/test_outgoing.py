"""Outgoing webhooks (PROTOCOL §10) against real HTTP receivers started here: order, signature,
retry after a 500, replay, redaction, a dead endpoint not delaying a live one, the SSRF guard."""

from __future__ import annotations

import itertools
import json
import time

import pytest

from apps.integrations.models import WebhookCursor
from apps.messaging import services as messaging
from apps.messaging.models import Message
from tests import factories

from .support import BlackHole, Receiver, Worker, signature_ok

pytestmark = [pytest.mark.django_db(transaction=True)]  # no Redis needed: embedded mode too
SECRET = "a-webhook-secret-of-some-length"


@pytest.fixture
def webhook_settings(settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.WEBHOOK_RETRY_BASE_SECONDS = 0.2
    settings.WEBHOOK_RETRY_MAX_SECONDS = 2.0
    settings.WEBHOOK_TIMEOUT_SECONDS = 3.0
    settings.WEBHOOK_POLL_SECONDS = 0.05
    settings.CHAT_RATE_LIMIT_MESSAGES = 10_000
    return settings


@pytest.fixture
def receivers():
    made = []

    def make(answer=None):
        made.append(Receiver(answer))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


@pytest.fixture
def worker(webhook_settings):
    running = Worker().start()
    yield running
    running.close()


def _create(user, url, **body):
    answer = factories.api_client(user).post(
        "/api/webhooks/", {"url": url, "secret": SECRET, **body}, format="json"
    )
    return answer


def _webhook(user, url, **body):
    answer = _create(user, url, **body)
    assert answer.status_code == 201, answer.content
    return answer.json()


def _status(user, hook):
    answer = factories.api_client(user).get(f"/api/webhooks/{hook['id']}/")
    assert answer.status_code == 200
    return {row["room"]: row for row in answer.json()["cursors"]}


def _status_when(user, hook, predicate, timeout=5.0):
    """The webhook's status once `predicate` holds of it (or as it is after `timeout`)."""
    deadline = time.monotonic() + timeout
    status = _status(user, hook)
    while not predicate(status) and time.monotonic() < deadline:
        time.sleep(0.05)
        status = _status(user, hook)
    return status


def _seqs(events, room):
    return [e["seq"] for e in events if e["room"] == room.pk]


def test_events_arrive_signed_and_in_seq_order_per_room(webhook_settings, receivers, worker):
    owner = factories.make_user()
    a, b = factories.make_room(owner), factories.make_room(owner)
    receiver = receivers()
    hook = _webhook(owner, receiver.url, rooms=[a.pk, b.pk])
    heads = {a.pk: a.last_seq, b.pk: b.last_seq}
    for i in range(20):
        factories.send(a if i % 2 else b, owner, f"m{i}")
    a.refresh_from_db()
    b.refresh_from_db()
    receiver.wait(
        lambda r: (
            len(_seqs(r.ok_events(), a)) >= a.last_seq - heads[a.pk]
            and len(_seqs(r.ok_events(), b)) >= b.last_seq - heads[b.pk]
        )
    )
    events = receiver.ok_events()
    for room in (a, b):
        # Everything after the head at creation, once, in order (no retries happened here).
        assert _seqs(events, room) == list(range(heads[room.pk] + 1, room.last_seq + 1))
    for request in receiver.requests:
        assert signature_ok(SECRET, request)
        assert request["headers"]["X-Chat-Delivery"]
        assert request["headers"]["Content-Type"] == "application/json"
        assert request["path"] == "/hook"
    deliveries = [r["headers"]["X-Chat-Delivery"] for r in receiver.requests]
    assert len(set(deliveries)) == len(deliveries)
    body = {e["data"]["body"] for e in events if e["type"] == "message.created"}
    assert body == {f"m{i}" for i in range(20)}
    # The receiver has the events before the worker writes the cursor (after the 2xx).
    status = _status_when(
        owner, hook, lambda s: s[a.pk]["cursor"] == a.last_seq and s[b.pk]["cursor"] == b.last_seq
    )
    assert status[a.pk]["cursor"] == a.last_seq and status[a.pk]["lag"] == 0
    assert status[b.pk]["last_error"] is None


def test_webhooks_sharing_rooms_each_get_every_event_once_in_order(
    webhook_settings, receivers, worker
):
    # The worker reads each event from the log once for all of them (apps.integrations.tail).
    owner = factories.make_user()
    a, b = factories.make_room(owner), factories.make_room(owner)
    made = [receivers() for _ in range(3)]
    for receiver in made:
        _webhook(owner, receiver.url, rooms=[a.pk, b.pk])
    heads = {a.pk: a.last_seq, b.pk: b.last_seq}
    for burst in range(4):
        for i in range(10):
            factories.send(a if i % 2 else b, owner, f"b{burst}m{i}")
        time.sleep(0.1)
    a.refresh_from_db()
    b.refresh_from_db()
    for receiver in made:
        receiver.wait(
            lambda r: all(
                len(_seqs(r.ok_events(), room)) >= room.last_seq - heads[room.pk] for room in (a, b)
            )
        )
        events = receiver.ok_events()
        for room in (a, b):
            assert _seqs(events, room) == list(range(heads[room.pk] + 1, room.last_seq + 1))
        assert all(signature_ok(SECRET, request) for request in receiver.requests)
    # Read from the log about once, not once per webhook (3 times).
    sent = a.last_seq - heads[a.pk] + b.last_seq - heads[b.pk]
    assert worker.deliverer.stats["log_rows"] < 2 * sent, worker.deliverer.stats


def test_a_500_is_retried_with_backoff_and_later_events_wait(webhook_settings, receivers, worker):
    owner = factories.make_user()
    room = factories.make_room(owner)
    receiver = receivers(lambda n: 500 if n < 3 else 200)
    hook = _webhook(owner, receiver.url, rooms=[room.pk])
    start = room.last_seq
    factories.send(room, owner, "first")
    receiver.wait(lambda r: len(r.requests) >= 1)
    # The worker writes the failure after the answer the receiver has just recorded.
    status = _status_when(owner, hook, lambda rows: rows[room.pk]["last_error"])[room.pk]
    assert status["last_error"] == "HTTP 500" and status["cursor"] == start and status["lag"] >= 1
    factories.send(room, owner, "second")
    receiver.wait(lambda r: len(r.ok_events()) >= 2, timeout=20)
    times = [r["at"] for r in receiver.requests]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # Exponential backoff (base 0.2 s, doubling, ±10%): each wait at least its backoff (load
    # only lengthens them), and the third clearly longer than the first.
    assert [g >= 0.2 * 2**i * 0.9 for i, g in enumerate(gaps[:3])] == [True] * 3, gaps
    assert gaps[2] > gaps[0] * 1.5, gaps
    events = receiver.ok_events()
    assert [e["data"]["body"] for e in events] == ["first", "second"]
    # Every failed attempt carried the first message: the second never overtook it.
    for request in receiver.requests[:3]:
        assert json.loads(request["body"])["events"][0]["data"]["body"] == "first"
    room.refresh_from_db()
    status = _status_when(owner, hook, lambda s: s[room.pk]["cursor"] == room.last_seq)[room.pk]
    assert status["cursor"] == room.last_seq and status["last_error"] is None


def test_replay_rewinds_the_cursor_and_redacted_events_go_out_redacted(
    webhook_settings, receivers, worker
):
    owner = factories.make_user()
    room = factories.make_room(owner)
    receiver = receivers()
    hook = _webhook(owner, receiver.url, rooms=[room.pk], types=["message.created"])
    sent = [factories.send(room, owner, f"r{i}") for i in range(3)]
    receiver.wait(lambda r: len(r.ok_events()) >= 3)
    assert [e["data"]["body"] for e in receiver.ok_events()] == ["r0", "r1", "r2"]
    messaging.message_delete(
        message=Message.objects.get(pk=sent[1].envelope["data"]["id"]), actor=owner
    )
    replay = factories.api_client(owner).post(
        f"/api/webhooks/{hook['id']}/replay/", {"room": room.pk, "since": 0}, format="json"
    )
    assert replay.status_code == 200 and replay.json()["cursor"] == 0, replay.content
    receiver.wait(lambda r: len(r.ok_events()) >= 6)
    again = receiver.ok_events()[3:]
    # The whole log again, message.created only (types), the deleted one as the log holds it.
    assert [e["id"] for e in again] == [s.envelope["id"] for s in sent]
    assert again[1]["data"]["redacted"] is True and again[1]["data"]["body"] is None
    assert again[0]["data"]["body"] == "r0"
    assert {e["type"] for e in receiver.ok_events()} == {"message.created"}


def test_a_dead_endpoint_does_not_delay_a_live_one(webhook_settings, receivers, worker):
    owner = factories.make_user()
    rooms = [factories.make_room(owner) for _ in range(3)]
    hole = BlackHole()
    try:
        dead = _webhook(owner, hole.url)  # every room the owner may read
        live_receiver = receivers()
        _webhook(owner, live_receiver.url)
        # Both webhooks seen by the worker (and the dead one's slots hung) before measuring.
        first = factories.send(rooms[0], owner, "warm-up").envelope["id"]
        live_receiver.wait(lambda r: first in {e["id"] for e in r.ok_events()}, timeout=10)
        lags = []
        for i in range(15):
            event = factories.send(rooms[i % 3], owner, f"x{i}").envelope
            sent_at = time.time()
            live_receiver.wait(
                lambda r, eid=event["id"]: eid in {e["id"] for e in r.ok_events()}, timeout=5
            )
            lags.append(time.time() - sent_at)
        assert max(lags) < 1.0, lags
        dead_status = _status(owner, dead)
        assert all(row["cursor"] is not None and row["lag"] > 0 for row in dead_status.values())
        # The dead one's batches timed out and wait to be retried.
        status = _status_when(
            owner, dead, lambda rows: any(row["last_error"] for row in rows.values()), timeout=10
        )
        assert any("no answer within" in (row["last_error"] or "") for row in status.values())
    finally:
        hole.close()


def test_a_redirect_is_not_followed(webhook_settings, receivers, worker):
    owner = factories.make_user()
    room = factories.make_room(owner)
    receiver = receivers(lambda n: 302)
    hook = _webhook(owner, receiver.url, rooms=[room.pk])
    factories.send(room, owner, "x")
    receiver.wait(lambda r: len(r.requests) >= 1)
    status = _status_when(owner, hook, lambda rows: rows[room.pk]["last_error"])[room.pk]
    assert "HTTP 302" in status["last_error"] and status["lag"] >= 1


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:{port}/hook",  # a name that resolves to 127.0.0.1
        "http://127.0.0.1:{port}/hook",
        "http://[::1]:{port}/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://0.0.0.0:{port}/",
        "http://[::ffff:127.0.0.1]:{port}/",
    ],
)
def test_private_and_loopback_targets_are_refused_unless_listed(settings, receivers, url):
    settings.WEBHOOK_ALLOWED_HOSTS = ["*"]
    owner = factories.make_user()
    answer = _create(owner, url.format(port=receivers().port))
    assert answer.status_code == 400, answer.content
    assert answer.json()["code"] == "invalid" and "url" in answer.json()["errors"]


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/",
        "http://user:pw@example.com/",
        "http://no-such-host.invalid/",
        "not a url",
    ],
)
def test_other_bad_targets_are_refused(settings, url):
    settings.WEBHOOK_ALLOWED_HOSTS = ["*"]
    answer = _create(factories.make_user(), url)
    assert answer.status_code == 400 and answer.json()["code"] == "invalid"


def test_listing_a_host_allows_it_and_the_check_runs_again_at_delivery(
    webhook_settings, receivers, worker
):
    owner = factories.make_user()
    room = factories.make_room(owner)
    receiver = receivers()
    webhook_settings.WEBHOOK_ALLOWED_HOSTS = ["localhost"]  # listed by name
    url = f"http://localhost:{receiver.port}/hook"
    hook = _webhook(owner, url, rooms=[room.pk])
    factories.send(room, owner, "allowed")
    receiver.wait(lambda r: len(r.ok_events()) >= 1)
    # Taken off the list: the next delivery is refused after resolution, nothing is sent.
    webhook_settings.WEBHOOK_ALLOWED_HOSTS = ["*"]
    count = len(receiver.requests)
    factories.send(room, owner, "refused")
    status = _status_when(owner, hook, lambda rows: rows[room.pk]["last_error"])[room.pk]
    assert "refused" in status["last_error"] and "127.0.0.1" in status["last_error"]
    assert len(receiver.requests) == count


def test_webhook_input_is_checked(webhook_settings, receivers):
    owner, other = factories.make_user(), factories.make_user()
    from apps.rooms.models import Room

    private = factories.make_room(other, kind=Room.Kind.PRIVATE)
    url = receivers().url
    for body, field in [
        ({"rooms": [private.pk]}, None),
        ({"types": ["typing"]}, "types"),
        ({"secret": "short"}, "secret"),
        ({"rooms": []}, "rooms"),
    ]:
        answer = _create(owner, url, **body)
        assert answer.status_code in (400, 404), (body, answer.content)
        if field:
            assert field in answer.json()["errors"], answer.content
    hook = _webhook(owner, url)
    assert factories.api_client(other).get(f"/api/webhooks/{hook['id']}/").status_code == 404
    assert (
        factories.api_client(other)
        .post(f"/api/webhooks/{hook['id']}/replay/", {"room": 1, "since": 0}, format="json")
        .status_code
        == 404
    )
    assert factories.api_client(owner).delete(f"/api/webhooks/{hook['id']}/").status_code == 204
    assert not WebhookCursor.objects.exists()
