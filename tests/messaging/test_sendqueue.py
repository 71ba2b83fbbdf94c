"""The process's group commit for `message.send` frames (apps.messaging.sendqueue): lanes by
room, one transaction in flight per lane, each send answered on its own."""

import asyncio
import uuid
from types import SimpleNamespace

import pytest

from apps.core.errors import ServiceError
from apps.messaging import sendqueue
from apps.messaging.models import Message
from apps.messaging.services import SendRequest
from apps.users import ratelimit
from tests import factories


async def _close_lanes():
    for lane in sendqueue._lanes.get():
        await lane.reset()


@pytest.mark.django_db(transaction=True)
def test_concurrent_sends_commit_in_submission_order_and_refusals_answer_alone():
    owner, outsider = factories.make_user(), factories.make_user()
    writers = [factories.make_user() for _ in range(5)]
    room = factories.make_room(owner, members=writers)
    before = room.last_seq

    async def scenario():
        try:
            requests = [
                SendRequest(room.pk, w, f"w{i}", uuid.uuid4()) for i, w in enumerate(writers)
            ]
            requests.insert(2, SendRequest(room.pk, outsider, "not a member", uuid.uuid4()))
            return await asyncio.gather(
                *(sendqueue.send(r) for r in requests), return_exceptions=True
            )
        finally:
            await _close_lanes()

    results = asyncio.run(scenario())
    refused = results.pop(2)
    assert isinstance(refused, ServiceError) and refused.code == "forbidden"
    assert [e.seq for e in results] == list(range(before + 1, before + 6))
    bodies = Message.objects.filter(room=room).order_by("seq").values_list("body", flat=True)
    assert list(bodies) == [f"w{i}" for i in range(5)]


@pytest.mark.django_db(transaction=True)
def test_a_resend_with_the_same_client_id_returns_the_first_event(settings):
    settings.CHAT_SEND_BATCH_CONCURRENCY = 2
    owner = factories.make_user()
    room = factories.make_room(owner)
    client_id = uuid.uuid4()

    async def scenario():
        try:
            first = await sendqueue.send(SendRequest(room.pk, owner, "once", client_id))
            again = await sendqueue.send(SendRequest(room.pk, owner, "once", client_id))
            return first, again, len(sendqueue._lanes.get())
        finally:
            await _close_lanes()

    first, again, lanes = asyncio.run(scenario())
    assert lanes == 2
    assert again.pk == first.pk and Message.objects.filter(room=room).count() == 1


def test_rooms_are_spread_over_the_lanes_by_id(settings):
    settings.CHAT_SEND_BATCH_CONCURRENCY = 3
    seen = []

    async def scenario():
        lanes = sendqueue._lanes.get()
        for lane in lanes:

            def put(item, lane=lane):
                request, _take = item
                seen.append((request.room, lanes.index(lane)))
                done = asyncio.get_running_loop().create_future()
                done.set_result(None)
                return done

            lane.batcher = SimpleNamespace(put=put)
        for room_id in (3, 4, 5, 9):
            await sendqueue.send(SendRequest(room_id, None, "", None))

    asyncio.run(scenario())
    assert seen == [(3, 0), (4, 1), (5, 2), (9, 0)]


@pytest.mark.django_db(transaction=True)
def test_sends_soon_after_a_batch_wait_for_the_lanes_interval_and_commit_together(settings):
    settings.CHAT_SEND_BATCH_INTERVAL_MS = 300
    owner = factories.make_user()
    writers = [factories.make_user() for _ in range(3)]
    room = factories.make_room(owner, members=writers)
    batches = []

    async def scenario():
        loop = asyncio.get_running_loop()
        (lane,) = sendqueue._lanes.get()
        run = lane.batcher.run_batch

        async def recorded(items):
            batches.append((loop.time(), [request.body for request, _ in items]))
            return await run(items)

        lane.batcher.run_batch = recorded
        try:
            alone = loop.time()
            first = await sendqueue.send(SendRequest(room.pk, owner, "first", uuid.uuid4()))
            rest = await asyncio.gather(
                *(
                    sendqueue.send(SendRequest(room.pk, w, f"w{i}", uuid.uuid4()))
                    for i, w in enumerate(writers)
                )
            )
            return alone, first, rest
        finally:
            await _close_lanes()

    alone, first, rest = asyncio.run(scenario())
    assert [bodies for _, bodies in batches] == [["first"], ["w0", "w1", "w2"]]
    assert batches[0][0] - alone < 0.25  # the lane was idle: the first send did not wait
    assert batches[1][0] - batches[0][0] >= 0.29  # the others waited out the interval, together
    assert [e.seq for e in [first, *rest]] == list(range(first.seq, first.seq + 4))


