"""Threads on top of reply_to (PROTOCOL §8), on the database the run uses (PostgreSQL with the
services, SQLite with CHAT_EMBEDDED=1): thread ids, counts, the endpoints, following, unread,
deletion, the batched send path, retention and the data migration."""

import uuid
from contextlib import contextmanager
from datetime import timedelta
from types import SimpleNamespace
from unittest import mock

import pytest
from django.db import connection
from django.utils import timezone

from apps.events.models import Event
from apps.events.schemas import envelope_schema
from apps.messaging import services
from apps.messaging.models import Message, ThreadFollow
from apps.messaging.services import SendRequest, message_send_many
from apps.rooms import services as rooms
from apps.rooms.models import Room
from tests import factories
from tests.messaging.asyncsend import async_send_many
from tests.support.services import postgresql_only

pytestmark = pytest.mark.django_db


def mid(event) -> int:
    return event.envelope["data"]["id"]


def reply(room, author, to, body="reply"):
    return factories.send(room, author, body, reply_to=to)


def row(message_id) -> Message:
    return Message.objects.get(pk=message_id)


@pytest.fixture
def pair(room, user, other_user):
    rooms.room_join(room=room, user=other_user)
    return factories.api_client(user), factories.api_client(other_user)


def test_replies_join_the_roots_thread_and_count_on_it(room, user, other_user, pair):
    root = factories.send(room, user, "root")
    first = reply(room, other_user, mid(root))
    nested = reply(room, user, mid(first), "reply to the reply")
    assert first.envelope["data"]["thread"] == mid(root)
    assert nested.envelope["data"]["thread"] == mid(root)  # not the reply's id
    assert nested.envelope["data"]["reply_to"] == mid(first)
    assert root.envelope["data"]["thread"] is None
    stored = row(mid(root))
    assert (stored.reply_count, stored.last_reply_seq) == (2, nested.seq)
    message = pair[0].get(f"/api/messages/{mid(root)}/").json()
    assert (message["thread"], message["reply_count"], message["last_reply_seq"]) == (
        None,
        2,
        nested.seq,
    )
    assert pair[0].get(f"/api/messages/{mid(first)}/").json()["thread"] == mid(root)


def test_the_thread_endpoint_pages_replies_oldest_first(room, user, pair):
    root = factories.send(room, user, "root")
    factories.send(room, user, "not in the thread")
    seqs = [reply(room, user, mid(root), f"r{i}").seq for i in range(5)]
    page = pair[1].get(f"/api/messages/{mid(root)}/thread/", {"limit": 3}).json()
    assert page["root"]["id"] == mid(root) and page["root"]["reply_count"] == 5
    assert [m["seq"] for m in page["results"]] == seqs[:3]
    rest = pair[1].get(page["next"]).json()
    assert [m["body"] for m in rest["results"]] == ["r3", "r4"] and rest["next"] is None
    # Asked through a reply, the same thread.
    via_reply = pair[1].get(f"/api/messages/{page['results'][0]['id']}/thread/").json()
    assert via_reply["root"]["id"] == mid(root) and len(via_reply["results"]) == 5
    assert (
        pair[1].get(f"/api/messages/{mid(root)}/thread/", {"after": "x"}).json()["code"]
        == "invalid"
    )


def test_a_private_rooms_thread_is_not_found_by_outsiders(user):
    private = factories.make_room(user, kind=Room.Kind.PRIVATE)
    root = factories.send(private, user, "root")
    reply(private, user, mid(root))
    outsider = factories.api_client(factories.make_user())
    for path in ("thread/", "follow/"):
        response = (
            outsider.get(f"/api/messages/{mid(root)}/{path}")
            if path == "thread/"
            else outsider.post(f"/api/messages/{mid(root)}/{path}")
        )
        assert response.status_code == 404 and response.json()["code"] == "not_found"
    assert outsider.get("/api/threads/").json()["results"] == []


