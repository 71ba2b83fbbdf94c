"""Group commit for the WebSocket `message.send` frames of one server process.

A send waits for its lane (a share of the rooms) to be free: then every send that queued
meanwhile goes into one transaction (services.message_send_many, through
apps.core.aio.Batcher). At a few sends a second each send runs alone, at once; under load,
one batch's round trips, lock and commit are shared by tens of sends, so a process commits
many times more messages per second and a busy room's lock is taken once per batch instead of
once per message.

A lane also starts a batch at most every CHAT_SEND_BATCH_INTERVAL_MS (10 ms; unless
CHAT_SEND_BATCH_MAX sends wait): a send that finds the lane idle and its last batch older
than that goes at once, but under steady load the lane commits at most a hundred times a
second, like PostgreSQL's commit_delay. A batch's fixed cost (its round trips and loop turns
in the server, its transaction in PostgreSQL) is most of a send's CPU at moderate rates: at
1,000 sends/s the interval took batches from 5 to 10.5 sends and the CPU per acked send, all
processes together, from 1.15 to 0.81–0.85 ms, for 2–3 ms more ack latency at the median
(bench/RESULTS.md, 3 December). Above ~2,000/s a batch takes longer than the interval anyway.

Each socket handles its frames one at a time, so a client's sends still commit in the order it
sent them; sends from different clients to one room commit in batch order, and the room's seq
is their order for everyone. A refused send gets its own error; a database failure fails the
batch it was in (each socket answers `unavailable`, and the client resends with the same
client_id).

The rate limiter's take for a socket's send is made by its batch (`enqueue(..., take=True)`):
one script call for every send of the batch, asked alongside the batch's reads, instead of one
per frame before the frame is queued. At 1,000 sends/s that was 0.85 script calls per send and
about a tenth of the server's and Redis's CPU per send (bench/RESULTS.md, 2 December evening).
The answer is awaited after the reads, before anything is written: the Redis round trip
overlaps the database's instead of adding a turn of the event loop to every batch.
"""

from __future__ import annotations

import asyncio
import datetime
import logging

import psycopg
from django.conf import settings
from django.db import connections
from psycopg.types.datetime import TimestamptzLoader

from apps.core.aio import Batcher, PerLoop
from apps.core.redis import async_client
from apps.events.observability import SEND_BATCH_SECONDS, SEND_BATCH_SIZE
from apps.users import ratelimit

from .dbpool import db
from .services import SendRequest, amessage_send_many, message_send_many

logger = logging.getLogger(__name__)


def _observe(size: int, seconds: float) -> None:
    SEND_BATCH_SIZE.observe(size)
    SEND_BATCH_SECONDS.observe(seconds)


class Lane:
    """One share of the rooms: a Batcher with one transaction in flight.

    On PostgreSQL the lane keeps its own asyncio psycopg connection and runs the batch on the
    event loop (services.amessage_send_many): no database thread, so no wait for the GIL after
    each round trip while the loop is busy. Anything unusual there (a resend that races
    another transaction, a lost connection, a database error) is handed to the thread-pool
    path, message_send_many, which has the full rules and answers the same way (a send is
    idempotent on its client_id, so trying again is safe)."""

    def __init__(self, max_batch: int, interval: float = 0.0):
        self.conn = None
        self.batcher = Batcher(self.run, max_batch=max_batch, observe=_observe, interval=interval)

    async def run(self, items):
        """The batch's items are (request, take) pairs (see enqueue): the takes are one call
        (admit), made while the batch reads; the sends it refuses get ratelimit.BucketEmpty
        and no write, the others are written in one transaction."""
        requests = [request for request, _ in items]
        admission = None
        if any(take for _, take in items):
            admission = asyncio.ensure_future(admit(items))
        try:
            return await self.send(requests, admission)
        finally:
            if admission is not None and not admission.done():
                admission.cancel()

    async def send(self, requests, admission=None):
        if use_async_connection():
            if permissions_unread(requests):
                await db(load_permissions)(requests)
            try:
                conn = await self.connection()
                return await amessage_send_many(conn, requests, admission)
            except psycopg.Error:
                logger.info(
                    "send batch on the asyncio connection failed; using the thread pool",
                    exc_info=True,
                )
                await self.reset()
        refusals = await admission if admission is not None else [None] * len(requests)
        results = list(refusals)
        kept = [i for i, refusal in enumerate(refusals) if refusal is None]
        if kept:
            sent = await db(message_send_many)([requests[i] for i in kept])
            for i, result in zip(kept, sent, strict=True):
                results[i] = result
        return results

    async def connection(self):
        if self.conn is None or self.conn.closed:
            params = connections["default"].get_connection_params()
            params.pop("cursor_factory", None)
            params["options"] = f"{params.get('options', '')} -c TimeZone=UTC".strip()
            # Autocommit: asend_batch sends its own BEGIN and COMMIT in the batch's pipeline.
            self.conn = await psycopg.AsyncConnection.connect(**params, autocommit=True)
            use_c_timestamptz_loader(self.conn, connections["default"].timezone)
        return self.conn

    async def reset(self):
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:  # noqa: BLE001 - it is being dropped
                pass


