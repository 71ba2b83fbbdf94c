"""Mentions (@username, @room, @here) in sends and edits, who they may reach, the per-room
level, and the mentions count of the rooms list (PROTOCOL §9)."""

import pytest

from apps.core.redis import sync_client
from apps.events.models import Event
from apps.messaging import services as messaging
from apps.notifications import mentions, presence
from apps.notifications.models import MentionCursor, Notification
from apps.rooms import services as rooms
from apps.rooms.models import Room
from apps.users.models import Block
from tests import factories

pytestmark = pytest.mark.django_db


def cast(n=3, kind=Room.Kind.PUBLIC):
    author, *others = (factories.make_user() for _ in range(n + 1))
    return factories.make_room(author, kind=kind, members=others), author, others


def notified(**filters) -> dict[int, str]:
    """Run the worker, then {user id: kind} of the notifications matching `filters`."""
    mentions.process_pending()
    return dict(Notification.objects.filter(**filters).values_list("user_id", "kind"))


def edit(message_id, author, body):
    message = messaging.get_message_or_404(message_id, author)
    return messaging.message_edit(message=message, actor=author, body=body)


def test_parse_reads_usernames_room_and_here():
    found = mentions.parse("hi @Ada, @bob.smith. @room and @HERE; mail x@y.org")
    assert found.room and found.here
    assert {"ada", "bob.smith"} <= set(found.keys) and "y.org" not in found.keys
    assert "room" not in found.keys and "here" not in found.keys
    assert not mentions.parse("no at sign") and not mentions.parse(None)
    assert mentions.parse("@a @b").minus(mentions.parse("@a")).keys == frozenset({"b"})


def test_a_username_mention_notifies_that_member_once_and_moves_the_cursor():
    room, author, (ada, _, _) = cast()
    sent = factories.send(room, author, body=f"hello @{ada.username.upper()}!")
    assert notified() == {ada.pk: "mention"}
    note = Notification.objects.get()
    assert (note.room_id, note.seq, note.message_id, note.actor_id) == (
        room.pk,
        sent.envelope["seq"],
        sent.envelope["data"]["id"],
        author.pk,
    )
    assert str(note.event_id) == sent.envelope["id"] and note.excerpt.startswith("hello")
    assert MentionCursor.objects.get(room=room).seq == Room.objects.get(pk=room.pk).last_seq
    run = mentions.process_pending()
    assert run.events == 0 and Notification.objects.count() == 1
    # The Kafka handler (optional) finds the same event done: nothing twice.
    from apps.events import handlers
    from apps.notifications.handlers import MentionNotifications

    handlers.process("notifications", MentionNotifications(), sent.envelope)
    assert Notification.objects.count() == 1


def test_room_notifies_every_member_but_the_author():
    room, author, others = cast(4)
    factories.send(room, author, body="@room lunch?")
    assert notified() == {u.pk: "room" for u in others}


def test_room_in_a_room_over_50_members_needs_a_moderator():
    room, owner, members = cast(51)
    assert room.memberships.filter(is_active=True).count() == 52
    speaker = members[0]
    factories.send(room, speaker, body="@room everyone look")
    assert notified() == {}
    rooms.member_set_role(room=room, actor=owner, user=speaker, role="moderator")
    factories.send(room, speaker, body="@room now it counts")
    assert set(notified()) == {u.pk for u in [owner, *members[1:]]}
    # A named member in the same text is still a mention, whoever writes it.
    plain = members[1]
    factories.send(room, plain, body=f"@room and @{members[2].username}")
    assert notified(seq=Room.objects.get(pk=room.pk).last_seq) == {members[2].pk: "mention"}


@pytest.mark.services
def test_here_notifies_the_members_online_now():
    room, author, (online, away, offline) = cast()
    keys = {online.pk: "online", away.pk: "away", author.pk: "online"}
    for uid, status in keys.items():  # as apps.users.presence publishes them
        sync_client().set(presence.status_key(uid), status, ex=60)
    try:
        factories.send(room, author, body=f"@here, and @{offline.username}")
        assert notified() == {online.pk: "here", offline.pk: "mention"}
    finally:
        sync_client().delete(*(presence.status_key(uid) for uid in keys))


def test_mentions_of_people_who_may_not_read_the_room_notify_no_one():
    room, author, (member, banned, blocker) = cast(kind=Room.Kind.PRIVATE)
    outsider, gone, deactivated = (factories.make_user() for _ in range(3))
    for user in (gone, deactivated):
        rooms.room_invite(room=room, actor=author, user=user)
    rooms.room_leave(room=room, user=gone)
    deactivated.is_active = False
    deactivated.save(update_fields=["is_active"])
    rooms.member_ban(room=room, actor=author, user=banned, reason="spam")
    Block.objects.create(blocker=blocker, blocked=author)
    names = [member, banned, blocker, outsider, gone, deactivated, author]
    factories.send(room, author, body=" ".join(f"@{u.username}" for u in names) + " @room")
    assert notified() == {member.pk: "mention"}


