"""Deletion benchmark (PROTOCOL §6): what a redaction and an account erasure cost.

    .venv/bin/python -m bench.deletion                      # both parts, full sizes
    .venv/bin/python -m bench.deletion --only delete --log-events 1000000 --deletes 300
    .venv/bin/python -m bench.deletion --only erase --erase-messages 100000

The stack is bench/stack.py's (its own PostgreSQL database, a private broker and topic, a
Celery worker with beat `-c 2 -B`, one server process). Bulk history is seeded in SQL
(generate_series: messages with their published message.created rows, message_id filled as
the send path fills it), never through the ORM; rooms, users and tokens through the services.

Part `delete`: one message deleted at a time through the delete service (message_delete, what
the REST view, the consumer and the admin call), in a room whose log holds --log-events events,
and the same number in a room whose log is empty apart from the messages deleted; both in the
same run, interleaved, so load changes hit both alike. Prints p50/p99/max of each and their
ratio. The target: p99 <= 10 ms in both, the same in both. The limit beside it: the time of one
send (message_send) in the empty room, one after each pair of deletes (the same load). The
service runs in this process, with no server loop: its fan-out after commit runs on the
process's fan-out loop (apps.events.fanout), as in a Celery worker; in a server process it is
handed to the server's loop, and a REST or WebSocket delete adds the request's own cost.

Part `erase`: an account with --erase-messages messages in --erase-rooms rooms is erased
(account_erase, as DELETE /api/me/ does); the Celery worker redacts them in batches (at most
ERASURE_BATCH_SIZE, each sized to take about ERASURE_BATCH_SECONDS, a rest after each that
keeps it at ERASURE_RATE messages/s at most) and renames the account in the log. Meanwhile
two WebSocket clients each send --send-rate messages/s to the server, one in a room the account
wrote in (its lock is taken by each batch) and one in another room, and the ack latency is
measured. Prints the erasure's
time to done, its batches, and the send p50/p99 during it beside the same clients' p99 for
--baseline seconds before it (the limit measured in the same run). The target: done in <= 2
minutes, send p99 <= 100 ms meanwhile.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import threading
import time
import uuid

from bench import stats
from bench.stack import (
    ChatStack,
    cpu_seconds,
    machine,
    make_users,
    stop_cleanly_on_sigterm,
)

DELETE_P99_BOUND_MS = 10.0
ERASE_BOUND_S = 120.0
SEND_P99_BOUND_MS = 100.0


# --- Seeding in SQL -------------------------------------------------------------------------------


def seed_history(room_id: int, author_id: int, username: str, count: int, *, tag: str) -> None:
    """`count` messages by the author in the room, with their message.created events (already
    published), appended after the room's last seq, in one INSERT ... SELECT each."""
    from django.db import connection, transaction

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT last_seq FROM rooms_room WHERE id = %s FOR UPDATE", [room_id])
        first = cursor.fetchone()[0] + 1
        cursor.execute(
            "INSERT INTO messaging_message (room_id, author_id, body, client_id, seq, created_at) "
            "SELECT %s, %s, %s || ' ' || g, gen_random_uuid(), g, now() "
            "FROM generate_series(%s, %s) g",
            [room_id, author_id, tag, first, first + count - 1],
        )
        cursor.execute(
            "INSERT INTO events_event (id, type, room_id, seq, actor_id, ts, envelope, "
            "message_id) "
            "SELECT m.eid, 'message.created', m.room_id, m.seq, m.author_id, m.created_at, "
            "jsonb_build_object('id', m.eid, 'type', 'message.created', 'room', m.room_id, "
            "  'seq', m.seq, 'ts', to_char(m.created_at AT TIME ZONE 'UTC', "
            '  \'YYYY-MM-DD"T"HH24:MI:SS.US"Z"\'), '
            "  'actor', jsonb_build_object('id', m.author_id, 'username', %s::text), "
            "  'data', jsonb_build_object('id', m.id, 'body', m.body, 'reply_to', null, "
            "    'client_id', m.client_id, 'thread', null, 'attachments', '[]'::jsonb, "
            "    'redacted', false)), "
            "m.id "
            "FROM (SELECT *, gen_random_uuid() AS eid FROM messaging_message "
            "      WHERE room_id = %s AND seq BETWEEN %s AND %s) m",
            [username, room_id, first, first + count - 1],
        )
        # Old history, long on Kafka: out of the outbox the trigger put it in.
        cursor.execute(
            "DELETE FROM events_outbox WHERE room_id = %s AND seq BETWEEN %s AND %s",
            [room_id, first, first + count - 1],
        )
        cursor.execute(
            "UPDATE rooms_room SET last_seq = %s WHERE id = %s", [first + count - 1, room_id]
        )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE messaging_message")
        cursor.execute("ANALYZE events_event")