def use_c_timestamptz_loader(conn, django_tz) -> None:
    """Load timestamptz with psycopg's own loader (C, in psycopg-binary) where it gives what
    Django's would: the lane's session is in UTC, so psycopg's values carry
    datetime.timezone.utc, which is Django's when its database time zone is UTC. Django's
    loader is a Python subclass of psycopg's Python one, so every timestamp a batch read (the
    room, membership and user rows) was parsed in Python: 4.6 % of the server at 1,000
    sends/s. Any other time zone keeps Django's loader."""
    if django_tz is not datetime.UTC:
        return
    if conn.info.parameter_status("TimeZone") != "UTC":
        return
    conn.adapters.register_loader("timestamptz", TimestamptzLoader)


async def admit(items) -> list:
    """A result per item: None for a send that may go on, BucketEmpty for one whose take was
    refused. Every take of the batch is one script call, bounded like a socket's own Redis
    calls (apps.core.redis.Guard); with Redis failing, the takes count in this process."""
    results: list = [None] * len(items)
    wanted = []
    for i, (request, take) in enumerate(items):
        if take:
            buckets = ratelimit.buckets(request.author.pk)
            if buckets:
                wanted.append((i, buckets))
    if not wanted:
        return results
    requests = [buckets for _, buckets in wanted]

    def local():
        return [ratelimit.take_local(buckets) for buckets in requests]

    if async_client() is None:  # embedded mode: the buckets live in this process
        waits = local()
    else:
        waits = await ratelimit.bounded(ratelimit.take_many(requests), local)
    for (i, _), wait in zip(wanted, waits, strict=True):
        if wait:
            results[i] = ratelimit.BucketEmpty(wait)
    return results


def permissions_unread(requests) -> bool:
    """Whether an author is staff whose permissions were never read: the rules may ask
    (site moderators are exempt from slow mode, see any room), and reading them is an ORM
    query, which the event loop must not run."""
    return any(
        getattr(r.author, "is_staff", False)
        and not getattr(r.author, "is_superuser", False)
        and not hasattr(r.author, "_perm_cache")
        for r in requests
    )


def load_permissions(requests) -> None:
    """Read those permissions in a database thread, onto the user objects the sockets keep
    (once per socket: the later batches find them loaded)."""
    for request in requests:
        if getattr(request.author, "is_staff", False):
            request.author.get_all_permissions()


def use_async_connection() -> bool:
    return connections["default"].vendor == "postgresql" and settings.CHAT_SEND_ASYNC_DB


def _new_lanes() -> list[Lane]:
    lanes = max(1, settings.CHAT_SEND_BATCH_CONCURRENCY)
    interval = settings.CHAT_SEND_BATCH_INTERVAL_MS / 1000
    return [Lane(settings.CHAT_SEND_BATCH_MAX, interval) for _ in range(lanes)]


_lanes = PerLoop(_new_lanes)


async def send(request: SendRequest, *, take: bool = False):
    """The request's message.created Event; raises the ServiceError that refused it."""
    return await enqueue(request, take=take)


def enqueue(request: SendRequest, *, take: bool = False):
    """Queue the request now and return the future of its result (see send): a caller may
    queue its next request before this one's batch is done, and its requests to a room commit
    in the order they were queued. With `take`, the batch first takes a token from the
    author's `write` bucket (apps.users.ratelimit); an empty bucket fails the request with
    ratelimit.BucketEmpty, before anything is written.

    Rooms are spread over CHAT_SEND_BATCH_CONCURRENCY lanes, each with one transaction in
    flight: two transactions of a process never wait for each other's room locks."""
    lanes = _lanes.get()
    room_id = getattr(request.room, "pk", request.room)
    lane = lanes[room_id % len(lanes)] if isinstance(room_id, int) else lanes[0]
    return lane.batcher.put((request, take))
