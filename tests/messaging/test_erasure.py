"""Erasing an account (PROTOCOL §6): unusable at once, every message redacted by a real Celery
worker in batches, the name gone from every stored envelope, nothing removed."""

from __future__ import annotations

import time

import pytest
from django.db import connection
from django.db.models import ProtectedError

from apps.events.models import Event
from apps.messaging import erasure, services
from apps.messaging.models import Message, Reaction
from apps.rooms import services as rooms
from apps.rooms.models import Room
from apps.users.models import User
from tests import factories
from tests.events.kafka_support import wait_for
from tests.test_admin import apply, logged_in

PASSWORD = "pw-for-tests-1"


def envelopes_naming(username: str) -> int:
    """Rows of the event table whose stored envelope holds the name (read from the column)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*) FROM {Event._meta.db_table} WHERE CAST(envelope AS TEXT) LIKE %s",
            [f"%{username}%"],
        )
        return cursor.fetchone()[0]


def assert_gapless(room: Room):
    room.refresh_from_db()
    seqs = list(
        Event.objects.filter(room=room).sequenced().order_by("seq").values_list("seq", flat=True)
    )
    assert seqs == list(range(1, room.last_seq + 1))


def history_in_three_rooms(name: str):
    """`name` writes, edits, reacts and is named in member events in three rooms."""
    user = factories.make_user(username=name)
    other = factories.make_user()
    made = []
    for n in range(3):
        room = factories.make_room(other, members=[user])
        for i in range(4):
            factories.send(room, user, f"{name} wrote {n}.{i}")
            factories.send(room, other, f"other wrote {n}.{i}")
        first = Message.objects.filter(room=room, author=user).order_by("seq").first()
        services.message_edit(message=first, actor=user, body=f"{name} edited {n}")
        services.reaction_add(message=first, user=user, emoji="👍")
        made.append(room)
    rooms.member_set_role(room=made[0], actor=other, user=user, role="moderator")
    return user, other, made


def assert_erased(user_id: int, name: str, made, messages_before: int, events_before: int):
    user = User.objects.get(pk=user_id)
    assert not user.is_active and user.username == f"deleted-user-{user_id}"
    assert user.erased_at is not None and not user.has_usable_password()
    written = Message.objects.filter(author_id=user_id)
    assert written.count() == 12 and not written.filter(deleted_at__isnull=True).exists()
    assert not written.exclude(body="").exists()
    assert Message.objects.count() == messages_before  # redacted, not removed
    for room in made:
        deleted = Event.objects.filter(room=room, type="message.deleted")
        assert deleted.count() == 4
        assert {e.envelope["data"]["reason"] for e in deleted} == {"erased"}
        assert_gapless(room)
    assert Event.objects.count() == events_before + 12
    assert envelopes_naming(name) == 0
    assert envelopes_naming(f"deleted-user-{user_id}") > 0
    assert not Event.objects.filter(
        message_id__in=written.values("pk"), envelope__data__redacted=False
    ).exists()
    # The others' messages are untouched.
    assert (
        Message.objects.filter(body__startswith="other wrote", deleted_at__isnull=True).count()
        == 12
    )


@pytest.mark.django_db
def test_erasing_needs_the_password_and_a_bad_one_changes_nothing(user):
    client = factories.api_client(user, token=True)
    missing = client.delete("/api/me/", {}, format="json")
    assert missing.status_code == 400 and missing.json()["code"] == "invalid"
    wrong = client.delete("/api/me/", {"password": "not it"}, format="json")
    assert wrong.status_code == 403 and wrong.json()["code"] == "forbidden"
    number = client.delete("/api/me/", {"password": 12345}, format="json")
    assert number.status_code in (400, 403)
    user.refresh_from_db()
    assert user.is_active and user.erased_at is None
    assert client.get("/api/me/").status_code == 200


@pytest.mark.django_db
def test_nobody_deletes_a_user_row_with_their_history(room, user):
    factories.send(room, user, "kept")
    with pytest.raises(ProtectedError):
        user.delete()
    assert Message.objects.filter(author=user).count() == 1


@pytest.mark.django_db
def test_who_may_erase_whom():
    superuser = factories.make_user(is_staff=True, is_superuser=True)
    moderator = factories.make_moderator()
    staff = factories.make_user(is_staff=True)
    plain = factories.make_user()
    assert erasure.can_erase(superuser, staff) and erasure.can_erase(superuser, moderator)
    assert erasure.can_erase(moderator, plain)
    assert not erasure.can_erase(moderator, staff) and not erasure.can_erase(moderator, superuser)
    assert not erasure.can_erase(plain, factories.make_user())
    assert not erasure.can_erase(superuser, superuser)  # one's own: DELETE /api/me/


@pytest.mark.django_db
def test_the_user_admin_offers_erase_and_no_delete():
    superuser = factories.make_user(is_staff=True, is_superuser=True)
    moderator = factories.make_moderator()
    target = factories.make_user()
    for who, url in ((superuser, "/admin/users/user/"), (moderator, "/admin/moderation/account/")):
        page = logged_in(who).get(url)
        assert page.status_code == 200
        assert b'value="erase_accounts"' in page.content
        assert b'value="delete_selected"' not in page.content
        change = logged_in(who).get(f"{url}{target.pk}/change/")
        assert change.status_code == 200 and b"/delete/" not in change.content
    assert logged_in(superuser).post(f"/admin/users/user/{target.pk}/delete/").status_code == 403
    target.refresh_from_db()
    assert target.is_active


@pytest.mark.django_db
def test_a_moderator_erases_members_but_not_staff_in_the_admin():
    moderator = factories.make_moderator()
    staff, member = factories.make_user(is_staff=True), factories.make_user()
    apply(
        logged_in(moderator), "/admin/moderation/account/", "erase_accounts", [staff], confirm="on"
    )
    staff.refresh_from_db()
    assert staff.is_active and staff.erased_at is None
    apply(
        logged_in(moderator), "/admin/moderation/account/", "erase_accounts", [member], confirm="on"
    )
    member.refresh_from_db()
    assert not member.is_active and member.username == f"deleted-user-{member.pk}"
    # Without the confirmation box ticked nothing happens.
    other = factories.make_user()
    page = logged_in(moderator).post(
        "/admin/moderation/account/",
        {"action": "erase_accounts", "_selected_action": [other.pk], "apply": "1"},
    )
    assert page.status_code == 200
    other.refresh_from_db()
    assert other.is_active


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_an_erased_user_who_wrote_in_three_rooms_is_gone_from_every_room(child_env):
    """DELETE /api/me/: the socket closes 4401 at once, the worker redacts every message in
    batches (message.deleted, reason erased, in each room), the name leaves every envelope."""
    from tests.support.processes import CeleryWorker, ServerProcess
    from tests.support.wsclient import WS

    name = "erasable-ada"
    user, other, made = history_in_three_rooms(name)
    messages_before, events_before = Message.objects.count(), Event.objects.count()
    reactions_before = Reaction.objects.count()
    token = factories.make_token(user)
    server = ServerProcess(child_env).start()
    # Fixed batches of 3 (not timed: a loaded machine would make them smaller).
    worker = CeleryWorker(
        dict(child_env, ERASURE_BATCH_SIZE="3", ERASURE_BATCH_SECONDS="0")
    ).start()
    socket = None
    try:
        worker.wait_ready()
        socket = WS(server.ws_url, token=token)
        socket.hello()
        assert socket.subscribe(made[0].pk)["type"] == "subscribed"
        client = factories.api_client(user, token=True)
        assert client.delete("/api/me/", {"password": PASSWORD}, format="json").status_code == 204
        assert socket.wait_closed() == 4401
        assert any(f.get("code") == "unauthenticated" for f in socket.frames)
        assert client.get("/api/me/").status_code == 401  # the token is gone

        wait_for(
            lambda: (
                not Message.objects.filter(author=user, deleted_at__isnull=True).exists()
                and envelopes_naming(name) == 0
            ),
            timeout=60,
            message="the worker's erasure",
        )
        assert_erased(user.pk, name, made, messages_before, events_before)
        assert Reaction.objects.count() == reactions_before
        # Each batch is its own transaction: 4 messages per room in batches of 3.
        for room in made:
            batches = {e.ts for e in Event.objects.filter(room=room, type="message.deleted")}
            assert len(batches) == 2
        # Rooms stayed writable: the other member sends on, the seqs go on.
        factories.send(made[0], other, "after the erasure")
        assert_gapless(made[0])
        # Running it again is harmless.
        assert erasure.erase_history(user_id=user.pk) == {"messages": 0, "batches": 0, "renamed": 0}
        assert_erased(user.pk, name, made, messages_before + 1, events_before + 1)
    finally:
        if socket is not None:
            socket.close()
        worker.stop()
        server.stop()


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_the_admins_erase_action_does_the_same_and_removes_no_row(celery_worker):
    name = "erasable-grace"
    user, _other, made = history_in_three_rooms(name)
    messages_before, events_before = Message.objects.count(), Event.objects.count()
    admin = factories.make_user(is_staff=True, is_superuser=True)
    first = logged_in(admin).post(
        "/admin/users/user/", {"action": "erase_accounts", "_selected_action": [user.pk]}
    )
    assert first.status_code == 200 and b'name="confirm"' in first.content  # asks first
    user.refresh_from_db()
    assert user.is_active
    apply(logged_in(admin), "/admin/users/user/", "erase_accounts", [user], confirm="on")
    user.refresh_from_db()
    assert not user.is_active  # at once, before the worker
    wait_for(
        lambda: (
            not Message.objects.filter(author=user, deleted_at__isnull=True).exists()
            and envelopes_naming(name) == 0
        ),
        timeout=60,
        message="the worker's erasure",
    )
    assert_erased(user.pk, name, made, messages_before, events_before)
    assert User.objects.filter(pk=user.pk).exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "batch_seconds, batches",
    [
        (0, 3),  # fixed batches of 5: one per room (4 messages each)
        # timed: none fits in a microsecond, so after the first (a room's 4) one message each
        (1e-6, 1 + 8),
    ],
    ids=["fixed", "timed"],
)
def test_the_erasure_service_in_one_process_on_every_database(batch_seconds, batches):
    """account_erase, then the task's erase_history called here (SQLite and PostgreSQL)."""
    name = "erasable-linus"
    user, _other, made = history_in_three_rooms(name)
    messages_before, events_before = Message.objects.count(), Event.objects.count()
    erasure.account_erase(user=user, actor=user, password=PASSWORD)
    counts = erasure.erase_history(
        user_id=user.pk, batch_size=5, batch_seconds=batch_seconds, rate=0
    )
    assert counts["messages"] == 12 and counts["batches"] == batches and counts["renamed"] > 0
    assert_erased(user.pk, name, made, messages_before, events_before)
    assert erasure.erase_history(user_id=user.pk)["renamed"] == 0