def own_backend_pid() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def users_by_id(ids):
    from django.contrib.auth import get_user_model

    return get_user_model().objects.in_bulk(list(ids))


def new_room(owner, name, members=()):
    from apps.rooms import services as rooms

    return rooms.room_create(creator=owner, name=name, member_ids=[m.pk for m in members])


# --- Part 1: one delete, big log vs empty log -----------------------------------------------------


def part_delete(args, log) -> dict:
    from apps.messaging import services
    from apps.messaging.models import Message

    ((uid, _token),) = make_users(1, "deleter")
    user = users_by_id([uid])[uid]
    big = new_room(user, "big log")
    empty = new_room(user, "empty log")
    started = time.monotonic()
    step = 250_000
    for done in range(0, args.log_events, step):
        seed_history(big.pk, uid, user.username, min(step, args.log_events - done), tag="old")
    log(f"seeded {args.log_events:,} events in room {big.pk} in {time.monotonic() - started:.1f}s")
    targets_big = list(
        Message.objects.filter(room=big).order_by("?").values_list("pk", flat=True)[: args.deletes]
    )
    # The empty room's messages to delete, sent through the service.
    targets_empty = [
        services.message_send(
            room=empty, author=user, body=f"to delete {n}", client_id=uuid.uuid4()
        ).envelope["data"]["id"]
        for n in range(args.deletes)
    ]
    times = {"big": [], "empty": []}
    send_ns = []  # the limit beside the figure: one send in the empty room, between the deletes
    cpu = {"big": [0, 0.0], "empty": [0, 0.0]}  # this thread's CPU ns, the backend's CPU s
    backend = own_backend_pid()
    # interleaved (delete in the big room, delete in the empty room, send): the same load
    for n, (big_id, empty_id) in enumerate(zip(targets_big, targets_empty, strict=True)):
        for name, pk in (("big", big_id), ("empty", empty_id)):
            message = Message.objects.get(pk=pk)
            c0, b0 = time.thread_time_ns(), cpu_seconds(backend)
            t0 = time.perf_counter_ns()
            services.message_delete(message=message, actor=user)
            times[name].append(time.perf_counter_ns() - t0)
            cpu[name][0] += time.thread_time_ns() - c0
            cpu[name][1] += cpu_seconds(backend) - b0
        t0 = time.perf_counter_ns()
        services.message_send(room=empty, author=user, body=f"limit {n}", client_id=uuid.uuid4())
        send_ns.append(time.perf_counter_ns() - t0)
    figures = {name: stats.latency_summary(values) for name, values in times.items()}
    figures["send_empty"] = stats.latency_summary(send_ns)
    events = {name: count_events(room.pk) for name, room in (("big", big), ("empty", empty))}
    for name in ("big", "empty"):
        f = figures[name]
        verdict = "ok" if f["p99_ms"] <= DELETE_P99_BOUND_MS else "MISS"
        per = max(1, f["count"])
        figures[name]["cpu_ms"] = {
            "client": round(cpu[name][0] / per / 1e6, 2),
            "database": round(cpu[name][1] / per * 1000, 2),
        }
        log(
            f"delete   {name:5} log {events[name]:>9,} events  n {f['count']:4}  "
            f"p50 {f['p50_ms']} p99 {f['p99_ms']} max {f['max_ms']} ms  {verdict}  "
            f"(CPU ms per delete: this process {figures[name]['cpu_ms']['client']}, "
            f"its database backend {figures[name]['cpu_ms']['database']}; round trips: "
            "python -m bench.roundtrips)"
        )
    f = figures["send_empty"]
    log(
        f"limit    send in the empty room (same run, between the deletes)  n {f['count']:4}  "
        f"p50 {f['p50_ms']} "
        f"p99 {f['p99_ms']} max {f['max_ms']} ms"
    )
    ratio = figures["big"]["p99_ms"] / max(figures["empty"]["p99_ms"], 0.001)
    log(f"delete p99 big/empty {ratio:.2f}x (target: the same; p99 <= {DELETE_P99_BOUND_MS} ms)")
    return {"figures": figures, "events": events, "ratio_p99": round(ratio, 2)}


