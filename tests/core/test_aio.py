"""apps/core/aio.py: the Batcher coalesces what queues while a batch runs, PerLoop keeps one
object per event loop, BackgroundLoop keeps one loop thread for sync callers. Pure asyncio: no
services."""

import asyncio
import concurrent.futures
import os
import threading
import time

import pytest

from apps.core.aio import BackgroundLoop, Batcher, PerLoop


async def settle():
    """Let every ready task run (a submit, then the batch task it starts)."""
    for _ in range(5):
        await asyncio.sleep(0)


class Recorder:
    """A run_batch that records each batch and waits on a gate, so a test controls when it ends."""

    def __init__(self, results=None):
        self.batches = []
        self.gate = asyncio.Event()
        self.results = results or (lambda items: [f"done {item}" for item in items])

    async def __call__(self, items):
        self.batches.append(list(items))
        await self.gate.wait()
        return self.results(items)


def test_a_lone_item_goes_at_once_and_what_queues_meanwhile_goes_in_one_batch():
    async def scenario():
        run = Recorder()
        batcher = Batcher(run, max_batch=10)
        first = asyncio.ensure_future(batcher.submit(1))
        await settle()
        assert run.batches == [[1]]  # no timer: the first item did not wait for company
        rest = [asyncio.ensure_future(batcher.submit(n)) for n in (2, 3, 4)]
        await settle()
        assert run.batches == [[1]]  # one batch in flight (concurrency 1): the others queue
        run.gate.set()
        results = await asyncio.gather(first, *rest)
        return run.batches, results

    batches, results = asyncio.run(scenario())
    assert batches == [[1], [2, 3, 4]]
    assert results == ["done 1", "done 2", "done 3", "done 4"]


def test_max_batch_and_concurrency_bound_each_call():
    async def scenario():
        run = Recorder()
        batcher = Batcher(run, max_batch=2, concurrency=2)
        futures = [asyncio.ensure_future(batcher.submit(n)) for n in range(6)]
        await settle()
        in_flight = [list(b) for b in run.batches]
        run.gate.set()
        await asyncio.gather(*futures)
        return in_flight, run.batches

    in_flight, batches = asyncio.run(scenario())
    assert in_flight == [[0], [1]]  # two calls at once, each started as soon as it could
    assert batches == [[0], [1], [2, 3], [4, 5]]  # then at most two items a call


def test_an_exception_result_fails_only_its_own_caller():
    async def scenario():
        run = Recorder(lambda items: [ValueError(i) if i == "bad" else i for i in items])
        run.gate.set()
        batcher = Batcher(run, max_batch=10)
        blocker = asyncio.ensure_future(batcher.submit("first"))
        good = asyncio.ensure_future(batcher.submit("good"))
        bad = asyncio.ensure_future(batcher.submit("bad"))
        return await asyncio.gather(blocker, good, bad, return_exceptions=True)

    first, good, bad = asyncio.run(scenario())
    assert (first, good) == ("first", "good")
    assert isinstance(bad, ValueError) and bad.args == ("bad",)


def test_a_failed_batch_fails_every_caller_in_it_and_the_next_batch_still_runs():
    calls = []

    async def run_batch(items):
        calls.append(list(items))
        if "boom" in items:
            raise RuntimeError("database down")
        return items

    async def scenario():
        batcher = Batcher(run_batch, max_batch=10)
        boom = asyncio.ensure_future(batcher.submit("boom"))
        await settle()
        later = asyncio.ensure_future(batcher.submit("later"))
        return await asyncio.gather(boom, later, return_exceptions=True)

    boom, later = asyncio.run(scenario())
    assert isinstance(boom, RuntimeError) and later == "later"
    assert calls == [["boom"], ["later"]]


def test_observe_gets_each_batch_size_and_time():
    seen = []

    async def run_batch(items):
        return items

    async def scenario():
        batcher = Batcher(run_batch, max_batch=10, observe=lambda n, s: seen.append((n, s)))
        await asyncio.gather(*(batcher.submit(n) for n in range(3)))

    asyncio.run(scenario())
    assert [n for n, _ in seen] == [1, 2] and all(s >= 0 for _, s in seen)


def test_a_caller_that_went_away_does_not_break_the_batch():
    async def scenario():
        run = Recorder()
        batcher = Batcher(run, max_batch=10)
        first = asyncio.ensure_future(batcher.submit(1))
        await settle()
        gone = asyncio.ensure_future(batcher.submit(2))
        stays = asyncio.ensure_future(batcher.submit(3))
        await settle()
        gone.cancel()
        run.gate.set()
        return await asyncio.gather(first, stays), gone.cancelled()

    results, cancelled = asyncio.run(scenario())
    assert results == ["done 1", "done 3"] and cancelled


