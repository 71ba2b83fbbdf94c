"""Sampling the server with py-spy while a step runs, and the top entries of the profile.

py-spy (requirements/dev.txt) attaches to the running server process by pid, so the server
runs unmodified. `Profiler(pid, seconds, path)` records collapsed stacks ("raw" format) into
`path`, sampling only the thread holding the GIL (where the Python CPU goes), or with
`wall=True` every thread, idle ones too (where the time goes); `top(path)` ranks functions by
own samples and by total samples (inclusive).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path


def py_spy() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


class Profiler:
    def __init__(
        self, pid: int, seconds: float, path: Path, *, rate: int = 200, wall: bool = False
    ):
        self.path = Path(path)
        self.proc = None
        binary = py_spy()
        if binary is None:
            print("py-spy is not installed: no profile (pip install -r requirements/dev.txt)")
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                binary,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(max(1, int(seconds))),
                "--rate",
                str(rate),
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(self.path),
            ]
            # wall: every thread, waiting included (where the time goes, not the CPU)
            + (["--idle", "--threads"] if wall else ["--gil"]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def wait(self, timeout: float = 30.0) -> Path | None:
        if self.proc is None:
            return None
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None
        if self.proc.returncode != 0 or not self.path.exists():
            print(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
            return None
        return self.path


def parse_collapsed(lines) -> tuple[Counter, Counter, int]:
    """(own samples, inclusive samples, total samples) per frame from collapsed stacks."""
    own: Counter = Counter()
    inclusive: Counter = Counter()
    total = 0
    for line in lines:
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        try:
            samples = int(count)
        except ValueError:
            continue
        frames = [_short(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    return own, inclusive, total


def _short(frame: str) -> str:
    """'handle (apps/x.py:12)' -> 'handle (apps/x.py)': a function, whatever the line."""
    frame = frame.replace(str(Path(sys.prefix)) + "/lib/python3.11/site-packages/", "")
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0].rstrip(")")
    for marker in ("/site-packages/", "/lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})" if path else name


def top(path: Path, count: int = 15) -> str:
    """A plain-text table of the top `count` frames by own and by inclusive samples."""
    with open(path) as handle:
        own, inclusive, total = parse_collapsed(handle)
    if not total:
        return "(no samples)"
    lines = [f"{total} samples", "", "own%   function (file)"]
    lines += [f"{100 * n / total:5.1f}  {frame}" for frame, n in own.most_common(count)]
    lines += ["", "total% function (file)"]
    lines += [f"{100 * n / total:5.1f}  {frame}" for frame, n in inclusive.most_common(count)]
    return "\n".join(lines)


def by_app(path: Path, count: int = 15, *, thread: str = "", within: str = "") -> str:
    """Samples grouped by (innermost project frame, leaf function): which line of our code the
    time is spent under, and doing what (a database wait, a lock, a socket write). `thread`
    keeps stacks of threads whose name contains it ("MainThread", "chat-db"); `within` keeps
    stacks that pass through that function ("message_send")."""
    groups: Counter = Counter()
    total = 0
    with open(path) as handle:
        for line in handle:
            stack, _, samples = line.rstrip("\n").rpartition(" ")
            if not stack or not samples.isdigit():
                continue
            frames = stack.split(";")
            if thread and thread not in frames[0]:
                continue
            if within and within not in stack:
                continue
            ours = [
                f
                for f in frames[1:]
                if f.split(" (", 1)[-1].startswith(("apps/", "chatproject/", "bench/"))
            ]
            key = f"{ours[-1] if ours else '(no project frame)'}  ->  {_short(frames[-1])}"
            groups[key] += int(samples)
            total += int(samples)
    if not total:
        return "(no samples)"
    lines = [
        f"{total} samples"
        + (f" in threads '{thread}'" if thread else "")
        + (f" through {within}" if within else ""),
        "",
        "%      project frame  ->  leaf",
    ]
    lines += [f"{100 * n / total:5.1f}  {key}" for key, n in groups.most_common(count)]
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Rank a saved py-spy profile (raw format).")
    parser.add_argument("path", type=Path)
    parser.add_argument("count", type=int, nargs="?", default=15)
    parser.add_argument("--by-app", action="store_true", help="group by project frame and leaf")
    parser.add_argument("--thread", default="", help="only threads whose name contains this")
    parser.add_argument("--within", default="", help="only stacks through this function")
    args = parser.parse_args()
    if args.by_app:
        print(by_app(args.path, args.count, thread=args.thread, within=args.within))
    else:
        print(top(args.path, args.count))