def test_only_staff_whose_permissions_were_never_read_need_a_database_thread():
    def author(**fields):
        return SimpleNamespace(**{"is_staff": False, "is_superuser": False, **fields})

    loaded = author(is_staff=True, _perm_cache=set())
    assert not sendqueue.permissions_unread([SendRequest(1, author(), "", None)])
    assert not sendqueue.permissions_unread([SendRequest(1, loaded, "", None)])
    assert not sendqueue.permissions_unread(
        [SendRequest(1, author(is_staff=True, is_superuser=True), "", None)]
    )
    assert sendqueue.permissions_unread(
        [SendRequest(1, loaded, "", None), SendRequest(1, author(is_staff=True), "", None)]
    )


@pytest.mark.django_db(transaction=True)
def test_the_lane_connection_loads_timestamps_as_the_orm_does():
    """The lane's connection parses timestamptz with psycopg's own loader (C in
    psycopg-binary), and a room, membership and user read on it equal the ORM's instances,
    tzinfo included."""
    import datetime

    from psycopg.pq import Format

    from apps.messaging import send_pg
    from apps.messaging import send_plan as plan
    from apps.rooms.models import Membership, Room

    owner = factories.make_user()
    room = factories.make_room(owner)
    Membership.objects.filter(room=room, user=owner).update(
        last_posted_at=datetime.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.UTC)
    )
    client_id = uuid.uuid4()
    keys = plan.Keys(
        [room.pk], [owner.pk], [client_id], [], [], ((room.pk, owner.pk),), ((owner.pk, client_id),)
    )

    async def scenario():
        lane = sendqueue.Lane(10)
        try:
            conn = await lane.connection()
            loader = conn.adapters.get_loader(1184, Format.TEXT)  # timestamptz
            from apps.core.sql import arun

            async with conn.pipeline():
                rows = await arun(conn, send_pg.read_statements(keys, 1))
            return loader, rows
        finally:
            await lane.reset()

    loader, rows = asyncio.run(scenario())
    assert loader.__module__ != "django.db.backends.postgresql.psycopg_any"
    reads = send_pg.reads_from_rows(rows, keys)
    membership = reads.memberships[(room.pk, owner.pk)]
    expected = Membership.objects.select_related("user").get(room=room, user=owner)
    assert membership.last_posted_at == expected.last_posted_at
    assert membership.last_posted_at.tzinfo is datetime.UTC
    assert membership.user.date_joined == expected.user.date_joined
    assert membership.user.date_joined.tzinfo is datetime.UTC
    assert reads.rooms[room.pk].created_at == Room.objects.get(pk=room.pk).created_at


@pytest.mark.django_db
@pytest.mark.parametrize(
    "session_tz, django_tz, replaced",
    [("UTC", "UTC", True), ("UTC", "Europe/Paris", False), ("Europe/Paris", "UTC", False)],
)
def test_djangos_loader_stays_unless_both_time_zones_are_utc(session_tz, django_tz, replaced):
    import datetime
    import zoneinfo

    import psycopg
    from django.db import connections
    from psycopg.pq import Format

    params = connections["default"].get_connection_params()
    params.pop("cursor_factory", None)
    params["options"] = f"-c TimeZone={session_tz}"
    tz = datetime.UTC if django_tz == "UTC" else zoneinfo.ZoneInfo(django_tz)
    with psycopg.connect(**params) as conn:
        before = conn.adapters.get_loader(1184, Format.TEXT)
        assert before.__module__ == "django.db.backends.postgresql.psycopg_any"
        sendqueue.use_c_timestamptz_loader(conn, tz)
        assert (conn.adapters.get_loader(1184, Format.TEXT) is not before) is replaced