def count_events(room_id: int) -> int:
    from apps.events.models import Event

    return Event.objects.filter(room_id=room_id).count()


# --- Part 2: erasure of a large account while others send -----------------------------------------


class Sender(threading.Thread):
    """One WebSocket client sending `rate` messages/s to a room and timing each ack."""

    def __init__(self, url, token, room_id, rate):
        super().__init__(daemon=True)
        self.url, self.token, self.room_id, self.interval = url, token, room_id, 1.0 / rate
        self.samples: list[tuple[float, int]] = []  # (monotonic time sent, ack ns)
        self.errors: list[str] = []
        self.stopping = threading.Event()

    def run(self):
        from tests.support.wsclient import WS

        ws = WS(self.url, token=self.token)
        try:
            ws.hello()
            ws.subscribe(self.room_id)
            next_at = time.monotonic()
            while not self.stopping.is_set():
                sent_at = time.monotonic()
                t0 = time.perf_counter_ns()
                reply = ws.send_message(self.room_id, body="bench during erasure")
                elapsed = time.perf_counter_ns() - t0
                if reply.get("type") != "ack":
                    self.errors.append(str(reply)[:200])
                self.samples.append((sent_at, elapsed))
                ws.frames.clear()
                next_at += self.interval
                time.sleep(max(0.0, next_at - time.monotonic()))
        except Exception as exc:  # noqa: BLE001 - reported with the figures
            self.errors.append(repr(exc))
        finally:
            ws.close()

    def between(self, start, end) -> dict:
        return stats.latency_summary([ns for at, ns in self.samples if start <= at < end])