def test_the_pace_sizes_each_batch_by_the_last_ones_time_and_rests_to_keep_the_rate():
    pace = erasure.Pace(500, 0.05, 0)
    assert pace.size == erasure.FIRST_BATCH  # timed: a small first batch
    pace.after(50, 0.01)  # 0.2 ms a message: 250 fit in 50 ms, but it grows at most twofold
    assert pace.size == 100
    pace.after(100, 0.01)
    assert pace.size == 200
    pace.after(200, 0.2)  # 1 ms a message
    assert pace.size == 50
    pace.after(50, 10.0)  # very slow: one message at a time, never none
    assert pace.size == 1
    fixed = erasure.Pace(500, 0, 0)
    fixed.after(500, 10.0)
    assert fixed.size == 500  # not timed: always the most
    paced = erasure.Pace(500, 0.05, 1000)
    started = time.monotonic()
    paced.after(200, 0.05)  # 200 messages at 1000/s take 0.2 s: it rests the other 0.15 s
    assert time.monotonic() - started >= 0.15
    started = time.monotonic()
    paced.after(200, 0.5)  # slower than the rate already: no rest
    assert time.monotonic() - started < 0.05


@pytest.mark.django_db
def test_an_erasure_whose_task_never_ran_is_found_by_the_sweep():
    """No task queued (here: the transaction's on_commit never runs, as with the broker down):
    the account is listed as unfinished once ERASURE_SWEEP_SECONDS have passed, until done."""
    name = "erasable-edsger"
    user, _other, made = history_in_three_rooms(name)
    messages_before, events_before = Message.objects.count(), Event.objects.count()
    erasure.account_erase(user=user, actor=user, password=PASSWORD)
    assert erasure.unfinished_erasures(older_than=3600) == []  # too recent: its task may run
    assert erasure.unfinished_erasures() == [user.pk]
    erasure.erase_history(user_id=user.pk)
    assert erasure.unfinished_erasures() == []
    assert_erased(user.pk, name, made, messages_before, events_before)


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_an_erasure_requested_while_the_broker_was_down_is_finished_by_the_sweep(
    celery_worker, monkeypatch, settings
):
    """The task could not be queued at the request (the broker refused it); the beat job
    resume_erasures queues it again and the worker finishes the erasure."""
    from kombu.exceptions import OperationalError

    from apps.messaging import tasks

    name = "erasable-hedy"
    user, _other, made = history_in_three_rooms(name)
    messages_before, events_before = Message.objects.count(), Event.objects.count()

    def broker_down(*args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(tasks.erase_account_history, "delay", broker_down)
    erasure.account_erase(user=user, actor=user, password=PASSWORD)  # on_commit: robust
    monkeypatch.undo()
    assert Message.objects.filter(author=user, deleted_at__isnull=True).count() == 12
    settings.ERASURE_SWEEP_SECONDS = 0
    tasks.resume_erasures()
    wait_for(
        lambda: (
            not Message.objects.filter(author=user, deleted_at__isnull=True).exists()
            and envelopes_naming(name) == 0
        ),
        timeout=60,
        message="the erasure queued by the sweep",
    )
    assert_erased(user.pk, name, made, messages_before, events_before)
    assert erasure.unfinished_erasures() == []
