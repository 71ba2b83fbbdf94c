"""Deletion means deletion (PROTOCOL §6): a deleted message's text is in no read path and in no
row, from the deleting transaction on; resends and replies behave as the contract says."""

from __future__ import annotations

import asyncio
import uuid
from importlib import import_module
from types import SimpleNamespace

import jsonschema
import pytest
from django.apps import apps as django_apps
from django.db import connection

from apps.core.errors import ServiceError
from apps.events import kafka, publisher
from apps.events.models import Event, Outbox
from apps.events.schemas import SCHEMAS
from apps.messaging import services
from apps.messaging.models import Message
from apps.messaging.services import SendRequest
from apps.rooms import services as rooms
from tests import factories
from tests.support.services import postgresql_only

CONTENT = ("message.created", "message.edited")


def rows_containing(text: str) -> int:
    """Rows of the event table whose stored envelope holds the text (read from the column)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*) FROM {Event._meta.db_table} WHERE CAST(envelope AS TEXT) LIKE %s",
            [f"%{text}%"],
        )
        return cursor.fetchone()[0]


def message_of(event) -> Message:
    return Message.objects.get(pk=event.envelope["data"]["id"])


def validate(envelope):
    jsonschema.Draft202012Validator(
        SCHEMAS[envelope["type"]], format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(envelope)


@pytest.mark.django_db
def test_delete_redacts_the_created_and_every_edited_event_and_keeps_the_rest(room, user):
    first = factories.send(room, user, "secret number one")
    message = message_of(first)
    services.message_edit(message=message, actor=user, body="secret number two")
    services.message_edit(message=message, actor=user, body="secret number three")
    before = {e.pk: e.envelope for e in Event.objects.filter(message_id=message.pk)}
    assert {e["type"] for e in before.values()} == set(CONTENT)
    assert rows_containing("secret number") == 3

    deleted = services.message_delete(message=message, actor=user)

    assert deleted.envelope["data"] == {"id": message.pk, "by_moderator": False, "reason": None}
    assert rows_containing("secret number") == 0
    for event in Event.objects.filter(pk__in=before):
        old, new = before[event.pk], event.envelope
        validate(new)
        assert new["data"]["body"] is None and new["data"]["redacted"] is True
        assert new["data"]["attachments"] == []
        # Everything else stays: id, type, seq, ts, actor and the other data fields.
        assert {k: v for k, v in new.items() if k != "data"} == {
            k: v for k, v in old.items() if k != "data"
        }
        assert {
            k: v for k, v in new["data"].items() if k not in ("body", "attachments", "redacted")
        } == {k: v for k, v in old["data"].items() if k not in ("body", "attachments", "redacted")}
    message.refresh_from_db()
    assert message.body == "" and message.is_deleted
    # Other messages are untouched.
    other = factories.send(room, user, "still here")
    assert rows_containing("still here") == 1
    assert Event.objects.get(pk=other.pk).envelope["data"]["redacted"] is False


@pytest.mark.django_db
def test_a_moderators_delete_carries_the_reason_and_redacts_the_same(room, user, other_user):
    rooms.room_join(room=room, user=other_user)
    message = message_of(factories.send(room, other_user, "moderated words"))
    event = services.message_delete(message=message, actor=user, reason="  off topic ")
    assert event.envelope["data"] == {"id": message.pk, "by_moderator": True, "reason": "off topic"}
    validate(event.envelope)
    assert rows_containing("moderated words") == 0


@pytest.mark.django_db
def test_a_resend_of_a_deleted_messages_client_id_returns_the_redacted_event(room, user):
    client_id = uuid.uuid4()
    created = factories.send(room, user, "take it back", client_id=client_id)
    services.message_delete(message=message_of(created), actor=user)
    again = factories.send(room, user, "take it back", client_id=client_id)
    assert again.pk == created.pk and again.seq == created.seq
    assert again.envelope["data"]["body"] is None and again.envelope["data"]["redacted"] is True
    assert Message.objects.filter(author=user).count() == 1


@pytest.mark.django_db
def test_reply_to_a_deleted_message_is_not_found(room, user):
    target = message_of(factories.send(room, user, "soon gone"))
    services.message_delete(message=target, actor=user)
    with pytest.raises(ServiceError) as err:
        factories.send(room, user, "a reply", reply_to=target.pk)
    assert err.value.code == "not_found"
    # In a batch, only that request is refused.
    results = services.message_send_many(
        [
            SendRequest(room.pk, user, "ok", uuid.uuid4()),
            SendRequest(room.pk, user, "reply", uuid.uuid4(), target.pk),
        ]
    )
    assert type(results[0]).__name__ == "Event" and results[1].code == "not_found"


@pytest.mark.django_db(transaction=True)
@postgresql_only("the asyncio psycopg connection of the send lanes")
def test_the_asyncio_send_path_answers_deleted_messages_the_same():
    """amessage_send_many (the server's lanes): the resend is redacted, the reply not_found,
    and a message it wrote is found by its message_id and redacted."""
    import psycopg

    owner = factories.make_user()
    room = factories.make_room(owner)
    client_id = uuid.uuid4()
    gone = factories.send(room, owner, "asyncio secret", client_id=client_id)
    services.message_delete(message=message_of(gone), actor=owner)

    async def scenario(requests):
        params = connection.get_connection_params()
        params.pop("cursor_factory", None)
        async with await psycopg.AsyncConnection.connect(**params, autocommit=True) as conn:
            return await services.amessage_send_many(conn, requests)

    resend, reply, fresh = asyncio.run(
        scenario(
            [
                SendRequest(room.pk, owner, "asyncio secret", client_id),
                SendRequest(room.pk, owner, "re", uuid.uuid4(), gone.envelope["data"]["id"]),
                SendRequest(room.pk, owner, "asyncio fresh words", uuid.uuid4()),
            ]
        )
    )
    assert resend.pk == gone.pk and resend.envelope["data"]["body"] is None
    assert isinstance(reply, ServiceError) and reply.code == "not_found"
    assert Event.objects.get(pk=fresh.pk).message_id == fresh.envelope["data"]["id"]
    services.message_delete(message=message_of(fresh), actor=owner)
    assert rows_containing("asyncio") == 0


@pytest.mark.django_db
@postgresql_only("PostgreSQL's query plan (EXPLAIN) through the event_message index")
def test_the_redaction_is_one_update_through_the_message_index(room, user):
    """PostgreSQL plans the redaction through event_message, never a scan of the log."""
    message = message_of(factories.send(room, user, "indexed"))
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")  # the table is tiny in a test
        cursor.execute(
            f"EXPLAIN UPDATE {Event._meta.db_table} SET envelope = envelope "
            "WHERE message_id = ANY(%s) AND type = ANY(%s)",
            [[message.pk], list(CONTENT)],
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "event_message" in plan, plan


def _admin_pages(client, room, messages, *, events=True) -> str:
    """The HTML of the admin's message (and event log) change lists and change pages."""
    pages = [
        client.get("/admin/messaging/message/"),
        client.get("/admin/messaging/message/", {"q": "gone"}),
    ]
    if events:
        pages += [
            client.get("/admin/events/event/"),
            client.get(f"/admin/events/event/?room={room.pk}"),
        ]
    for message in messages:
        pages.append(client.get(f"/admin/messaging/message/{message.pk}/change/"))
        for event in Event.objects.filter(message_id=message.pk) if events else ():
            pages.append(client.get(f"/admin/events/event/{event.pk}/change/"))
    assert all(page.status_code == 200 for page in pages), [p.status_code for p in pages]
    return "".join(page.content.decode() for page in pages)


@pytest.mark.django_db(transaction=True)
@pytest.mark.services
def test_after_a_delete_by_any_path_the_text_is_in_no_read_path(server):
    """Author (WebSocket), room moderator and site moderator (REST), the admin action: then
    REST events and messages, a WebSocket replay from 0, the admin pages and the table."""
    from tests.support.wsclient import WS
    from tests.test_admin import apply, logged_in

    owner, author = factories.make_user(), factories.make_user()
    room = factories.make_room(owner, members=[author])
    room_mod = factories.make_user()
    rooms.room_join(room=room, user=room_mod)
    rooms.member_set_role(room=room, actor=owner, user=room_mod, role="moderator")
    site_mod = factories.make_moderator()
    texts = [f"gone by path {n}" for n in range(4)]
    sent = [message_of(factories.send(room, author, text)) for text in texts]
    services.message_edit(message=sent[0], actor=author, body="gone by path 0, edited")
    kept = factories.send(room, author, "this one stays")

    socket = WS(server.ws_url, token=factories.make_token(author))
    try:
        socket.hello()
        ack = socket.request("message.delete", message=sent[0].pk)
        assert ack["type"] == "ack", ack
    finally:
        socket.close()
    as_room_mod = factories.api_client(room_mod, token=True)
    assert as_room_mod.delete(f"/api/messages/{sent[1].pk}/").status_code == 200
    as_site_mod = factories.api_client(site_mod, token=True)
    assert as_site_mod.delete(f"/api/messages/{sent[2].pk}/").status_code == 200
    admin = factories.make_user(is_staff=True, is_superuser=True)
    apply(logged_in(admin), "/admin/messaging/message/", "delete_messages", [sent[3]], reason="")

    def absent(blob: str):
        for text in texts:
            assert text not in blob

    reader = factories.api_client(owner, token=True)
    events = reader.get(f"/api/rooms/{room.pk}/events/", {"since": 0, "limit": 500})
    assert events.status_code == 200
    absent(events.content.decode())
    assert "this one stays" in events.content.decode()
    created = [
        e
        for e in events.json()["results"]
        if e["type"] == "message.created" and e["data"]["id"] in {m.pk for m in sent}
    ]
    assert len(created) == 4 and all(e["data"]["redacted"] for e in created)
    messages = reader.get(f"/api/rooms/{room.pk}/messages/", {"limit": 100})
    absent(messages.content.decode())
    for message in sent:
        one = reader.get(f"/api/messages/{message.pk}/")
        assert one.status_code == 200 and one.json()["body"] is None
    replay = WS(server.ws_url, token=factories.make_token(owner))
    try:
        replay.hello()
        subscribed = replay.subscribe(room.pk, since=0)
        assert subscribed["type"] == "subscribed" and not subscribed["truncated"]
        absent(repr(replay.frames))
        assert str(kept.pk) in {f["id"] for f in replay.frames if "id" in f}
    finally:
        replay.close()
    absent(_admin_pages(logged_in(admin), room, sent))
    absent(_admin_pages(logged_in(site_mod), room, sent, events=False))
    for text in texts:
        assert rows_containing(text) == 0
    assert not Message.objects.filter(body__contains="gone by path").exists()


@pytest.mark.kafka
@pytest.mark.django_db
def test_a_delete_while_the_broker_is_down_reaches_kafka_redacted(room, user):
    from tests.events.kafka_support import kill_broker, outage_settings, read_topic
    from tests.support.services import Broker

    kafka.reset_producer()
    broker = Broker().start()
    try:
        with outage_settings(broker):
            publisher.publish_pending()
            kill_broker(broker)
            created = factories.send(room, user, "said during the outage")
            assert publisher.publish_pending(max_seconds=5).published == 0
            assert Outbox.objects.get(pk=created.pk).last_error  # tried, failed, still pending
            deleted = services.message_delete(message=message_of(created), actor=user)

            broker = Broker(port=broker.port).start()
            kafka.reset_producer()
            assert publisher.publish_pending().published >= 2
            records = read_topic([broker.bootstrap], want_ids=[created.pk, deleted.pk])
            by_id = {r.envelope["id"]: r.envelope for r in records}
            assert by_id[str(created.pk)]["data"]["body"] is None
            assert by_id[str(created.pk)]["data"]["redacted"] is True
            assert by_id[str(deleted.pk)]["type"] == "message.deleted"
            assert not any("said during the outage" in str(r.envelope) for r in records)
    finally:
        kill_broker(broker)
        kafka.reset_producer()


@pytest.mark.django_db
def test_the_data_migrations_backfill_the_message_ids_and_redact_old_deletions(room, user):
    """Rows written before this change: no message_id, and deleted messages kept their text."""
    old = message_of(factories.send(room, user, "deleted long ago"))
    services.message_edit(message=old, actor=user, body="deleted long ago, edited")
    live = factories.send(room, user, "alive and well")
    # What a deletion used to do: the row marked, its body and its events left as they were.
    Message.objects.filter(pk=old.pk).update(deleted_at=old.created_at)
    Event.objects.update(message_id=None, subject_id=None)

    backfill = import_module("apps.events.migrations.0008_backfill_message_subject")
    redact = import_module("apps.messaging.migrations.0004_redact_deleted_messages")
    editor = SimpleNamespace(connection=connection)  # all the migrations read of it
    backfill.backfill(django_apps, editor)
    redact.redact_deleted(django_apps, editor)
    redact.redact_deleted(django_apps, editor)  # again: nothing left to do

    assert Event.objects.get(pk=live.pk).message_id == live.envelope["data"]["id"]
    assert Event.objects.filter(message_id=old.pk).count() == 2
    joined = Event.objects.get(room=room, type="room.created")
    assert joined.message_id is None
    assert rows_containing("deleted long ago") == 0
    assert rows_containing("alive and well") == 1
    old.refresh_from_db()
    assert old.body == ""


@pytest.mark.django_db
def test_a_deleted_messages_mention_notifications_go_with_it(room, user, other_user):
    from apps.notifications.handlers import MentionNotifications

    rooms.room_join(room=room, user=other_user)
    created = factories.send(room, user, f"psst @{other_user.username} the code is 1234")
    MentionNotifications().handle(created.envelope)  # what the Kafka consumer does
    reader = factories.api_client(other_user, token=True)
    assert "1234" in reader.get("/api/notifications/").content.decode()
    services.message_delete(message=message_of(created), actor=user)
    assert "1234" not in reader.get("/api/notifications/").content.decode()
    # The redacted message.created, should the consumer read it only now, notifies nobody.
    MentionNotifications().handle(Event.objects.get(pk=created.pk).envelope)
    assert reader.get("/api/notifications/").json()["results"] == []