def test_a_banned_member_of_a_public_room_is_not_notified():
    room, author, (member, banned, _) = cast()
    rooms.member_ban(room=room, actor=author, user=banned, reason="spam")
    factories.send(room, author, body=f"@{banned.username} @{member.username}")
    assert notified() == {member.pk: "mention"}


def test_level_none_silences_every_mention_and_mentions_keeps_them():
    room, author, (quiet, normal, loud) = cast()
    api = factories.api_client
    for user, level in ((quiet, "none"), (normal, "mentions"), (loud, "all")):
        answer = api(user).patch(
            f"/api/rooms/{room.pk}/membership/", {"notify": level}, format="json"
        )
        assert answer.status_code == 200, answer.content
        assert answer.json()["membership"]["notify"] == level
    factories.send(room, author, body=f"@room @{quiet.username}")
    assert notified() == {normal.pk: "room", loud.pk: "room"}


def test_an_edit_notifies_only_the_newly_mentioned_and_nobody_twice():
    room, author, (ada, bob, cy) = cast()
    sent = factories.send(room, author, body=f"hi @{ada.username}")
    message_id = sent.envelope["data"]["id"]
    assert notified() == {ada.pk: "mention"}
    edited = edit(message_id, author, f"hi @{ada.username} and @{bob.username}")
    assert notified(seq=edited.seq) == {bob.pk: "mention"}
    # Saying the same again, or @room after everyone named was notified: no one twice.
    edit(message_id, author, f"hi @{ada.username} and @{bob.username}!")
    last = edit(message_id, author, f"hi @{ada.username} @{bob.username} @room")
    assert notified(seq=last.seq) == {cy.pk: "room"}
    assert sorted(Notification.objects.values_list("user_id", flat=True)) == sorted(
        [ada.pk, bob.pk, cy.pk]
    )
    # An edit that adds no mention makes nothing.
    edit(message_id, author, "plain text now")
    assert Notification.objects.count() == 3


def test_an_edit_processed_with_its_send_in_one_pass_still_notifies_once():
    room, author, (ada, bob, _) = cast()
    sent = factories.send(room, author, body=f"@{ada.username}")
    edit(sent.envelope["data"]["id"], author, f"@{ada.username} @{bob.username}")
    assert notified() == {ada.pk: "mention", bob.pk: "mention"}


def test_a_deleted_message_before_the_worker_runs_notifies_no_one():
    room, author, (ada, _, _) = cast()
    sent = factories.send(room, author, body=f"@{ada.username}")
    messaging.message_delete(
        message=messaging.get_message_or_404(sent.envelope["data"]["id"], author), actor=author
    )
    assert notified() == {}


def test_the_worker_reads_each_room_from_its_cursor_across_many_rooms(monkeypatch):
    monkeypatch.setattr(mentions, "ROOMS_PER_RUN", 2)
    author, ada = factories.make_user(), factories.make_user()
    made = [factories.make_room(author, members=[ada]) for _ in range(5)]
    for room in made:
        factories.send(room, author, body="no mention")
        factories.send(room, author, body=f"@{ada.username} in {room.pk}")
    first = mentions.process_pending()
    assert first.more and first.rooms == 2 and first.notifications == 2
    while mentions.process_pending().more:
        pass
    assert set(Notification.objects.values_list("room_id", flat=True)) == {r.pk for r in made}
    assert Notification.objects.count() == 5
    for room in made:
        assert MentionCursor.objects.get(room=room).seq == Room.objects.get(pk=room.pk).last_seq


def test_only_content_events_with_an_at_sign_are_read():
    room, author, (ada, _, _) = cast()
    factories.send(room, author, body="nothing here")
    rooms.room_update(room=room, actor=author, topic=f"@{ada.username}")
    run = mentions.process_pending()
    assert run.events == 0 and not Notification.objects.exists()
    assert Event.objects.filter(room=room).count() > 3


# --- The level endpoint, and the rooms list's counts -------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"notify": "loud"},
        {"notify": None},
        {},
        {"notify": 1},
        {"notify": "all", "extra": 1},
        ["all"],
    ],
)
def test_bad_levels_are_invalid(body):
    room, _, (member, _, _) = cast()
    answer = factories.api_client(member).patch(
        f"/api/rooms/{room.pk}/membership/", body, format="json"
    )
    assert answer.status_code == 400 and answer.json()["code"] == "invalid"