def part_erase(args, stack, log) -> dict:
    from apps.events.models import Event
    from apps.messaging import erasure
    from apps.messaging.models import Message

    (eid, _), (oid, otoken) = make_users(2, "erase")
    people = users_by_id([eid, oid])
    erased, other = people[eid], people[oid]
    rooms = [new_room(other, f"erase room {n}", members=[erased]) for n in range(args.erase_rooms)]
    quiet = new_room(other, "another room")
    started = time.monotonic()
    per_room = args.erase_messages // args.erase_rooms
    for room in rooms:
        seed_history(room.pk, eid, erased.username, per_room, tag="erase me")
    total = per_room * args.erase_rooms
    log(
        f"seeded {total:,} messages of {erased.username} in {len(rooms)} rooms in "
        f"{time.monotonic() - started:.1f}s"
    )
    senders = [
        Sender(stack.server.ws_url, otoken, rooms[0].pk, args.send_rate),
        Sender(stack.server.ws_url, otoken, quiet.pk, args.send_rate),
    ]
    for sender in senders:
        sender.start()
    admin = superuser()
    time.sleep(args.baseline)
    t_start = time.monotonic()
    wall_start = time.time()
    erasure.account_erase(user=erased, actor=admin)
    unusable_s = time.monotonic() - t_start
    name = erased.username
    done_at = None
    while time.monotonic() - t_start < args.erase_timeout:
        left = Message.objects.filter(author_id=eid, deleted_at__isnull=True).count()
        if (
            left == 0
            and not Event.objects.filter(actor_id=eid, envelope__actor__username=name).exists()
        ):
            done_at = time.monotonic()
            break
        time.sleep(1.0)
    t_end = done_at or time.monotonic()
    time.sleep(1.0)
    for sender in senders:
        sender.stopping.set()
    for sender in senders:
        sender.join(10)
    seconds = t_end - t_start
    erased_rows = Event.objects.filter(
        type="message.deleted", room__in=rooms, envelope__data__reason="erased"
    )
    deleted = erased_rows.count()
    # When the worker's task began: the first batch's commit (its events' ts), on the wall
    # clock; the time before it is the task waiting for a free worker process.
    first = erased_rows.order_by("ts").values_list("ts", flat=True).first()
    waited = None
    if first is not None:
        waited = max(0.0, first.timestamp() - (wall_start + 0.0))
    result = {
        "messages": total,
        "rooms": len(rooms),
        "seconds": round(seconds, 1),
        "done": done_at is not None,
        "message_deleted_events": deleted,
        "unusable_after_s": round(unusable_s, 3),
        "queued_s": None if waited is None else round(waited, 1),
        "batch_size": int(stack.env.get("ERASURE_BATCH_SIZE", 500)),
        "batch_seconds": float(stack.env.get("ERASURE_BATCH_SECONDS", 0.05)),
        "rate": float(stack.env.get("ERASURE_RATE", 1250)),
    }
    verdict = "ok" if done_at is not None and seconds <= ERASE_BOUND_S else "MISS"
    log(
        f"erase    {total:,} messages in {len(rooms)} rooms: "
        f"{'done' if done_at else 'NOT done'} in {seconds:.1f}s "
        f"(the task waited {waited if waited is None else round(waited, 1)}s for a worker "
        f"process, then worked {seconds - (waited or 0):.1f}s) "
        f"({deleted:,} message.deleted reason erased; account unusable after "
        f"{unusable_s * 1000:.0f} ms; batches of at most {result['batch_size']}, "
        f"{result['batch_seconds']} s each, at most {result['rate']:.0f}/s)  {verdict}"
    )
    for label, sender in (("a room it wrote in", senders[0]), ("another room", senders[1])):
        before = sender.between(t_start - args.baseline, t_start)
        during = sender.between(t_start, t_end)
        ok = during["p99_ms"] is not None and during["p99_ms"] <= SEND_P99_BOUND_MS
        log(
            f"send     {label:18} during: n {during['count']:5} p50 {during['p50_ms']} "
            f"p99 {during['p99_ms']} max {during['max_ms']} ms  |  limit (before, same run): "
            f"p50 {before['p50_ms']} p99 {before['p99_ms']} ms  errors "
            f"{len(sender.errors)}  {'ok' if ok and not sender.errors else 'MISS'}"
        )
        result[label] = {"during": during, "before": before, "errors": sender.errors[:5]}
    return result


def superuser():
    from django.contrib.auth import get_user_model

    User = get_user_model()
    admin = User.objects.filter(is_superuser=True).first()
    return admin or User.objects.create_superuser("bench-admin", password=uuid.uuid4().hex)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["delete", "erase"])
    parser.add_argument("--log-events", type=int, default=1_000_000)
    parser.add_argument("--deletes", type=int, default=300)
    parser.add_argument("--erase-messages", type=int, default=100_000)
    parser.add_argument("--erase-rooms", type=int, default=10)
    parser.add_argument("--send-rate", type=float, default=20.0)
    parser.add_argument("--baseline", type=float, default=10.0)
    parser.add_argument("--erase-timeout", type=float, default=300.0)
    parser.add_argument("--json")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    stop_cleanly_on_sigterm()
    extra = dict(item.split("=", 1) for item in args.set)
    print(f"# bench.deletion {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {machine()}", flush=True)
    results = {}
    with ChatStack(settings=extra) as stack:
        if args.only in (None, "delete"):
            results["delete"] = part_delete(args, lambda m: print(m, flush=True))
        if args.only in (None, "erase"):
            results["erase"] = part_erase(args, stack, lambda m: print(m, flush=True))
    print(f"# done, load {machine().rsplit('load ', 1)[1]}", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
