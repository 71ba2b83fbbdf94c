"""Per-room ordering (apps.messaging.streams), without sockets, Redis or a database: what each
subscriber is written, what waits for a gap, and which subscriptions an event ends."""

from apps.core.wsframe import frame_payload
from apps.messaging.streams import Item, RoomStream, Subscription

ROOM = 7


class Conn:
    """Stands in for a Connection: keeps the frames written to it."""

    def __init__(self, user_id):
        self.user_id = user_id
        self.frames = []

    def write(self, data):
        self.frames.append(data)
        return True

    def seqs(self):
        return [
            int(frame_payload(f).split(b":")[1])
            for f in self.frames
            if f.startswith(b"\x81") and frame_payload(f).startswith(b"seq:")
        ]


def item(seq, type="message.created", revokes=None):
    return Item(seq, bytes((0x81, len(f"seq:{seq}"))) + f"seq:{seq}".encode(), type, revokes)


def envelope(seq, type="message.created", user=None):
    return {"seq": seq, "type": type, "room": ROOM, "data": {"user": {"id": user}} if user else {}}


def live_stream(head, *user_ids):
    """A stream at `head` with one live subscription per user; (stream, subs)."""
    stream = RoomStream(ROOM)
    subs = []
    for user_id in user_ids:
        sub = Subscription(Conn(user_id), ROOM)
        sub.buffer, sub.last = None, head
        stream.subs[sub.conn] = sub
        subs.append(sub)
    stream.set_base(head)
    return stream, subs


def test_the_next_seq_goes_out_at_once_and_duplicates_are_dropped():
    stream, (a, b) = live_stream(10, 1, 2)
    for seq in (11, 11, 12, 9, 12):
        step = stream.on_seq(item(seq))
        assert not step.fill and not step.revoked
    assert a.conn.seqs() == b.conn.seqs() == [11, 12]
    assert stream.head == 12 and a.last == 12


def test_a_later_seq_waits_for_the_gap_and_asks_for_a_fill():
    stream, (a,) = live_stream(10, 1)
    step = stream.on_seq(item(13))
    assert step.fill and a.conn.seqs() == [] and list(stream.pending) == [13]
    assert stream.fill_target() == 12  # read up to just before what waits
    assert stream.fill_target(target=20) == 20
    step = stream.on_seq(item(11))
    assert step.fill and a.conn.seqs() == [11]  # 12 is still missing
    step = stream.on_seq(item(12))
    assert not step.fill and a.conn.seqs() == [11, 12, 13]
    assert stream.pending == {} and stream.fill_target() is None


def test_before_the_base_is_known_events_wait_without_a_fill_then_the_stale_ones_go():
    stream = RoomStream(ROOM)
    sub = Subscription(Conn(1), ROOM)
    stream.subs[sub.conn] = sub
    for seq in (4, 6, 7):
        assert not stream.on_seq(item(seq)).fill  # no head yet: nothing to fill from
    step = stream.set_base(5)
    assert sub.stream_from == 5
    assert stream.head == 7 and stream.pending == {} and not step.fill
    # Still subscribing: the live events wait in its buffer, in order.
    assert [i.seq for i in sub.buffer] == [6, 7] and sub.conn.frames == []


def test_the_log_fills_the_gap_from_the_head_on():
    stream, (a,) = live_stream(10, 1)
    stream.on_seq(item(14))
    step = stream.from_log([(11, envelope(11)), (12, envelope(12)), (13, envelope(13))])
    assert not step.fill and not step.revoked
    assert stream.head == 14 and len(a.conn.frames) == 4 and a.conn.seqs() == [14]
    # Rows that do not start at head + 1: the seqs between were purged by retention.
    assert stream.from_log([(20, envelope(20))]) is None
    assert stream.from_log([]) is None


def test_retention_skip_moves_the_head_and_delivers_what_waited():
    stream, (a,) = live_stream(3, 1)
    stream.on_seq(item(10))
    assert stream.skip_to(3) is None  # history_start 3: seqs up to 2 purged, head is 3
    step = stream.skip_to(10)
    assert stream.head == 10 and a.conn.seqs() == [10] and not step.fill


def test_a_revoking_event_is_the_last_its_subscription_gets():
    stream, (banned, other) = live_stream(10, 1, 2)
    stream.on_seq(item(12))
    ban = item(11, "member.banned", revokes=1)
    step = stream.on_seq(ban)  # 11 then 12, in one step
    assert [(sub, i.seq) for sub, i in step.revoked] == [(banned, 11)]
    assert step.revoked[0][1].reason == "banned" and item(1, "member.left").reason == "left"
    assert banned.ended and banned.conn.seqs() == [11]  # the ban itself, nothing after
    assert other.conn.seqs() == [11, 12] and not other.ended
    stream.on_seq(item(13))
    assert banned.conn.seqs() == [11]  # until the hub drops it, it gets nothing


def test_push_sends_each_seq_once_and_ends_on_a_revocation():
    sub = Subscription(Conn(5), ROOM)
    sub.last = 3
    assert not sub.push(item(3)) and sub.push(item(4)) and not sub.push(item(4))
    assert sub.push(item(5, "member.left", revokes=6)) and not sub.ended  # someone else left
    assert sub.push(item(6, "member.left", revokes=5)) and sub.ended
    assert not sub.push(item(7))
    assert sub.conn.seqs() == [4, 5, 6]


def test_the_lost_check_fills_only_what_stayed_missing_for_a_whole_check():
    stream, _subs = live_stream(10, 1)
    assert stream.lost(12) is None  # first look: may still be on its way
    stream.on_seq(item(11))
    assert stream.lost(15) == 12  # 12 was committed a check ago and is not here
    stream.on_seq(item(12))
    assert stream.lost(15) == 15


def test_ephemeral_events_go_to_live_subscribers_only():
    stream, (a,) = live_stream(10, 1)
    subscribing = Subscription(Conn(2), ROOM)
    stream.subs[subscribing.conn] = subscribing
    stream.broadcast(b"\x81\x06typing", "typing")
    assert a.conn.frames == [b"\x81\x06typing"] and subscribing.conn.frames == []
