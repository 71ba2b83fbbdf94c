"""Group commit of sends: message_send_many and the per-process SendQueue."""

import asyncio
import threading
import uuid
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from apps.core.aio import Batcher
from apps.core.errors import ServiceError
from apps.events.models import Event
from apps.messaging.models import Message
from apps.messaging.services import SendRequest, message_send_many
from apps.rooms import services as rooms
from tests import factories
from tests.messaging.asyncsend import async_send_many
from tests.support.services import postgresql_only


@pytest.mark.django_db
def test_one_batch_answers_each_request_in_order_and_commits_only_the_accepted(user):
    a = factories.make_room(user)
    b = factories.make_room(user)
    muted, outsider, banned = (factories.make_user() for _ in range(3))
    for member in (muted, banned):
        rooms.room_join(room=a, user=member)
    rooms.member_mute(room=a, actor=user, user=muted, until=timezone.now() + timedelta(hours=1))
    rooms.member_ban(room=a, actor=user, user=banned)
    earlier = factories.send(a, user, "earlier")
    reply_in_b = factories.send(b, user, "in b")
    repeated = uuid.uuid4()

    results = message_send_many(
        [
            SendRequest(a, user, "a1", uuid.uuid4()),
            SendRequest(b.pk, user, "b1", uuid.uuid4()),
            SendRequest(a, muted, "muted", uuid.uuid4()),
            SendRequest(a, user, "", uuid.uuid4()),
            SendRequest(a, outsider, "not a member", uuid.uuid4()),
            SendRequest(a, banned, "banned", uuid.uuid4()),
            SendRequest(a, user, "a2", repeated),
            SendRequest(a, user, "a2 again", repeated),
            SendRequest(a, user, "old", earlier.envelope["data"]["client_id"]),
            SendRequest(a, user, "bad reply", uuid.uuid4(), reply_in_b.envelope["data"]["id"]),
            SendRequest(a, user, "reply", uuid.uuid4(), earlier.envelope["data"]["id"]),
            SendRequest(999_999_999, user, "nowhere", uuid.uuid4()),
            SendRequest(b, user, "b2", "not-a-uuid"),
        ]
    )

    codes = [r.code if isinstance(r, ServiceError) else None for r in results]
    assert codes == [
        None,
        None,
        "forbidden",
        "invalid",
        "forbidden",
        "forbidden",
        None,
        None,
        None,
        "invalid",
        None,
        "not_found",
        "invalid",
    ]
    assert "muted" in results[2].message and "banned" in results[5].message
    a_seq, b_seq = earlier.seq, reply_in_b.seq
    assert [results[i].seq for i in (0, 6, 10)] == [a_seq + 1, a_seq + 2, a_seq + 3]
    assert results[1].seq == b_seq + 1
    assert results[7].pk == results[6].pk  # the same client_id twice in one batch
    assert results[8].pk == earlier.pk  # a resend of an earlier batch's message
    a.refresh_from_db()
    b.refresh_from_db()
    assert (a.last_seq, b.last_seq) == (a_seq + 3, b_seq + 1)
    bodies = list(
        Message.objects.filter(room=a, seq__gt=a_seq)
        .order_by("seq")
        .values_list("body", "seq", "reply_to_id")
    )
    assert bodies == [
        ("a1", a_seq + 1, None),
        ("a2", a_seq + 2, None),
        ("reply", a_seq + 3, earlier.envelope["data"]["id"]),
    ]
    for result in (results[0], results[6], results[10], results[1]):
        message = Message.objects.get(pk=result.envelope["data"]["id"])
        assert (message.room_id, message.seq) == (result.room_id, result.seq)
        assert Event.objects.get(pk=result.pk).envelope == result.envelope
        assert result.envelope["ts"] and result.envelope["actor"]["id"] == user.pk


@pytest.mark.django_db
def test_a_batch_of_only_refusals_writes_nothing(room, user):
    before = (Event.objects.count(), Message.objects.count(), room.last_seq)
    results = message_send_many(
        [
            SendRequest(room, user, " ", uuid.uuid4()),
            SendRequest(room, factories.make_user(), "x", uuid.uuid4()),
        ]
    )
    assert [r.code for r in results] == ["invalid", "forbidden"]
    room.refresh_from_db()
    assert (Event.objects.count(), Message.objects.count(), room.last_seq) == before