def test_root_author_and_repliers_follow_with_unread_counts(room, user, other_user, pair):
    mine, theirs = pair
    root = factories.send(room, user, "root")
    assert mine.get("/api/threads/").json()["results"] == []  # no replies: no thread yet
    first = reply(room, other_user, mid(root))
    listed = mine.get("/api/threads/").json()["results"]
    assert [(t["root"]["id"], t["reply_count"], t["unread"]) for t in listed] == [(mid(root), 1, 1)]
    # The replier read up to their own reply.
    assert theirs.get("/api/threads/").json()["results"][0]["unread"] == 0
    reply(room, other_user, mid(root))
    reply(room, user, mid(first))  # the root's author replies: read up to it
    assert mine.get("/api/threads/").json()["results"][0]["unread"] == 0
    assert theirs.get("/api/threads/").json()["results"][0]["unread"] == 1
    read = theirs.post(f"/api/messages/{mid(root)}/thread/read/", {}, format="json").json()
    assert read == {
        "root": mid(root),
        "following": True,
        "last_read_seq": row(mid(root)).last_reply_seq,
        "unread": 0,
    }
    assert theirs.get("/api/threads/").json()["results"][0]["unread"] == 0


def test_read_positions_never_move_back_and_bad_seqs_are_invalid(room, user, other_user, pair):
    root = factories.send(room, user, "root")
    replies = [reply(room, other_user, mid(root)) for _ in range(3)]
    mine = pair[0]
    url = f"/api/messages/{mid(root)}/thread/read/"
    assert mine.post(url, {"seq": replies[1].seq}, format="json").json()["unread"] == 1
    assert (
        mine.post(url, {"seq": replies[0].seq}, format="json").json()["last_read_seq"]
        == replies[1].seq
    )
    for bad in (-1, "x", 2**64):
        response = mine.post(url, {"seq": bad}, format="json")
        assert response.status_code == 400 and response.json()["code"] == "invalid"


def test_follow_and_unfollow(room, user, other_user, pair):
    mine, theirs = pair
    root = factories.send(room, user, "root")
    first = reply(room, user, mid(root))
    # Following through a reply follows its thread; replies so far count as read.
    followed = theirs.post(f"/api/messages/{mid(first)}/follow/").json()
    assert followed == {
        "root": mid(root),
        "following": True,
        "last_read_seq": first.seq,
        "unread": 0,
    }
    reply(room, user, mid(root))
    assert theirs.get("/api/threads/").json()["results"][0]["unread"] == 1
    gone = theirs.delete(f"/api/messages/{mid(root)}/follow/").json()
    assert gone["following"] is False
    assert theirs.get("/api/threads/").json()["results"] == []
    # Another's reply does not follow it again; the unfollower's own does.
    reply(room, user, mid(root))
    assert not ThreadFollow.objects.get(user=other_user, root_id=mid(root)).following
    reply(room, other_user, mid(root))
    assert ThreadFollow.objects.get(user=other_user, root_id=mid(root)).following
    # Unfollowing a root's author keeps them out too.
    mine.delete(f"/api/messages/{mid(root)}/follow/")
    reply(room, other_user, mid(root))
    assert mine.get("/api/threads/").json()["results"] == []


def test_threads_are_listed_latest_reply_first_and_paged(room, user, other_user, pair):
    roots = [factories.send(room, user, f"root {i}") for i in range(3)]
    for root in (roots[1], roots[0], roots[2], roots[1]):
        reply(room, other_user, mid(root))
    page = pair[0].get("/api/threads/", {"limit": 2}).json()
    assert [t["root"]["id"] for t in page["results"]] == [mid(roots[1]), mid(roots[2])]
    rest = pair[0].get(page["next"]).json()
    assert [t["root"]["id"] for t in rest["results"]] == [mid(roots[0])] and rest["next"] is None