@pytest.fixture
def takes(monkeypatch) -> list[int]:
    """The size of every call to the rate limiter's take_many (the real one, on Redis)."""
    calls = []
    real = ratelimit.take_many

    async def counting(requests):
        calls.append(len(requests))
        return await real(requests)

    monkeypatch.setattr(ratelimit, "take_many", counting)
    return calls


@pytest.mark.django_db(transaction=True)
def test_a_batch_takes_its_sends_tokens_in_one_call_and_an_empty_bucket_writes_nothing(
    settings, takes
):
    """enqueue(take=True), as the consumer sends: the rate limiter is asked once per batch,
    the sends past the bucket get BucketEmpty (retry_after) and write nothing, and a send
    queued without a take is not counted."""
    settings.CHAT_RATE_LIMIT_MESSAGES = 3
    settings.CHAT_RATE_LIMIT_PER_SECOND = 0.01
    owner = factories.make_user()
    room = factories.make_room(owner)

    async def scenario():
        try:
            requests = [SendRequest(room.pk, owner, f"m{i}", uuid.uuid4()) for i in range(6)]
            results = await asyncio.gather(
                *(sendqueue.send(r, take=True) for r in requests), return_exceptions=True
            )
            untaken = await sendqueue.send(SendRequest(room.pk, owner, "no take", uuid.uuid4()))
            return results, untaken
        finally:
            await _close_lanes()

    results, untaken = asyncio.run(scenario())
    # The first send went out alone; the five queued behind it were one batch, one call.
    assert takes == [1, 5]
    assert [type(r).__name__ for r in results] == ["Event"] * 3 + ["BucketEmpty"] * 3
    assert all(r.code == "rate_limited" and r.retry_after >= 1 for r in results[3:])
    assert untaken.seq == results[2].seq + 1
    bodies = Message.objects.filter(room=room).order_by("seq").values_list("body", flat=True)
    assert list(bodies) == ["m0", "m1", "m2", "no take"]


@pytest.mark.django_db(transaction=True)
def test_with_redis_unreachable_a_batch_counts_its_takes_in_this_process(settings, caplog):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    settings.CHAT_RATE_LIMIT_MESSAGES = 2
    settings.CHAT_RATE_LIMIT_PER_SECOND = 0.01
    owner = factories.make_user()
    room = factories.make_room(owner)

    async def scenario():
        try:
            results = []
            for i in range(3):  # one at a time: the second call finds the guard backing off
                request = SendRequest(room.pk, owner, f"m{i}", uuid.uuid4())
                try:
                    results.append(await sendqueue.send(request, take=True))
                except ServiceError as exc:
                    results.append(exc)
            return results
        finally:
            await _close_lanes()

    results = asyncio.run(scenario())
    assert [type(r).__name__ for r in results] == ["Event", "Event", "BucketEmpty"]
    assert "rate limiter unavailable; counting locally" in caplog.text
    assert Message.objects.filter(room=room).count() == 2


@pytest.mark.django_db(transaction=True)
def test_the_thread_pool_path_writes_only_the_sends_the_batch_admitted(
    settings, monkeypatch, takes
):
    """The asyncio path fails (a lost connection, say): the batch goes to the thread pool
    with the rate limiter's answer it already has, so a refused send stays refused and
    nothing is taken twice."""
    import psycopg

    settings.CHAT_RATE_LIMIT_MESSAGES = 2
    settings.CHAT_RATE_LIMIT_PER_SECOND = 0.01
    owner = factories.make_user()
    room = factories.make_room(owner)

    async def broken(conn, requests, admission=None):
        raise psycopg.OperationalError("the connection was lost")

    monkeypatch.setattr(sendqueue, "amessage_send_many", broken)

    async def scenario():
        try:
            requests = [SendRequest(room.pk, owner, f"m{i}", uuid.uuid4()) for i in range(4)]
            return await asyncio.gather(
                *(sendqueue.send(r, take=True) for r in requests), return_exceptions=True
            )
        finally:
            await _close_lanes()

    results = asyncio.run(scenario())
    assert sum(takes) == 4  # each send's token asked for once
    assert [type(r).__name__ for r in results] == ["Event"] * 2 + ["BucketEmpty"] * 2
    assert Message.objects.filter(room=room).count() == 2