def test_non_members_get_the_rooms_rules():
    room, _, _ = cast()
    private, _, _ = cast(kind=Room.Kind.PRIVATE)
    outsider = factories.api_client(factories.make_user())
    public = outsider.patch(f"/api/rooms/{room.pk}/membership/", {"notify": "all"}, format="json")
    assert public.status_code == 403 and public.json()["code"] == "forbidden"
    hidden = outsider.patch(
        f"/api/rooms/{private.pk}/membership/", {"notify": "all"}, format="json"
    )
    assert hidden.status_code == 404 and hidden.json()["code"] == "not_found"


def test_rooms_list_carries_unread_mentions_and_level_and_reading_clears_mentions():
    room, author, (ada, _, _) = cast()
    quiet, _, _ = cast()
    api = factories.api_client(ada)
    factories.send(room, author, body=f"@{ada.username} one")
    factories.send(room, author, body="@room two")
    factories.send(room, author, body="three")
    mentions.process_pending()

    def mine():
        return {r["id"]: r for r in api.get("/api/rooms/?joined=true").json()["results"]}

    listed = mine()[room.pk]
    assert (listed["unread"], listed["mentions"]) == (3, 2)
    assert listed["membership"]["notify"] == "mentions"
    # Read up to the first mention: one left; read everything: none, and marked read.
    first_seq = Notification.objects.order_by("seq").first().seq
    assert (
        api.post(f"/api/rooms/{room.pk}/read/", {"seq": first_seq}, format="json").status_code
        == 200
    )
    assert mine()[room.pk]["mentions"] == 1
    api.post(
        f"/api/rooms/{room.pk}/read/", {"seq": Room.objects.get(pk=room.pk).last_seq}, format="json"
    )
    listed = mine()[room.pk]
    assert (listed["unread"], listed["mentions"]) == (0, 0)
    assert not Notification.objects.filter(user=ada, read_at__isnull=True).exists()
    # Someone who is not a member sees no count.
    outsider = factories.api_client(factories.make_user()).get("/api/rooms/").json()
    assert {r["id"]: r["mentions"] for r in outsider["results"]}.get(room.pk) == 0
    assert quiet.pk not in mine()


# --- The send path is untouched ------------------------------------------------------------


def test_mentions_add_no_statement_to_the_send_path(monkeypatch):
    """The batched send path runs the same statements whether the bodies mention people or
    not: the mentions are the worker's, after the commit. (On PostgreSQL the send path runs
    its statements on psycopg cursors directly, so those are counted too.)"""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    raw = []
    if connection.vendor == "postgresql":
        import psycopg

        execute = psycopg.Cursor.execute

        def counted(self, query, *args, **kwargs):
            raw.append(str(query))
            return execute(self, query, *args, **kwargs)

        monkeypatch.setattr(psycopg.Cursor, "execute", counted)
    room, author, others = cast(3)
    names = " ".join(f"@{u.username}" for u in others)

    def batch(body):
        requests = [
            messaging.SendRequest(room, author, f"{body} {i}", factories.uuid.uuid4())
            for i in range(20)
        ]
        raw.clear()
        with CaptureQueriesContext(connection) as queries:
            results = messaging.message_send_many(requests)
        assert all(not isinstance(r, Exception) for r in results)
        return [q["sql"] for q in queries.captured_queries] + list(raw)

    plain = batch("no mention")
    mentioning = batch(f"{names} @room @here")
    assert len(mentioning) == len(plain) > 0
    assert not any("notification" in sql.lower() for sql in mentioning)
    assert not Notification.objects.exists()
    assert len(notified()) == 3


@pytest.mark.services
def test_a_commit_with_an_at_sign_kicks_the_worker_once_and_others_never():
    from django.conf import settings
    from django.test import TestCase

    from apps.notifications.tasks import kick_key

    client = sync_client()
    queue = (
        settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("global_keyprefix", "")
        + settings.CELERY_TASK_DEFAULT_QUEUE
    )
    task = b"apps.notifications.tasks.notify_mentions"
    room, author, (ada, _, _) = cast()
    client.delete(kick_key())
    before = client.lrange(queue, 0, -1)

    def queued_kicks():
        return sum(task in entry for entry in client.lrange(queue, 0, -1)) - sum(
            task in entry for entry in before
        )

    try:
        # The sends commit inside the test's transaction: run their after-commit effects.
        with TestCase.captureOnCommitCallbacks(execute=True):
            for i in range(5):
                factories.send(room, author, body=f"plain {i}")
        assert queued_kicks() == 0
        with TestCase.captureOnCommitCallbacks(execute=True):
            for i in range(5):
                factories.send(room, author, body=f"@{ada.username} {i}")
        assert queued_kicks() == 1  # debounced: one queued task
    finally:  # no worker runs here: take back what the test queued (the outbox's kicks too)
        for entry in client.lrange(queue, 0, -1):
            if entry not in before:
                client.lrem(queue, 1, entry)
        client.delete(kick_key())
