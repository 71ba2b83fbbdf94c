"""Outgoing webhook delivery: durable cursors over the room event log (PROTOCOL §10).

A worker (`python manage.py deliver_webhooks`) reads the log itself — no Kafka — every
WEBHOOK_POLL_SECONDS:

1. `plan()` (two statements; three when a deletion shows): the cursors of every webhook that
   are behind their room's head and not waiting for a retry, and the log events they want
   that the log tail (apps.integrations.tail) does not hold yet: each event is read from the
   log about once, for every webhook. For each webhook with a free slot, its rooms' events go
   into batches of at most WEBHOOK_BATCH_EVENTS, one per free slot of the webhook's
   WEBHOOK_CONCURRENCY; a room is in at most one batch at a time, so its events go out in seq
   order and a later batch of the room waits for the earlier one.
2. Each batch is POSTed as `{"events": [...]}` (the log's envelopes as they are now: redacted
   events go out redacted) to the address the SSRF guard checked (apps.integrations.ssrf),
   signed `X-Chat-Signature: sha256=<HMAC-SHA256 of the body>`, with `X-Chat-Delivery` (a new
   id per attempt) and a timeout. The worker never waits for a delivery to plan the next: a
   slow or dead endpoint holds its own slots, nobody else's.
3. A 2xx moves each room's cursor to the batch's last seq of that room, in one UPDATE of
   fixed text (at least once: a crash between the answer and the update delivers the batch
   again; receivers deduplicate on the event id). Anything else leaves the cursors and sets
   their `next_attempt_at` with exponential backoff (WEBHOOK_RETRY_BASE_SECONDS doubling,
   capped at WEBHOOK_RETRY_MAX_SECONDS, retried forever) and `last_error`.

Which rooms a webhook follows (its list, or every room its owner may read, checked again every
few seconds) is re-read by `refresh()`, which also creates the cursors of newly followed rooms:
at seq 0 for a room created after the webhook, else at the room's head. Several workers split
the webhooks between them with `--shard I --shards N` (webhook id modulo N); run one process
per shard.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections, connection
from django.db.models import BigIntegerField, Case, DateTimeField, F, Q, Value, When
from django.db.models.functions import Mod
from django.utils import timezone

from apps.core.sql import Statement, run

from . import http, ssrf
from .models import OutgoingWebhook, WebhookCursor
from .services import target_rooms
from .tail import LogTail

logger = logging.getLogger(__name__)
REFRESH_SECONDS = 2.0  # rooms followed, owners' rights
CHANGED_SECONDS = 0.25  # webhooks added or removed
ERROR_MAX = 500


@dataclass
class Item:
    """One room's part of a batch: move cursor `cursor_id` (if still at `generation`) to `upto`."""

    cursor_id: int
    room_id: int
    generation: int
    attempts: int
    upto: int


@dataclass
class Batch:
    webhook_id: int
    url: str
    secret: str
    items: list[Item]
    events: list[str] = field(default_factory=list)  # envelope JSON texts, in order

    def body(self) -> bytes:
        return ('{"events":[' + ",".join(self.events) + "]}").encode()


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def backoff(attempts: int) -> float:
    """Seconds before retry number `attempts` (1, 2, ...): doubling, capped, ±10% jitter."""
    base, cap = settings.WEBHOOK_RETRY_BASE_SECONDS, settings.WEBHOOK_RETRY_MAX_SECONDS
    delay = min(cap, base * 2 ** min(attempts - 1, 30))
    return delay * random.uniform(0.9, 1.1)