def test_leaving_a_private_room_drops_its_threads_from_the_list(user, other_user):
    private = factories.make_room(user, kind=Room.Kind.PRIVATE, members=[other_user])
    root = factories.send(private, user, "root")
    reply(private, other_user, mid(root))
    theirs = factories.api_client(other_user)
    assert len(theirs.get("/api/threads/").json()["results"]) == 1
    rooms.room_leave(room=private, user=other_user)
    assert theirs.get("/api/threads/").json()["results"] == []


def test_deleting_a_reply_recounts_the_thread(room, user, other_user, pair):
    root = factories.send(room, user, "root")
    first = reply(room, other_user, mid(root))
    last = reply(room, other_user, mid(root))
    sent = []
    with (
        mock.patch("apps.events.services.send_events_on_commit", side_effect=sent.append),
        mock.patch("apps.messaging.services.send_events_on_commit", side_effect=sent.append),
    ):
        services.message_delete(message=row(mid(last)), actor=other_user)
    stored = row(mid(root))
    assert (stored.reply_count, stored.last_reply_seq) == (1, first.seq)
    updates = [item[0] for items in sent for item in items if item[0]["type"] == "thread.updated"]
    assert [u["data"] for u in updates] == [
        {"root": mid(root), "reply_count": 1, "last_reply_seq": first.seq}
    ]
    assert updates[0]["room"] == room.pk and updates[0]["seq"] is None
    # The other user's unread count of the root's author no longer counts it.
    assert pair[0].get("/api/threads/").json()["results"][0]["unread"] == 1
    services.message_delete(message=row(mid(first)), actor=user)
    assert (row(mid(root)).reply_count, row(mid(root)).last_reply_seq) == (0, None)
    # A deleted root keeps its thread (and cannot be replied to).
    second = reply(room, user, mid(root))
    services.message_delete(message=row(mid(root)), actor=user)
    assert row(mid(root)).reply_count == 1
    with pytest.raises(Exception) as refused:
        reply(room, user, mid(root))
    assert getattr(refused.value, "code", None) == "not_found"
    assert reply(room, user, mid(second)).envelope["data"]["thread"] == mid(root)


def test_an_erasure_recounts_the_threads_it_redacts_in(room, user, other_user):
    from apps.messaging.erasure import erase_history

    rooms.room_join(room=room, user=other_user)
    root = factories.send(room, user, "root")
    kept = reply(room, user, mid(root))
    for _ in range(2):
        reply(room, other_user, mid(root))
    other_user.is_active = False  # what account_erase does first
    other_user.save(update_fields=["is_active"])
    erase_history(user_id=other_user.pk)
    stored = row(mid(root))
    assert (stored.reply_count, stored.last_reply_seq) == (1, kept.seq)


def test_a_batch_plans_thread_updates_with_its_other_writes(room, user, other_user):
    rooms.room_join(room=room, user=other_user)
    a = factories.send(room, user, "root a")
    b = factories.send(room, other_user, "root b")
    a1 = reply(room, other_user, mid(a))
    requests = [
        SendRequest(room, user, "to a", uuid.uuid4(), mid(a)),
        SendRequest(room, other_user, "to a1 (thread a)", uuid.uuid4(), mid(a1)),
        SendRequest(room, user, "plain", uuid.uuid4()),
        SendRequest(room, user, "to b", uuid.uuid4(), mid(b)),
        SendRequest(room, other_user, "to b", uuid.uuid4(), mid(b)),
        SendRequest(room, user, "to nothing", uuid.uuid4(), 10**12),
    ]
    with counted() as plain_batch:
        message_send_many([SendRequest(room, user, f"p{i}", uuid.uuid4()) for i in range(6)])
    with counted() as thread_batch:
        results = message_send_many(requests)
    assert [type(r).__name__ for r in results] == ["Event"] * 5 + ["ServiceError"]
    assert [r.envelope["data"]["thread"] for r in results[:5]] == [
        mid(a),
        mid(a),
        None,
        mid(b),
        mid(b),
    ]
    assert (row(mid(a)).reply_count, row(mid(a)).last_reply_seq) == (3, results[1].seq)
    assert (row(mid(b)).reply_count, row(mid(b)).last_reply_seq) == (2, results[4].seq)
    assert set(ThreadFollow.objects.filter(root_id=mid(b)).values_list("user_id", flat=True)) == {
        user.pk,
        other_user.pk,
    }
    # PostgreSQL, counted on the wire: the round trips of a batch without replies (the reply
    # targets' read, with their roots, shares the reads' round trip; the root updates and
    # follows ride in the one write statement), whatever the number of threads.
    if connection.vendor == "postgresql":
        assert thread_batch.count == plain_batch.count == 4


