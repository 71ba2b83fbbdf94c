"""The send plan as pure functions: no database (unsaved model instances stand for the rows
the executors read), no Redis. What the executors do with it is tested in test_send_batch.py
and test_send_pg.py."""

import uuid
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from apps.core.errors import RateLimited, ServiceError
from apps.events import seqs
from apps.messaging import send_plan as plan
from apps.rooms.models import Membership, Room

NOW = timezone.now()


def user(pk, **extra):
    return get_user_model()(pk=pk, username=f"u{pk}", is_active=True, **extra)


def room(pk, last_seq=0, **extra):
    return Room(pk=pk, name=f"r{pk}", last_seq=last_seq, **extra)


def member(pk, the_room, the_user, **extra):
    return Membership(pk=pk, room_id=the_room.pk, user=the_user, **{"is_active": True, **extra})


class Batch:
    """Rooms, memberships and earlier sends as an executor would have read them."""

    def __init__(self, rooms, memberships=(), earlier=None, reply_rooms=None, blocked=()):
        self.reads = plan.Reads(
            {r.pk: r for r in rooms},
            {(m.room_id, m.user_id): m for m in memberships},
            dict(earlier or {}),
            dict(reply_rooms or {}),
            None,
            set(blocked),
            {},
        )

    def decide(self, *requests):
        results, todo = plan.clean(list(requests))
        decision = plan.decide(todo, self.reads, results, NOW)
        return decision, results


def send(room_or_id, author, body="hi", client_id=None, reply_to=None):
    return plan.SendRequest(room_or_id, author, body, client_id or uuid.uuid4(), reply_to)


def codes(results):
    return [r.code if isinstance(r, ServiceError) else r for r in results]


# --- The seq rule -------------------------------------------------------------------------------


def test_seqs_follow_each_rooms_last_seq_in_order():
    seq_of, last = seqs.assign({1: 10, 2: 0}, [1, 2, 1, 1, 2])
    assert seq_of == [11, 1, 12, 13, 2]
    assert last == {1: 13, 2: 2}


def test_no_events_no_seqs_and_an_unknown_room_is_an_error():
    assert seqs.assign({1: 4}, []) == ([], {})
    with pytest.raises(KeyError):
        seqs.assign({1: 4}, [2])


def test_first_seqs_after_an_update_that_added_the_counts():
    # last_seq was 7 and 0; the UPDATE added 3 and 1 and returned 10 and 1.
    assert seqs.first_seqs({5: 3, 6: 1}, {5: 10, 6: 1}) == {5: 8, 6: 1}
    with pytest.raises(ValueError):
        seqs.first_seqs({5: 0}, {5: 10})


def test_the_plan_numbers_messages_after_the_locked_rooms_and_raises_their_last_seq():
    alice = user(1)
    a, b = room(1, last_seq=41), room(2, last_seq=0)
    batch = Batch([a, b], [member(1, a, alice), member(2, b, alice)])
    decision, _ = batch.decide(send(1, alice, "a1"), send(2, alice, "b1"), send(1, alice, "a2"))
    messages, last = plan.plan_messages(decision, batch.reads)
    assert [(m.room_id, m.seq, m.body) for m in messages] == [
        (1, 42, "a1"),
        (2, 1, "b1"),
        (1, 43, "a2"),
    ]
    assert last == {1: 43, 2: 1} and (a.last_seq, b.last_seq) == (43, 1)
    assert {m.created_at for m in messages} == {NOW}


def test_created_events_carry_the_messages_ids_and_seqs_by_request_index():
    alice = user(1)
    a = room(1, last_seq=3)
    batch = Batch([a], [member(1, a, alice)])
    decision, _ = batch.decide(send(1, alice, ""), send(1, alice, "ok"))
    messages, _ = plan.plan_messages(decision, batch.reads)
    created = plan.created_events(decision, messages, [900])
    assert list(created) == [1]
    event = created[1]
    assert (event.type, event.room_id, event.seq) == ("message.created", 1, 4)
    assert event.envelope["data"]["id"] == 900 and event.envelope["data"]["body"] == "ok"
    assert event.envelope["actor"] == {"id": 1, "username": "u1"}


# --- Shape and rules ----------------------------------------------------------------------------


def test_bad_shapes_are_refused_before_anything_is_read():
    alice = user(1)
    results, todo = plan.clean(
        [
            send(1, alice, ""),
            send(True, alice),
            send("1", alice),
            send(1, alice, client_id="nope"),
            send(1, alice, "x" * 5000),
            send(1, alice, "fine"),
        ]
    )
    assert codes(results) == ["invalid", "not_found", "not_found", "invalid", "too_large", None]
    assert [s.index for s in todo] == [5]


def test_bans_mutes_outsiders_and_missing_rooms_are_refused_each_on_its_own():
    owner, muted, banned, outsider = user(1), user(2), user(3), user(4)
    a = room(1)
    batch = Batch(
        [a],
        [
            member(1, a, owner, role=Membership.Role.OWNER),
            member(2, a, muted, muted_until=NOW + timedelta(hours=1)),
            member(3, a, banned, is_active=False, banned_at=NOW - timedelta(hours=1)),
        ],
    )
    decision, results = batch.decide(
        send(1, owner), send(1, muted), send(1, banned), send(1, outsider), send(99, owner)
    )
    assert codes(results[1:]) == ["forbidden", "forbidden", "forbidden", "not_found"]
    assert "muted" in results[1].message and "banned" in results[2].message
    assert [s.index for s in decision.accepted] == [0]