class Deliverer:
    def __init__(self, *, shard: int = 0, shards: int = 1):
        self.shard, self.shards = shard, shards
        self.busy: dict[int, int] = {}  # webhook id -> batches in flight
        self.inflight: set[int] = set()  # cursor ids in a batch in flight
        self.followed: dict[int, set[int]] = {}  # webhook id -> the rooms it follows
        self.hooks: dict[int, OutgoingWebhook] = {}
        self.refreshed = self.checked = 0.0
        self.tasks: set[asyncio.Task] = set()
        # Planning has a thread of its own, so it never queues behind the cursor UPDATEs of
        # finished deliveries (on a slow database those piled up ahead of the next plan).
        self.planner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="webhooks-plan")
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="webhooks-db")
        # cursor id -> (generation, seq) delivered by this process: the next batch of a room
        # is planned from it at once, while the cursor's UPDATE is still on its way.
        self.known: dict[int, tuple[int, int]] = {}
        self.wake: asyncio.Event | None = None
        self.tail = LogTail(  # the planner thread's alone
            lambda raw, rows: self.count(log_reads=1, log_rows=rows, statements=int(raw))
        )
        self.delivered = 0  # batches answered 2xx (tests, the benchmark)
        self.failed = 0
        # What the work cost, for the benchmark (SIGUSR1 prints it, see deliver_webhooks):
        # statements sent to the database, planning rounds, reads of the log and the rows
        # they returned, batches and events answered 2xx, batches failed.
        self.stats: Counter = Counter()
        self._stats_lock = threading.Lock()

    def count(self, **amounts: int) -> None:
        with self._stats_lock:
            self.stats.update(amounts)

    def _count_statement(self, execute, sql, params, many, context):
        self.count(statements=1)
        return execute(sql, params, many, context)

    # --- database side (the pool's threads) ----------------------------------------------------

    async def db(self, func, *args, pool=None):
        def call():
            close_old_connections()
            try:
                with connection.execute_wrapper(self._count_statement):
                    return func(*args)
            finally:
                close_old_connections()

        return await asyncio.get_running_loop().run_in_executor(pool or self.pool, call)

    def _mine(self):
        hooks = OutgoingWebhook.objects.filter(is_active=True)
        if self.shards > 1:
            hooks = hooks.annotate(shard=Mod("pk", self.shards)).filter(shard=self.shard)
        return hooks

    def changed(self) -> bool:
        """A webhook was added or removed since the last refresh (one small query every
        CHANGED_SECONDS, so a new webhook starts at once, not at the next periodic refresh)."""
        return set(self._mine().values_list("pk", flat=True)) != set(self.hooks)

    def refresh(self) -> None:
        """Re-read the active webhooks, the rooms each follows, and create missing cursors."""
        self.hooks = {h.pk: h for h in self._mine().select_related("owner")}
        followed = {}
        for hook in self.hooks.values():
            if not hook.owner.is_active:
                followed[hook.pk] = set()
                continue
            rooms = dict(target_rooms(hook).values_list("pk", "created_at"))
            followed[hook.pk] = set(rooms)
            have = set(WebhookCursor.objects.filter(webhook=hook).values_list("room_id", flat=True))
            missing = set(rooms) - have
            if missing:
                heads = dict(
                    target_rooms(hook).filter(pk__in=missing).values_list("pk", "last_seq")
                )
                WebhookCursor.objects.bulk_create(
                    [
                        WebhookCursor(
                            webhook=hook,
                            room_id=pk,
                            seq=0 if rooms[pk] >= hook.created_at else heads[pk],
                        )
                        for pk in missing
                        if pk in heads
                    ],
                    ignore_conflicts=True,
                )
        self.followed = followed

    def plan(
        self,
        free: dict[int, int],
        inflight: set[int],
        known: dict[int, tuple[int, int]] | None = None,
    ) -> list[Batch]:
        """Batches for the webhooks with free slots (`free`: webhook id -> slots); `known`:
        cursors this process moved further than the database may show yet."""
        known = known or {}
        if not free:
            return []
        due = self.due()
        limit = settings.WEBHOOK_BATCH_EVENTS
        wanted: dict[int, list] = {}
        # Events each webhook may still take this round (its free slots' batches): what is
        # read from the log stays bounded however far behind a webhook is.
        budget = {hook_id: slots * limit for hook_id, slots in free.items()}
        floors: dict[int, int] = {}  # room -> the lowest seq a cursor behind is at
        for pk, hook_id, room_id, seq, generation, attempts, head in due:
            if room_id not in self.followed.get(hook_id, ()):
                continue
            if pk in known and known[pk][0] == generation:
                seq = max(seq, known[pk][1])
            floors[room_id] = min(seq, floors.get(room_id, seq))
            if pk in inflight or seq >= head or hook_id not in free:
                continue
            take = min(head - seq, limit, budget[hook_id])
            if take <= 0:
                continue
            budget[hook_id] -= take
            wanted.setdefault(hook_id, []).append(
                (pk, room_id, seq, generation, attempts, seq + take)
            )
        # The ranges wanted of each room's log: the tail reads what it does not hold.
        ranges: dict[int, list[tuple[int, int]]] = {}
        for rows in wanted.values():
            for _, room_id, seq, _, _, upto in rows:
                ranges.setdefault(room_id, []).append((seq, upto))
        self.tail.fill(ranges, floors)
        batches = []
        for hook_id, rows in wanted.items():
            hook = self.hooks[hook_id]
            types = set(hook.types) if hook.types is not None else None
            batch = None
            for pk, room_id, seq, generation, attempts, upto in rows:
                events = self.tail.events(room_id, seq, upto, types)
                if batch is None or len(batch.events) + len(events) > limit and batch.items:
                    if len(batches_of(batches, hook_id)) >= free[hook_id]:
                        break
                    batch = Batch(hook_id, hook.url, hook.secret, [])
                    batches.append(batch)
                batch.items.append(Item(pk, room_id, generation, attempts, upto))
                batch.events.extend(events)
        return batches

    def due(self) -> list[tuple[int, int, int, int, int, int, int]]:
        """(cursor id, webhook id, room id, seq, generation, attempts, the room's head) of every
        webhook's cursors, the busy ones' too (the log tail keeps what they will want), that
        are behind their room's head and not waiting for a retry; longest undelivered first,
        so that under a backlog no room waits behind the others."""
        now, hook_ids = timezone.now(), list(self.hooks)
        if connection.vendor == "postgresql":
            # A fixed text, run every planning round over up to rooms x webhooks rows: the
            # ORM's compiling and row handling were a quarter of the worker's samples (py-spy,
            # bench/webhooks.py --quick).
            quote = connection.ops.quote_name
            cursors = quote(WebhookCursor._meta.db_table)
            rooms = quote(WebhookCursor._meta.get_field("room").related_model._meta.db_table)
            self.count(statements=1)
            return run(
                [
                    Statement(
                        f"SELECT c.id, c.webhook_id, c.room_id, c.seq, c.generation, c.attempts, "
                        f"r.last_seq FROM {cursors} c JOIN {rooms} r ON r.id = c.room_id "
                        f"WHERE c.webhook_id = ANY(%b::bigint[]) AND c.seq < r.last_seq "
                        f"AND (c.next_attempt_at IS NULL OR c.next_attempt_at <= %b) "
                        f"ORDER BY c.webhook_id, c.delivered_at ASC NULLS FIRST, c.room_id",
                        [hook_ids, now],
                        fetch=True,
                    )
                ]
            )[0]
        return list(
            WebhookCursor.objects.filter(webhook_id__in=hook_ids, seq__lt=F("room__last_seq"))
            .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
            .order_by("webhook_id", F("delivered_at").asc(nulls_first=True), "room_id")
            .values_list(
                "pk", "webhook_id", "room_id", "seq", "generation", "attempts", "room__last_seq"
            )
        )

    def delivered_ok(self, batch: Batch) -> None:
        """Move the batch's cursors to its end, in one statement (a batch may hold a hundred
        rooms); a cursor replayed meanwhile (another generation) or already past is left."""
        items = batch.items
        if connection.vendor == "postgresql":
            # A fixed text, the rooms as arrays: compiling the ORM's OR of a hundred Qs and
            # CASE of a hundred WHENs was 84% of the worker's CPU (py-spy in bench/webhooks.py;
            # 149 us of CPU a delivery, 57 us with this and the log tail).
            table = connection.ops.quote_name(WebhookCursor._meta.db_table)
            self.count(statements=1)
            run(
                [
                    Statement(
                        f"UPDATE {table} AS c SET seq = v.upto, attempts = 0, "
                        f"next_attempt_at = NULL, last_error = '', delivered_at = %b "
                        f"FROM unnest(%b::bigint[], %b::bigint[], %b::bigint[]) "
                        f"AS v(id, generation, upto) WHERE c.id = v.id "
                        f"AND c.generation = v.generation AND c.seq < v.upto",
                        [
                            timezone.now(),
                            [item.cursor_id for item in items],
                            [item.generation for item in items],
                            [item.upto for item in items],
                        ],
                    )
                ]
            )
            return
        where = Q()
        for item in items:
            where |= Q(pk=item.cursor_id, generation=item.generation, seq__lt=item.upto)
        WebhookCursor.objects.filter(where).update(
            seq=Case(
                *[When(pk=item.cursor_id, then=Value(item.upto)) for item in items],
                output_field=BigIntegerField(),
            ),
            attempts=0,
            next_attempt_at=None,
            last_error="",
            delivered_at=timezone.now(),
        )

    def delivery_failed(self, batch: Batch, error: str) -> None:
        """Count the failure on the batch's cursors and set their next attempt (one statement)."""
        now = timezone.now()
        items = batch.items
        where = Q()
        for item in items:
            where |= Q(pk=item.cursor_id, generation=item.generation)
        WebhookCursor.objects.filter(where).update(
            attempts=F("attempts") + 1,
            last_error=error[:ERROR_MAX],
            next_attempt_at=Case(
                *[
                    When(
                        pk=item.cursor_id,
                        then=Value(now + timedelta(seconds=backoff(item.attempts + 1))),
                    )
                    for item in items
                ],
                output_field=DateTimeField(),
            ),
        )

    # --- the loop ---------------------------------------------------------------------------

    async def step(self) -> int:
        """One planning round: start the batches it finds; how many it started."""
        now = time.monotonic()
        stale = now - self.refreshed >= REFRESH_SECONDS
        if not stale and now - self.checked >= CHANGED_SECONDS:
            self.checked = now  # (set only when checked: steps come far more often)
            stale = await self.db(self.changed, pool=self.planner)
        if stale:
            await self.db(self.refresh, pool=self.planner)
            self.refreshed = self.checked = time.monotonic()
        free = {pk: settings.WEBHOOK_CONCURRENCY - self.busy.get(pk, 0) for pk in self.hooks}
        free = {pk: n for pk, n in free.items() if n > 0}
        batches = await self.db(
            self.plan, free, set(self.inflight), dict(self.known), pool=self.planner
        )
        self.count(plans=1)
        for batch in batches:
            self.busy[batch.webhook_id] = self.busy.get(batch.webhook_id, 0) + 1
            self.inflight.update(item.cursor_id for item in batch.items)
            task = asyncio.get_running_loop().create_task(self.deliver(batch))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return len(batches)

    async def deliver(self, batch: Batch) -> None:
        released = False

        def release():
            nonlocal released
            if not released:
                released = True
                self.busy[batch.webhook_id] -= 1
                self.inflight.difference_update(item.cursor_id for item in batch.items)
                if self.wake is not None:
                    self.wake.set()  # plan the rooms' next batch now, not at the next tick

        try:
            error = None
            if batch.events:
                error = await self.post(batch)
            if error is None:
                for item in batch.items:
                    self.known[item.cursor_id] = (item.generation, item.upto)
                release()  # the next batch may go while the cursors' UPDATE is written
                await self.db(self.delivered_ok, batch)
                self.delivered += 1
                self.count(batches_ok=1, events_ok=len(batch.events))
            else:
                logger.info("webhook %s: delivery failed: %s", batch.webhook_id, error)
                await self.db(self.delivery_failed, batch, error)  # before its next attempt
                self.failed += 1
                self.count(batches_failed=1)
        except Exception:
            logger.exception("webhook %s: delivery broke", batch.webhook_id)
        finally:
            release()

    async def post(self, batch: Batch) -> str | None:
        """None on a 2xx, else what went wrong (for last_error)."""
        body = batch.body()
        try:
            target = await ssrf.aresolve(batch.url)
            status = await http.post(
                target,
                body,
                {
                    "X-Chat-Signature": sign(batch.secret, body),
                    "X-Chat-Delivery": str(uuid.uuid4()),
                },
                timeout=settings.WEBHOOK_TIMEOUT_SECONDS,
            )
        except ssrf.Refused as exc:
            return f"refused: {exc.message}"
        except http.DeliveryFailed as exc:
            return str(exc)
        if 200 <= status < 300:
            return None
        return f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Plan and deliver until `stop` is set; then let the batches in flight finish."""
        stop = stop or asyncio.Event()
        self.wake = asyncio.Event()
        while not stop.is_set():
            self.wake.clear()
            try:
                await self.step()
            except Exception:
                logger.exception("webhook planning failed; trying again")
            # Until the poll interval passes, a delivery ends (its rooms may go on) or stop.
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.wake.wait())]
            await asyncio.wait(
                waits, timeout=settings.WEBHOOK_POLL_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
            for waiter in waits:
                waiter.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=settings.WEBHOOK_TIMEOUT_SECONDS + 1)
        self.pool.shutdown(wait=False)
        self.planner.shutdown(wait=False)


def batches_of(batches: list[Batch], hook_id: int) -> list[Batch]:
    return [b for b in batches if b.webhook_id == hook_id]