@contextmanager
def counted():
    """PostgreSQL round trips on Django's connection (libpq's trace); elsewhere nothing."""
    if connection.vendor != "postgresql":
        yield None
        return
    from tests.support.roundtrips import RoundTrips

    connection.ensure_connection()
    with RoundTrips(connection.connection.pgconn) as trips:
        yield trips


@postgresql_only("the asyncio psycopg connection of the send lanes")
@pytest.mark.django_db(transaction=True)
def test_the_asyncio_send_path_counts_replies_too(user):
    room = factories.make_room(user)
    root = factories.send(room, user, "root")
    requests = [SendRequest(room.pk, user, f"r{i}", uuid.uuid4(), mid(root)) for i in range(3)]

    results = async_send_many(requests)
    assert all(r.envelope["data"]["thread"] == mid(root) for r in results)
    assert (row(mid(root)).reply_count, row(mid(root)).last_reply_seq) == (3, results[-1].seq)


def test_thread_updated_matches_its_schema_and_the_catalogue():
    import jsonschema

    from apps.events.catalogue import CATALOGUE
    from apps.messaging.threads import updated_envelope

    spec = CATALOGUE["thread.updated"]
    assert (spec.seq, spec.persisted, spec.fanout, spec.kafka) == (False, False, "room", False)
    envelope = updated_envelope(3, 10, 2, 17, actor=None)
    jsonschema.validate(envelope, envelope_schema("thread.updated"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**envelope, "seq": 5}, envelope_schema("thread.updated"))


def test_retention_takes_threads_with_their_roots(room, user):
    from apps.messaging.retention import room_purge_history

    root = factories.send(room, user, "root")
    kept = reply(room, user, mid(root))
    old = timezone.now() - timedelta(days=30)
    Event.objects.filter(room=room, seq__lte=root.seq).update(ts=old)
    Event.objects.filter(room=room).mark_published()
    Room.objects.filter(pk=room.pk).update(retention_days=1)
    room_purge_history(room_id=room.pk)
    assert not Message.objects.filter(pk=mid(root)).exists()
    assert row(mid(kept)).thread_id is None and not ThreadFollow.objects.exists()


def test_the_data_migration_threads_existing_replies(room, user, other_user):
    from importlib import import_module

    from django.apps import apps

    rooms.room_join(room=room, user=other_user)
    root = factories.send(room, user, "root")
    first = reply(room, other_user, mid(root))
    nested = reply(room, user, mid(first))
    gone = reply(room, other_user, mid(root))
    services.message_delete(message=row(mid(gone)), actor=other_user)
    # As before threads: no thread ids, no counts, no follows.
    Message.objects.update(thread=None, reply_count=0, last_reply_seq=None)
    ThreadFollow.objects.all().delete()
    migration = import_module("apps.messaging.migrations.0006_backfill_threads")
    migration.backfill(apps, SimpleNamespace(connection=connection))
    assert row(mid(nested)).thread_id == mid(root) and row(mid(first)).thread_id == mid(root)
    assert (row(mid(root)).reply_count, row(mid(root)).last_reply_seq) == (2, nested.seq)
    follows = dict(ThreadFollow.objects.values_list("user_id", "last_read_seq"))
    assert follows == {user.pk: nested.seq, other_user.pk: nested.seq}
