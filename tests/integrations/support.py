"""A real HTTP receiver (http.server on a spare port, in a thread) and the webhook worker
(apps.integrations.delivery) running in a thread of its own, for the webhook tests."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    """Records every POST (headers, body, arrival time). `answer(n)` gives the status of the
    n-th request (0-based); 200 by default."""

    def __init__(self, answer=None):
        self.requests: list[dict] = []
        self.answer = answer or (lambda n: 200)
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    n = len(receiver.requests)
                    receiver.requests.append(
                        {
                            "headers": dict(self.headers),
                            "body": body,
                            "at": time.time(),
                            "path": self.path,
                        }
                    )
                status = receiver.answer(n)
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "http://127.0.0.1:1/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def ok_events(self) -> list[dict]:
        """Events of the requests answered 2xx, in arrival order."""
        with self.lock:
            return [
                e
                for n, r in enumerate(self.requests)
                if 200 <= self.answer(n) < 300
                for e in json.loads(r["body"])["events"]
            ]

    def wait(self, predicate, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return
            time.sleep(0.02)
        raise AssertionError(
            f"receiver: condition not met in {timeout} s ({len(self.requests)} requests)"
        )


def signature_ok(secret: str, request: dict) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), request["body"], hashlib.sha256).hexdigest()
    return hmac.compare_digest(request["headers"].get("X-Chat-Signature", ""), expected)


class BlackHole:
    """A port that accepts connections and never answers (a hung endpoint)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(100)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"

    def close(self):
        self.sock.close()


class Worker:
    """The delivery worker (what `manage.py deliver_webhooks` runs) in a background thread."""

    def __init__(self, **kwargs):
        from apps.integrations.delivery import Deliverer

        self.deliverer = Deliverer(**kwargs)
        self.ready = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self):
        self.loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        self.ready.set()
        await self.deliverer.run(self.stop)

    def start(self) -> Worker:
        self.thread.start()
        self.ready.wait(5)
        return self

    def close(self):
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(20)