@pytest.mark.django_db(transaction=True)
def test_the_queue_batches_what_arrives_while_a_transaction_runs():
    """With one transaction in flight, sends queued behind it commit together, in order."""
    owner = factories.make_user()
    writers = [factories.make_user() for _ in range(6)]
    room = factories.make_room(owner, members=writers)
    first_batch_started, release = threading.Event(), threading.Event()
    batches = []

    def run(requests):
        batches.append([r.body for r in requests])
        if len(batches) == 1:
            first_batch_started.set()
            release.wait(10)
        return message_send_many(requests)

    async def scenario():
        queue = Batcher(sync_to_async(run, thread_sensitive=False), max_batch=4, concurrency=1)
        first = asyncio.ensure_future(
            queue.submit(SendRequest(room.pk, owner, "first", uuid.uuid4()))
        )
        await asyncio.get_running_loop().run_in_executor(None, first_batch_started.wait, 10)
        rest = [
            asyncio.ensure_future(queue.submit(SendRequest(room.pk, w, f"w{i}", uuid.uuid4())))
            for i, w in enumerate(writers)
        ]
        rest.append(
            asyncio.ensure_future(queue.submit(SendRequest(room.pk, owner, "", uuid.uuid4())))
        )
        await asyncio.sleep(0.05)
        release.set()
        return await first, await asyncio.gather(*rest, return_exceptions=True)

    first, rest = asyncio.run(scenario())
    assert batches == [["first"], ["w0", "w1", "w2", "w3"], ["w4", "w5", ""]]
    assert [e.seq for e in [first, *rest[:-1]]] == list(range(first.seq, first.seq + 7))
    assert isinstance(rest[-1], ServiceError) and rest[-1].code == "invalid"
    assert list(
        Message.objects.filter(room=room).order_by("seq").values_list("body", flat=True)
    ) == ["first", "w0", "w1", "w2", "w3", "w4", "w5"]


@pytest.mark.django_db(transaction=True)
def test_a_failed_batch_fails_each_of_its_sends_and_the_queue_goes_on():
    owner = factories.make_user()
    room = factories.make_room(owner)
    calls = []

    def run(requests):
        calls.append(len(requests))
        if len(calls) == 1:
            raise RuntimeError("database went away")
        return message_send_many(requests)

    async def scenario():
        queue = Batcher(sync_to_async(run, thread_sensitive=False), max_batch=10, concurrency=1)
        with pytest.raises(RuntimeError):
            await queue.submit(SendRequest(room.pk, owner, "lost?", uuid.uuid4()))
        return await queue.submit(SendRequest(room.pk, owner, "after", uuid.uuid4()))

    event = asyncio.run(scenario())
    assert event.envelope["data"]["body"] == "after"
    assert list(Message.objects.filter(room=room).values_list("body", flat=True)) == ["after"]


@pytest.mark.django_db(transaction=True)
@postgresql_only("the asyncio psycopg connection of the send lanes")
def test_the_asyncio_connection_path_answers_as_the_thread_path():
    """amessage_send_many (the server's lanes on PostgreSQL) gives the same answers and rows."""
    owner, member, outsider = (factories.make_user() for _ in range(3))
    room = factories.make_room(owner, members=[member])
    earlier = factories.send(room, owner, "earlier")
    again = uuid.uuid4()
    requests = [
        SendRequest(room.pk, owner, "one", uuid.uuid4()),
        SendRequest(room.pk, member, "two", again),
        SendRequest(room.pk, member, "two again", again),
        SendRequest(room.pk, outsider, "nope", uuid.uuid4()),
        SendRequest(room.pk, owner, "old", earlier.envelope["data"]["client_id"]),
        SendRequest(room.pk, owner, "reply", uuid.uuid4(), earlier.envelope["data"]["id"]),
    ]

    results = async_send_many(requests)
    assert [type(r).__name__ for r in results] == [
        "Event",
        "Event",
        "Event",
        "ServiceError",
        "Event",
        "Event",
    ]
    assert [results[i].seq for i in (0, 1, 5)] == [
        earlier.seq + 1,
        earlier.seq + 2,
        earlier.seq + 3,
    ]
    assert results[2].pk == results[1].pk and results[4].pk == earlier.pk
    assert results[4].envelope == earlier.envelope
    assert results[3].code == "forbidden"
    room.refresh_from_db()
    assert room.last_seq == earlier.seq + 3
    for result in (results[0], results[1], results[5]):
        stored = Event.objects.get(pk=result.pk)
        assert stored.envelope == result.envelope
        message = Message.objects.get(pk=result.envelope["data"]["id"])
        assert (message.seq, message.body) == (result.seq, result.envelope["data"]["body"])
    assert results[5].envelope["data"]["reply_to"] == earlier.envelope["data"]["id"]
