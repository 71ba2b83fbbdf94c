"""Coalescing many small awaits into one call: the pattern behind group commit.

`Batcher(run_batch)` takes items one at a time (`await batcher.submit(item)`) and calls
`run_batch(items)` (async, returning one result per item, in order; a result that is an
exception is raised to that item's caller) with everything that queued while the previous
calls were busy. When a slot is free, the first item goes at once, so a quiet process pays
nothing, and under load one round trip serves many callers. With an `interval`, one call
starts at most every `interval` seconds (unless max_batch items are waiting): a burst's
first item still goes at once, and under steady load the calls are fewer and bigger (the
commit_delay of PostgreSQL's own group commit; see apps.messaging.sendqueue).

`PerLoop(factory)` holds one such object (or a hub, a client) per running event loop.

`Slots(n)` is a counting semaphore whose slot can also be taken without awaiting (take_now),
by a caller in a plain callback.

`BackgroundLoop(name)` runs coroutines for sync code (outside a server) on one loop thread.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import os
import threading
import time


class Batcher:
    def __init__(
        self, run_batch, *, max_batch: int, concurrency: int = 1, observe=None, interval=0.0
    ):
        self.run_batch = run_batch
        self.max_batch = max(1, max_batch)
        self.concurrency = max(1, concurrency)
        self.observe = observe  # called with (batch size, seconds) after each batch
        self.interval = max(0.0, interval)  # least time from one call's start to the next's
        self.pending: list[tuple[object, asyncio.Future]] = []
        self.in_flight = 0
        self.tasks: set[asyncio.Task] = set()
        self.last_start = -float("inf")
        self.timer: asyncio.TimerHandle | None = None

    async def submit(self, item):
        return await self.put(item)

    def put(self, item) -> asyncio.Future:
        """Queue the item now (items go into batches in the order they were put) and return
        the future of its result, for a caller that goes on meanwhile."""
        future = asyncio.get_running_loop().create_future()
        self.pending.append((item, future))
        self._start()
        return future

    def _start(self) -> None:
        while self.pending and self.in_flight < self.concurrency:
            if self.interval and len(self.pending) < self.max_batch:
                wait = self.last_start + self.interval - time.monotonic()
                if wait > 0:
                    if self.timer is None:
                        self.timer = asyncio.get_running_loop().call_later(wait, self._due)
                    return
            self.last_start = time.monotonic()
            batch = self.pending[: self.max_batch]
            del self.pending[: self.max_batch]
            self.in_flight += 1
            task = asyncio.ensure_future(self._run(batch))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _run(self, batch) -> None:
        started = time.perf_counter()
        try:
            results = await self.run_batch([item for item, _ in batch])
        except BaseException as exc:  # noqa: BLE001 - every waiting caller gets the failure
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():  # the caller went away
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        finally:
            if self.observe is not None:
                self.observe(len(batch), time.perf_counter() - started)
            self.in_flight -= 1
            self._start()

    def _due(self) -> None:
        self.timer = None
        self._start()


class Slots:
    """n slots: take() waits for a free one (first come, first served), take_now() takes one
    only if that needs no wait, release() frees one (or hands it to the first waiter).
    asyncio.Semaphore has no synchronous acquire."""

    def __init__(self, count: int):
        self.free = max(1, count)
        self.waiters: collections.deque[asyncio.Future] = collections.deque()

    def take_now(self) -> bool:
        if self.free > 0 and not self.waiters:
            self.free -= 1
            return True
        return False

    async def take(self) -> None:
        if self.take_now():
            return
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            await waiter  # release() handed its slot over
        except asyncio.CancelledError:
            if waiter.cancelled():
                if waiter in self.waiters:
                    self.waiters.remove(waiter)
            else:  # handed over, then cancelled before it could use the slot
                self.release()
            raise

    def release(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


class PerLoop:
    """One object per running event loop (a server process has one; tests may run several)."""

    def __init__(self, factory):
        self.factory = factory
        self.objects: dict[int, tuple[asyncio.AbstractEventLoop, object]] = {}

    def get(self):
        """The running loop's object, made on first use."""
        found = self.peek()
        if found is None:
            loop = asyncio.get_running_loop()
            for key, (other, _) in list(self.objects.items()):
                if other.is_closed():
                    del self.objects[key]
            found = self.factory()
            self.objects[id(loop)] = (loop, found)
        return found

    def peek(self):
        """The running loop's object, or None if it has none yet."""
        loop = asyncio.get_running_loop()
        entry = self.objects.get(id(loop))
        return entry[1] if entry is not None and entry[0] is loop else None


class BackgroundLoop:
    """One event loop on a daemon thread for the life of the process, for sync code that
    awaits network clients (made again in a forked child: a Celery worker's pool process).

    `run(coroutine, timeout)` runs it there and waits for its result. What the coroutine
    opens on the loop (the channel layer's Redis connections) stays open for the next call;
    asgiref's async_to_sync, outside an event loop, makes a thread, a loop and so new
    connections for every call."""

    def __init__(self, name: str):
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pid: int | None = None
        self.lock = threading.Lock()

    def get(self) -> asyncio.AbstractEventLoop:
        if self.pid is not None and self.pid != os.getpid():
            # A forked child: the parent's thread did not come along, its lock may be held.
            self.lock, self.loop, self.pid = threading.Lock(), None, None
        with self.lock:
            if self.loop is None or self.pid != os.getpid() or not self.loop.is_running():
                self.loop, self.pid = self._start(), os.getpid()
            return self.loop

    def _start(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def forever():
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        threading.Thread(target=forever, name=self.name, daemon=True).start()
        ready.wait()
        return loop

    def run(self, coroutine, timeout: float):
        """The coroutine's result (its exception raised here; TimeoutError after `timeout`
        seconds, the coroutine then cancelled)."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.get())
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise
