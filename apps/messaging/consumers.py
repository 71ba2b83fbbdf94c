"""The WebSocket consumer (PROTOCOL §3): one socket per client, carrying many rooms.

The consumer authenticates, parses each frame, checks it, calls a domain service in the
database thread pool and answers. Room events reach the socket through the process's hub
(apps.messaging.hub), not through a channel-layer channel per socket.

Frames are handled one at a time per socket, in arrival order, so a client's actions commit in
the order it sent them and its acks come back in that order.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import time
from datetime import UTC, datetime

from channels.consumer import AsyncConsumer
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import DatabaseError

from apps.core.aio import Slots
from apps.core.errors import AccountDisabled, RateLimited, ServiceError, invalid
from apps.core.redis import RedisUnavailable
from apps.core.wsframe import text_frame
from apps.events import catalogue, fanout
from apps.events.observability import WS_ERRORS, WS_SENDS_IN_REACTOR, connection_id_var
from apps.rooms import services as rooms
from apps.users import ratelimit, rights, sessions

from . import sendqueue, services
from .connection import Connection
from .dbpool import db
from .hub import get_hub
from .wire import REF_MAX, encodable, frame_id, frame_seq

logger = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_FLOODING = 4429
# The frames that take from the user's shared buckets before they run, and from which
# (apps.users.ratelimit). A message.send takes from `write` too, in its batch (on_send).
BUDGETS = {
    "message.edit": "write",
    "message.delete": "write",
    "reaction.add": "write",
    "reaction.remove": "write",
    "read": "read",
    "subscribe": "subscribe",
}
# What a socket opened with a `read` API token may send (apps.users.tokens); else `forbidden`.
READ_ONLY_FRAMES = frozenset({"ping", "subscribe", "unsubscribe"})
# Frames that do not wait for the socket's sends in flight (see on_send). A ping does: its
# pong comes after the answers to every frame before it (clients use it as a barrier).
PIPELINED_FRAMES = frozenset({"message.send"})


# --- Service calls (run in the database thread pool) -----------------------------------------


def _user(user_id):
    user = get_user_model().objects.filter(pk=user_id).first()
    if user is None or not user.is_active:
        raise AccountDisabled()
    return user


def _do_message(action, user_id, message_id, **kwargs):
    user = _user(user_id)
    message = services.get_message_or_404(message_id, user)
    if action == "message.edit":
        event = services.message_edit(message=message, actor=user, body=kwargs["body"])
    elif action == "message.delete":
        event = services.message_delete(message=message, actor=user)
    elif action == "reaction.add":
        event = services.reaction_add(message=message, user=user, emoji=kwargs["emoji"])
    else:
        event = services.reaction_remove(message=message, user=user, emoji=kwargs["emoji"])
    return event.envelope


def _do_read(user_id, room_id, seq):
    user = _user(user_id)
    event = rooms.mark_read(room=rooms.get_room_or_404(room_id, user), user=user, seq=seq)
    return None if event is None else event.envelope


def _check_typing(user_id, room_id):
    user = _user(user_id)
    room = rooms.get_room_or_404(room_id, user)
    rooms.check_post_policy(room, user, rooms.check_can_post(room, user))


class ChatConsumer(AsyncConsumer):
    """`/ws/`: see PROTOCOL §3 for the frames."""

    channel_layer_alias = None  # events come through the process hub, not a channel per socket
    read_only = False  # a socket opened with a `read` token (set at connect)
    sends: set[asyncio.Future] | tuple = ()  # message.send frames in flight (a set once connected)

    async def __call__(self, scope, receive, send):
        self.scope = scope
        self.base_send = send
        self.conn = None
        self.strikes = 0
        # message.send frames in flight (see on_send): their futures (and the tasks answering
        # their errors), and the slots they hold.
        self.sends: set[asyncio.Future] = set()
        self.send_slots = Slots(settings.CHAT_SEND_PIPELINE)
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        user = scope.get("user")
        if user is None or not user.is_authenticated:
            await self._refuse("unauthenticated", "log in or send a token", CLOSE_UNAUTHENTICATED)
            await self._until_disconnect(receive)
            return
        self.user = user
        token = scope.get("api_token")
        self.read_only = token is not None and not token.can_write
        ext = (scope.get("extensions") or {}).get("chat.socket")
        self.hub = get_hub()
        self.conn = conn = Connection(user_id=user.pk, username=user.username, send=send, ext=ext)
        conn.on_send = self.send_now
        sessions.remember(conn, scope)
        connection_id_var.set(conn.id)
        try:
            if not await self.hub.attach(conn):
                await self._refuse(
                    "rate_limited",
                    f"at most {settings.CHAT_MAX_SOCKETS_PER_USER} open sockets per user",
                    CLOSE_FLOODING,
                )
                await self._until_disconnect(receive)
                return
        except Exception:
            logger.exception("could not register socket")
            await self.hub.detach(conn)
            await self._refuse("unavailable", "try again later", 1011)
            await self._until_disconnect(receive)
            return
        try:
            try:
                conn.version = (await self.hub.redis_call(rights.versions([user.pk])))[user.pk]
            except RedisUnavailable:  # Redis failed a moment ago: do not wait for it again
                conn.version = 0
            except Exception:  # Redis down: the first change heard of reloads the user
                logger.warning("rights version unavailable", exc_info=True)
                conn.version = 0
            self.hub.versions[user.pk] = max(self.hub.versions.get(user.pk, 0), conn.version)
            if conn.version:
                # The user's rights have changed at some time: the user object of the handshake
                # may predate the version just read (a change in between would go unnoticed
                # until the next one). Read the user again, after the version: any change from
                # now on bumps it past conn.version.
                try:
                    await self.reload_user()
                except AccountDisabled as exc:
                    self.error(None, exc.code, exc.message)
                    await conn.close(CLOSE_FORBIDDEN)
                    await self._until_disconnect(receive)
                    return
            conn.write_json(
                {
                    "type": "hello",
                    "user": {"id": user.pk, "username": user.username},
                    "heartbeat": settings.CHAT_HEARTBEAT_SECONDS,
                }
            )
            while True:
                # Pings may be answered by the server meanwhile (ping_now), unless sends are in
                # flight: then a ping's pong waits for their answers (frame).
                conn.waiting = not self.sends
                conn.receiving = True
                message = await receive()
                conn.waiting = conn.receiving = False
                if message["type"] == "websocket.disconnect":
                    break
                if message["type"] == "websocket.receive" and not conn.closing:
                    conn.last_seen = time.monotonic()
                    await self.frame(message.get("text"), message.get("bytes"))
        finally:
            await self.hub.detach(conn)

    async def _refuse(self, code, text, close_code):
        WS_ERRORS.labels(code).inc()
        await self.base_send(
            {
                "type": "websocket.send",
                "text": json.dumps({"type": "error", "ref": None, "code": code, "message": text}),
            }
        )
        ext = (self.scope.get("extensions") or {}).get("chat.socket")
        if ext is not None:  # any valid code (daphne's ASGI close takes only 1000, 3000-4999)
            ext.close(close_code)
        else:
            await self.base_send({"type": "websocket.close", "code": close_code})

    @staticmethod
    async def _until_disconnect(receive):
        while (await receive())["type"] != "websocket.disconnect":
            pass

    # --- frames

    def error(self, ref, code, message, extra=None):
        WS_ERRORS.labels(code).inc()
        self.conn.write_json(
            {"type": "error", "ref": ref, "code": code, "message": message, **(extra or {})}
        )

    async def frame(self, text, data):
        ref = None
        limit = settings.CHAT_MAX_FRAME_BYTES
        try:
            if text is None:
                raise invalid("frames are JSON text, not binary")
            if len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit):
                raise ServiceError("too_large", f"frames are limited to {limit} bytes")
            try:
                frame = json.loads(text)
            except (ValueError, RecursionError):  # deep nesting overflows the parser
                raise invalid("the frame is not valid JSON (or is nested too deeply)") from None
            if not isinstance(frame, dict):
                raise invalid("a frame is a JSON object")
            escaped = "\\u" in text  # only escapes can spell a lone surrogate
            ref = frame.get("ref")
            if ref is not None and (
                not isinstance(ref, str) or len(ref) > REF_MAX or (escaped and not encodable(ref))
            ):
                ref = None
                raise invalid(
                    f"ref must be a string of at most {REF_MAX} characters (valid Unicode)"
                )
            if escaped and not encodable(frame):
                raise invalid("the frame's strings must be valid Unicode (no lone surrogates)")
            kind = frame.get("type")
            handler = self.handlers.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise invalid(f"unknown frame type {kind!r}")
            if self.read_only and kind not in READ_ONLY_FRAMES:
                raise ServiceError("forbidden", "this token is read-only (scope `read`)")
            if self.sends and kind not in PIPELINED_FRAMES:
                # Any other frame takes effect after the socket's sends before it committed
                # (or failed): a socket's frames act in the order it sent them.
                await asyncio.wait(list(self.sends))
            if kind != "ping":
                self.conn.last_active = time.monotonic()
                if self.hub.versions.get(self.conn.user_id, 0) > self.conn.version:
                    await self.reload_user()
            budget = BUDGETS.get(kind)
            if budget is not None:
                wait = await self.take(budget)
                if wait:
                    raise RateLimited("too many messages; slow down", retry_after=math.ceil(wait))
            await handler(self, frame, ref)
        except Exception as exc:  # noqa: BLE001 - every failure is answered (report)
            await self.report(ref, exc)

    async def report(self, ref, exc: Exception) -> None:
        """Answer a frame that failed: its error code, or `unavailable`."""
        if self.write_error(ref, exc):
            await self.conn.close(CLOSE_FORBIDDEN)

    def write_error(self, ref, exc: Exception) -> bool:
        """report's error frame, written now; True when the socket must close after it (the
        account was disabled)."""
        if isinstance(exc, AccountDisabled):
            self.error(ref, exc.code, exc.message)
            return True
        if isinstance(exc, ServiceError):
            self.error(ref, exc.code, exc.message, exc.extra)
        elif isinstance(exc, DatabaseError):
            logger.warning("database unavailable for a %s frame", "ws", exc_info=exc)
            self.error(ref, "unavailable", "the database is unavailable; try again")
        else:
            logger.error("frame failed", exc_info=exc)
            self.error(ref, "unavailable", "internal error; try again")
        return False

    async def reload_user(self):
        """The user's rights changed since this socket last read them (apps.users.rights):
        read the user again; AccountDisabled if it is gone or deactivated."""
        version = self.hub.versions.get(self.conn.user_id, 0)
        self.user = await db(_user)(self.conn.user_id)
        self.conn.version = version

    async def shared_take(self, budget, scope=None) -> float:
        """One take from the user's buckets in Redis, bounded by the hub's Redis timeout; while
        Redis is failing (or failed a moment ago) the same buckets count in this process."""
        user_id = self.conn.user_id
        return await ratelimit.bounded(
            ratelimit.take(user_id, budget, scope, local_on_error=False),
            lambda: ratelimit.take_local(ratelimit.buckets(user_id, budget, scope)),
        )

    async def take(self, budget) -> float:
        """Take from the user's shared buckets (apps.users.ratelimit): 0.0, or the seconds to
        wait. Repeated refusals close the socket (4429)."""
        wait = await self.shared_take(budget)
        if self.strike(wait):
            await self.conn.close(CLOSE_FLOODING)
        return wait

    def strike(self, wait: float) -> bool:
        """Count a take's outcome (0.0: allowed, else refused); True when the refusals in a
        row reached CHAT_RATE_LIMIT_STRIKES: the flooding error is written, and the caller
        closes the socket with 4429."""
        if not wait:
            self.strikes = 0
            return False
        self.strikes += 1
        if self.strikes < settings.CHAT_RATE_LIMIT_STRIKES:
            return False
        self.error(
            None,
            "rate_limited",
            "flooding; closing the socket",
            {"retry_after": max(1, math.ceil(wait))},
        )
        return True

    async def ack(self, ref, envelope, envelope_text=None):
        self.write_ack(ref, envelope, envelope_text)

    def write_ack(self, ref, envelope, envelope_text=None) -> None:
        if envelope_text is None:
            self.conn.write_json({"type": "ack", "ref": ref, "event": envelope})
            return
        # The event's JSON as committed and fanned out, not serialized again.
        text = f'{{"type":"ack","ref":{fanout.serialize(ref)},"event":{envelope_text}}}'
        self.conn.write(text_frame(text.encode()))

    async def on_ping(self, frame, ref):
        self.conn.ping(frame.get("status"), ref)

    async def on_subscribe(self, frame, ref):
        room_id = frame_id(frame, "room")
        since = frame_seq(frame, "since", required=False)
        # (The frame took from the user's subscribe bucket already: BUDGETS.) A replay waits
        # for the previous one to leave the server: a client that does not read cannot pile
        # replays up in the server's memory.
        if since is not None and not await self.conn.replay_sent(settings.CHAT_REPLAY_WAIT_SECONDS):
            raise RateLimited(
                "the previous replay on this socket is still unsent; read it first", retry_after=1
            )
        await self.hub.subscribe(self.conn, self.user, room_id, since, ref)

    async def on_unsubscribe(self, frame, ref):
        room_id = frame_id(frame, "room")
        self.hub.unsubscribe(self.conn, room_id)
        self.conn.write_json({"type": "unsubscribed", "ref": ref, "room": room_id})

    async def on_send(self, frame, ref):
        room_id = frame_id(frame, "room")
        reply_to = frame_id(frame, "reply_to", required=False)
        # The hot path: the socket's user as authenticated at connect (the batch reads the
        # membership joined with the user, refusing a deactivated account), committed with
        # whatever other sends this process has queued (apps.messaging.sendqueue).
        # Pipelined: the send is queued now, in frame order (a lane's queue is first in, first
        # out, so a socket's sends to a room commit in the order it sent them), and the next
        # frame is read while it waits for its batch; its ack (or error) is written when the
        # batch is done. At most CHAT_SEND_PIPELINE sends of a socket wait at once. The batch
        # takes the send's token from the user's `write` bucket (one rate-limiter call for the
        # whole batch); a refusal comes back as ratelimit.BucketEmpty (answer_send).
        await self.send_slots.take()
        self.queue_send(frame, ref, room_id, reply_to)

    def send_now(self, payload: bytes) -> bool:
        """A message.send frame taken in the reactor (Connection.text_now; chatproject.serve:
        a whole text frame, nothing from this socket queued for the consumer), while the
        consumer waits for its next frame: no ASGI queue, no task wake-up, no frame coroutine
        (2,000 sends/s are 2,000 of each). It is queued as `frame` and on_send would queue
        it, in order. Anything that would need more than that (an error to answer, escapes
        to check, the user's rights to read again, a read-only token, no free send slot)
        returns False: the frame then goes through the consumer, which answers it as usual."""
        conn = self.conn
        if (
            not conn.receiving
            or conn.closing
            or self.read_only
            or len(payload) > settings.CHAT_MAX_FRAME_BYTES
            or b"\\u" in payload  # escapes (a lone surrogate?): `frame` checks them
            or self.hub.versions.get(conn.user_id, 0) > conn.version
        ):
            return False
        try:
            frame = json.loads(payload.decode())
        except (ValueError, RecursionError):  # not UTF-8 or not JSON: `frame` answers it
            return False
        if not isinstance(frame, dict) or frame.get("type") != "message.send":
            return False
        ref = frame.get("ref")
        if ref is not None and (not isinstance(ref, str) or len(ref) > REF_MAX):
            return False
        try:
            room_id = frame_id(frame, "room")
            reply_to = frame_id(frame, "reply_to", required=False)
        except ServiceError:
            return False
        if not self.send_slots.take_now():
            return False
        try:
            self.queue_send(frame, ref, room_id, reply_to)
        except Exception:  # noqa: BLE001 - nothing was queued: the consumer tries it
            return False
        conn.last_seen = conn.last_active = time.monotonic()
        conn.waiting = False  # a ping from now on waits for this send's answer (frame)
        WS_SENDS_IN_REACTOR.inc()
        return True

    def queue_send(self, frame, ref, room_id, reply_to) -> None:
        """Queue the send (its slot taken) and answer it when its batch is done."""
        try:
            result = sendqueue.enqueue(
                services.SendRequest(
                    room_id,
                    self.user,
                    frame.get("body"),
                    frame.get("client_id"),
                    reply_to,
                    frame.get("attachments"),
                ),
                take=True,
            )
        except BaseException:
            self.send_slots.release()
            raise
        self.sends.add(result)
        result.add_done_callback(functools.partial(self.answer_send, ref))

    def answer_send(self, ref, result: asyncio.Future) -> None:
        """The send's batch is done: write its ack, or its error. A done callback of the
        send's future, not a task per send: the answer is written before whatever awaits
        that future resumes (a later frame's barrier in `frame`), and the answers of a
        socket's sends come in the order of its frames, as their batches complete. Closing
        the socket (after an AccountDisabled error, or the refusals in a row that make a
        flood) is the one thing left to a task (it joins the sends a later frame waits
        for)."""
        self.sends.discard(result)
        self.send_slots.release()
        if result.cancelled():
            return
        exc = result.exception()
        if exc is None:
            self.strikes = 0  # the batch took the send's token
            event = result.result()
            try:
                self.write_ack(ref, event.envelope, getattr(event, "envelope_text", None))
                return
            except Exception as failure:  # noqa: BLE001 - answered like any frame's failure
                exc = failure
        close = None
        if isinstance(exc, ratelimit.BucketEmpty):  # the batch's take was refused
            self.write_error(ref, exc)
            if self.strike(exc.retry_after):
                close = CLOSE_FLOODING
        else:
            self.strikes = 0  # the token was taken; the send failed on its own
            if self.write_error(ref, exc):
                close = CLOSE_FORBIDDEN
        if close is not None:
            task = asyncio.ensure_future(self.conn.close(close))
            self.sends.add(task)
            task.add_done_callback(self.sends.discard)

    async def on_message_edit(self, frame, ref):
        envelope = await db(_do_message)(
            "message.edit", self.conn.user_id, frame_id(frame, "message"), body=frame.get("body")
        )
        await self.ack(ref, envelope)

    async def on_message_delete(self, frame, ref):
        envelope = await db(_do_message)(
            "message.delete", self.conn.user_id, frame_id(frame, "message")
        )
        await self.ack(ref, envelope)

    async def on_reaction(self, frame, ref):
        envelope = await db(_do_message)(
            frame["type"], self.conn.user_id, frame_id(frame, "message"), emoji=frame.get("emoji")
        )
        await self.ack(ref, envelope)

    async def on_read(self, frame, ref):
        envelope = await db(_do_read)(
            self.conn.user_id, frame_id(frame, "room"), frame_seq(frame, "seq")
        )
        await self.ack(ref, envelope)

    async def on_typing(self, frame, ref):
        room_id = frame_id(frame, "room")
        state = frame.get("state")
        if not isinstance(state, bool):
            raise invalid("state must be true or false")
        if room_id not in self.conn.subs:
            raise invalid("subscribe to the room first")
        key = (self.conn.user_id, room_id)
        now = time.monotonic()
        last = self.hub.typing.get(key)
        if last is not None:
            last_time, last_state = last
            if state == last_state and (
                not state or now - last_time < settings.CHAT_TYPING_THROTTLE_SECONDS
            ):
                return  # throttled: the room already knows
        elif not state:
            return
        # Every typing event, whatever its state, takes from a small bucket per user and room
        # shared by all processes: alternating true/false cannot flood the room.
        if await self.shared_take("typing", room_id):
            return  # dropped quietly: typing is ephemeral (clients let it expire)
        await db(_check_typing)(self.conn.user_id, room_id)
        self.hub.typing[key] = (now, state)
        envelope = catalogue.envelope(
            "typing",
            room_id=room_id,
            seq=None,
            actor=self.user,
            data=catalogue.typing(self.user, state=state),
            ts=datetime.now(UTC),
        )
        try:
            await fanout.adispatch(envelope)
        except Exception:  # ephemeral: may be dropped
            logger.warning("typing fan-out failed", exc_info=True)

    handlers = {
        "ping": on_ping,
        "subscribe": on_subscribe,
        "unsubscribe": on_unsubscribe,
        "message.send": on_send,
        "message.edit": on_message_edit,
        "message.delete": on_message_delete,
        "reaction.add": on_reaction,
        "reaction.remove": on_reaction,
        "read": on_read,
        "typing": on_typing,
    }