def test_a_private_room_looks_missing_to_an_outsider_and_an_archived_one_is_read_only():
    owner, outsider = user(1), user(2)
    private, archived = room(1, kind=Room.Kind.PRIVATE), room(2, archived_at=NOW)
    batch = Batch([private, archived], [member(1, private, owner), member(2, archived, owner)])
    _, results = batch.decide(send(1, outsider), send(1, owner), send(2, owner))
    assert codes(results) == ["not_found", None, "forbidden"]


def test_a_blocked_author_cannot_send_in_the_direct_room():
    alice, bob = user(1), user(2)
    direct = room(1, kind=Room.Kind.DIRECT, direct_key="1:2")
    batch = Batch([direct], [member(1, direct, alice), member(2, direct, bob)], blocked={(1, 2)})
    _, results = batch.decide(send(1, bob), send(1, alice))
    assert codes(results) == ["forbidden", None]
    assert "blocked" in results[0].message


def test_a_deactivated_author_is_refused():
    gone = user(1)
    gone.is_active = False
    a = room(1)
    _, results = Batch([a], [member(1, a, gone)]).decide(send(1, gone))
    assert codes(results) == ["forbidden"] and "disabled" in results[0].message


def test_announcement_rooms_take_posts_from_moderators_only():
    owner, someone = user(1), user(2)
    a = room(1, post_policy=Room.PostPolicy.MODERATORS)
    batch = Batch([a], [member(1, a, owner, role=Membership.Role.OWNER), member(2, a, someone)])
    _, results = batch.decide(send(1, someone), send(1, owner))
    assert codes(results) == ["forbidden", None]


def test_slow_mode_refuses_a_second_send_in_the_batch_and_one_too_soon_after_the_last():
    fast, recent, moderator = user(1), user(2), user(3)
    a = room(1, slow_mode_seconds=30)
    batch = Batch(
        [a],
        [
            member(1, a, fast),
            member(2, a, recent, last_posted_at=NOW - timedelta(seconds=10)),
            member(3, a, moderator, role=Membership.Role.MODERATOR),
        ],
    )
    decision, results = batch.decide(
        send(1, fast), send(1, fast), send(1, recent), send(1, moderator), send(1, moderator)
    )
    assert codes(results) == [None, "rate_limited", "rate_limited", None, None]
    assert isinstance(results[2], RateLimited) and results[2].retry_after == 20
    assert results[1].retry_after == 30
    # Only the member who posted is stamped: moderators are exempt, refusals stamp nothing.
    assert decision.stamped == [1] and decision.now == NOW
    assert batch.reads.memberships[(1, 1)].last_posted_at == NOW
    messages, _ = plan.plan_messages(decision, batch.reads)
    assert plan.extra_writes(decision, messages, batch.reads) == [
        plan.ExtraWrite("post_stamps", (NOW, [1]))
    ]


def test_a_batch_without_slow_mode_plans_no_extra_write():
    alice = user(1)
    a = room(1)
    batch = Batch([a], [member(1, a, alice)])
    decision, _ = batch.decide(send(1, alice))
    assert decision.stamped == [] and plan.extra_writes(decision, [], batch.reads) == []


def test_reply_to_must_be_a_live_message_of_the_same_room():
    alice = user(1)
    a, b = room(1), room(2)
    batch = Batch(
        [a, b], [member(1, a, alice), member(2, b, alice)], reply_rooms={10: 1, 11: 2, 12: None}
    )
    _, results = batch.decide(
        send(1, alice, reply_to=10),
        send(1, alice, reply_to=11),
        send(1, alice, reply_to=12),
        send(1, alice, reply_to=13),
        send(1, alice, reply_to="10"),
        send(1, alice, reply_to=True),
    )
    assert codes(results) == [None, "invalid", "not_found", "invalid", "invalid", "invalid"]
    assert "deleted" in results[2].message


def test_keys_are_sorted_for_the_lock_order_and_skip_reply_ids_that_cannot_be_ids():
    alice, bob = user(7), user(3)
    _, todo = plan.clean(
        [
            send(5, alice, reply_to=9),
            send(2, bob, reply_to=2**63),
            send(5, bob, reply_to=-1),
            send(2, alice, reply_to=4),
        ]
    )
    keys = plan.keys(todo)
    assert (keys.room_ids, keys.author_ids, keys.reply_ids) == ([2, 5], [3, 7], [4, 9])


# --- Resends and answers ------------------------------------------------------------------------


def test_resends_answer_with_the_original_whether_earlier_or_in_this_batch():
    alice = user(1)
    a = room(1, last_seq=5)
    old, again = uuid.uuid4(), uuid.uuid4()
    batch = Batch([a], [member(1, a, alice)], earlier={(1, old): (1, 5)})
    decision, results = batch.decide(
        send(1, alice, "new", again), send(1, alice, "dup", again), send(1, alice, "old", old)
    )
    assert [s.index for s in decision.accepted] == [0]
    assert decision.resends[1] == decision.accepted[0] and decision.resends[2] == (1, 5)
    assert plan.wanted(decision.resends) == {(1, 5): [2]}

    messages, _ = plan.plan_messages(decision, batch.reads)
    created = plan.created_events(decision, messages, [100])
    logged = {(1, 5): "the logged event"}
    plan.answer(decision, created, logged, results)
    assert results[0] is created[0] and results[1] is created[0]
    assert results[2] == "the logged event"
    assert a.last_seq == 6  # a resend takes no seq


def test_a_resend_is_answered_even_when_its_author_may_no_longer_send():
    alice = user(1)
    a = room(1)
    old = uuid.uuid4()
    batch = Batch(
        [a], [member(1, a, alice, muted_until=NOW + timedelta(hours=1))], earlier={(1, old): (1, 3)}
    )
    decision, results = batch.decide(send(1, alice, "x", old), send(1, alice, "y"))
    assert decision.resends == {0: (1, 3)} and codes(results) == [None, "forbidden"]
