"""Experiment hooks for a server process, set with `--set NAME=VALUE` without editing the
server; this folder is on the server's sys.path only when one of them is given. What they
write goes to the server's log (`BENCH_SERVER_LOG=FILE` keeps it).

- BENCH_SWITCH_INTERVAL=S: the GIL switch interval (sys.setswitchinterval).
- BENCH_STALL_MS=N: a watchdog thread that notices when the event loop has run no callback
  for N ms (a 2 ms timer that did not fire) and writes `STALL >= N ms at <the main thread's
  line>`, the main thread's stack the first time a place stalls (BENCH_STALL_FRAMES frames,
  14), and when the loop runs again `STALL ended after T ms: main thread on a CPU C ms,
  runnable waiting W ms` from the kernel's schedstat: C is the loop's own work, W the time
  the operating system kept it off a core, and T - C - W the time it slept (in epoll, or for
  the GIL).
- BENCH_GC_MS=N: every garbage collection of N ms or more, with its generation, and the
  counts and total time of each generation's collections so far.
"""

import os
import sys
import time

if os.environ.get("BENCH_SWITCH_INTERVAL"):
    sys.setswitchinterval(float(os.environ["BENCH_SWITCH_INTERVAL"]))

if os.environ.get("BENCH_STALL_MS"):
    import asyncio
    import threading
    import traceback

    _limit = float(os.environ["BENCH_STALL_MS"]) / 1000
    _frames = int(os.environ.get("BENCH_STALL_FRAMES", "14"))
    _main = threading.main_thread()
    _schedstat = f"/proc/self/task/{_main.native_id}/schedstat"
    _beat = [time.monotonic()]
    _seen = set()

    def _tick(loop):
        _beat[0] = time.monotonic()
        loop.call_later(0.002, _tick, loop)

    def _sched():
        """The main thread's ns on a CPU and ns runnable but waiting for one."""
        with open(_schedstat) as handle:
            on_cpu, waiting, _ = handle.read().split()
        return int(on_cpu), int(waiting)

    def _report_start(late):
        frame = sys._current_frames().get(_main.ident)
        stack = "".join(traceback.format_stack(frame)[-_frames:]) if frame else "?\n"
        where = tuple(line.strip() for line in stack.splitlines()[-2:])
        sys.stderr.write(f"STALL >= {late * 1000:.0f} ms at {' | '.join(where)}\n")
        if where not in _seen:
            _seen.add(where)
            sys.stderr.write(stack)

    def _watch():
        stalled_since = None
        before = _sched()
        while True:
            time.sleep(0.005)
            late = time.monotonic() - _beat[0]
            if stalled_since is None:
                if late < _limit:
                    before = _sched()
                else:
                    stalled_since = _beat[0]
                    _report_start(late)
            elif late < _limit:
                on_cpu, waiting = (a - b for a, b in zip(_sched(), before, strict=True))
                sys.stderr.write(
                    f"STALL ended after {(_beat[0] - stalled_since) * 1000:.0f} ms: main thread "
                    f"on a CPU {on_cpu / 1e6:.0f} ms, runnable waiting {waiting / 1e6:.0f} ms\n"
                )
                stalled_since = None

    _original_run_forever = asyncio.BaseEventLoop.run_forever

    def _run_forever(self):
        self.call_soon(_tick, self)
        threading.Thread(target=_watch, daemon=True, name="stall-watch").start()
        return _original_run_forever(self)

    asyncio.BaseEventLoop.run_forever = _run_forever

if os.environ.get("BENCH_GC_MS"):
    import gc
    import traceback

    _gc_limit = float(os.environ["BENCH_GC_MS"]) / 1000
    _gc_started = [0.0]
    _gc_totals = {}

    def _gc_timer(phase, info):
        if phase == "start":
            _gc_started[0] = time.perf_counter()
            return
        took = time.perf_counter() - _gc_started[0]
        generation = info["generation"]
        count, total = _gc_totals.get(generation, (0, 0.0))
        _gc_totals[generation] = (count + 1, total + took)
        if took >= _gc_limit:
            totals = {g: f"{n} in {t * 1000:.0f} ms" for g, (n, t) in sorted(_gc_totals.items())}
            sys.stderr.write(
                f"GC generation {generation} took {took * 1000:.1f} ms "
                f"(collected {info['collected']}; so far {totals})\n"
            )
            if generation == 2:  # where the oldest generation's walk was started from
                sys.stderr.write("".join(traceback.format_stack()[-8:-1]))

    gc.callbacks.append(_gc_timer)
