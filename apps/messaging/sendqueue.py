"""Group commit for the WebSocket `message.send` frames of one server process.

A send waits for a free database thread, never for a timer: when one is free, every send that
queued meanwhile goes into one transaction (services.message_send_many). At a few sends a
second each send runs alone, as before; under load, one batch's round trips, lock and commit
are shared by tens of sends, so a process commits many times more messages per second and a
busy room's lock is taken once per batch instead of once per message.

Each socket handles its frames one at a time, so a client's sends still commit in the order it
sent them; sends from different clients to one room commit in batch order, and the room's seq
is their order for everyone. A refused send gets its own error; a database failure fails the
batch it was in (each socket answers `unavailable`, and the client resends with the same
client_id).
"""

from __future__ import annotations

import asyncio

from django.conf import settings

from .services import SendRequest, message_send_many


class SendQueue:
    def __init__(self, run_batch, *, max_batch: int, concurrency: int):
        self.run_batch = run_batch  # async: list[SendRequest] -> list[Event | ServiceError]
        self.max_batch = max(1, max_batch)
        self.concurrency = max(1, concurrency)
        self.pending: list[tuple[SendRequest, asyncio.Future]] = []
        self.in_flight = 0
        self.tasks: set[asyncio.Task] = set()

    async def send(self, request: SendRequest):
        """The request's message.created Event; raises the ServiceError that refused it."""
        future = asyncio.get_running_loop().create_future()
        self.pending.append((request, future))
        self._start()
        return await future

    def _start(self) -> None:
        while self.pending and self.in_flight < self.concurrency:
            batch = self.pending[: self.max_batch]
            del self.pending[: self.max_batch]
            self.in_flight += 1
            task = asyncio.ensure_future(self._run(batch))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _run(self, batch) -> None:
        try:
            results = await self.run_batch([request for request, _ in batch])
        except BaseException as exc:  # noqa: BLE001 - every waiting socket gets the failure
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():  # the socket went away; the send stands (resend finds it)
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        finally:
            self.in_flight -= 1
            self._start()


_queues: dict[int, tuple[asyncio.AbstractEventLoop, SendQueue]] = {}


def get_send_queue() -> SendQueue:
    """The running loop's queue (one per server process; tests may run several loops)."""
    from .realtime import db

    loop = asyncio.get_running_loop()
    entry = _queues.get(id(loop))
    if entry is None or entry[0] is not loop:
        for key, (other, _) in list(_queues.items()):
            if other.is_closed():
                del _queues[key]
        queue = SendQueue(
            db(message_send_many),
            max_batch=getattr(settings, "CHAT_SEND_BATCH_MAX", 200),
            concurrency=getattr(settings, "CHAT_SEND_BATCH_CONCURRENCY", 2),
        )
        entry = _queues[id(loop)] = (loop, queue)
    return entry[1]