class Timed:
    """A run_batch that returns at once and records each batch with the time it started."""

    def __init__(self):
        self.batches = []

    async def __call__(self, items):
        self.batches.append((time.monotonic(), list(items)))
        return items


def test_with_an_interval_a_lone_item_still_goes_at_once():
    async def scenario():
        run = Timed()
        batcher = Batcher(run, max_batch=10, interval=5.0)
        asked = time.monotonic()
        assert await batcher.submit("alone") == "alone"
        return asked, run.batches

    asked, batches = asyncio.run(scenario())
    assert [items for _, items in batches] == [["alone"]]
    assert batches[0][0] - asked < 1.0  # far less than the interval: no wait for company


def test_with_an_interval_what_comes_soon_after_a_batch_waits_and_goes_together():
    async def scenario():
        run = Timed()
        batcher = Batcher(run, max_batch=10, interval=0.3)
        await batcher.submit(1)  # done at once, so the lane is free again
        results = await asyncio.gather(*(batcher.submit(n) for n in (2, 3, 4)))
        return results, run.batches

    results, batches = asyncio.run(scenario())
    assert results == [2, 3, 4]
    assert [items for _, items in batches] == [[1], [2, 3, 4]]
    assert batches[1][0] - batches[0][0] >= 0.29  # the second started an interval after the first


def test_with_an_interval_a_full_batch_does_not_wait():
    async def scenario():
        run = Timed()
        batcher = Batcher(run, max_batch=3, interval=5.0)
        await batcher.submit(0)
        await asyncio.wait_for(asyncio.gather(*(batcher.submit(n) for n in (1, 2, 3))), 2.0)
        waiting = [asyncio.ensure_future(batcher.submit(n)) for n in (4, 5)]
        await settle()
        started = [items for _, items in run.batches]
        for future in waiting:
            future.cancel()
        return started

    assert asyncio.run(scenario()) == [[0], [1, 2, 3]]  # 4 and 5 (not full) wait for the interval


def test_perloop_keeps_one_object_per_running_loop():
    made = []
    registry = PerLoop(lambda: made.append(object()) or made[-1])

    async def twice():
        assert registry.peek() is None or registry.peek() is made[-1]
        return registry.get(), registry.get()

    a1, a2 = asyncio.run(twice())
    b1, b2 = asyncio.run(twice())
    assert a1 is a2 and b1 is b2 and a1 is not b1
    assert len(made) == 2
    assert len(registry.objects) == 1  # the first loop closed: its entry was dropped


def test_perloop_peek_makes_nothing():
    registry = PerLoop(lambda: pytest.fail("peek must not make an object"))

    async def peek():
        return registry.peek()

    assert asyncio.run(peek()) is None


# --- BackgroundLoop ----------------------------------------------------------------------------


def test_a_background_loop_runs_every_call_on_one_loop_thread_of_its_own():
    background = BackgroundLoop("test-loop")

    async def where():
        return asyncio.get_running_loop(), threading.current_thread().name

    first, second = background.run(where(), 5), background.run(where(), 5)
    assert first == second  # the same loop, kept between calls
    assert first[1] == "test-loop" and first[1] != threading.current_thread().name


def test_a_background_loop_raises_the_coroutines_error_and_cancels_it_on_timeout():
    background = BackgroundLoop("test-loop")

    async def fails():
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        background.run(fails(), 5)
    cancelled = threading.Event()

    async def hangs():
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(concurrent.futures.TimeoutError):
        background.run(hangs(), 0.1)
    assert cancelled.wait(5)

    async def answer():
        return 42

    assert background.run(answer(), 5) == 42  # the loop still serves


def test_a_forked_child_gets_a_loop_of_its_own():
    background = BackgroundLoop("test-loop")

    async def loop_id():
        return id(asyncio.get_running_loop()), os.getpid()

    parent = background.run(loop_id(), 5)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's loop thread did not survive the fork
        try:
            os.write(write, ",".join(map(str, background.run(loop_id(), 5))).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = tuple(int(part) for part in os.read(read, 200).decode().split(","))
    os.close(read)
    assert child[1] == pid and child[1] != parent[1]
    assert background.run(loop_id(), 5) == parent  # the parent's loop is unchanged
