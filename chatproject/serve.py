"""Run the ASGI app under daphne: `python -m chatproject.serve --port 8000`.

Two small hooks on top of daphne's own server:

- Each WebSocket scope carries `scope["extensions"]["chat.socket"]` (SocketExtension): the app
  writes text frames straight to the socket (one framing per socket, no per-socket task), and
  reads how much is still unsent, so a slow client is dropped instead of growing the Twisted
  write buffer without bound (daphne buffers without limit).
- The app may take a text frame in the reactor (`SocketExtension.on_text`, used for `ping`
  and `message.send`): no ASGI queue, no task wake-up, no JSON reply built per socket (idle
  sockets ping every heartbeat / 2: at 10,000 sockets that path alone was several percent of
  a core). The whole text frames at the start of a read are unmasked here, without
  autobahn's per-frame machinery; whatever the app does not take goes to autobahn.
- daphne's periodic walk over every connection (application_checker) is replaced by a check of
  the connections that have news (an application that ended, a connection that closed).
- HTTP requests have deadlines (ChatHTTPChannel): the request line and headers must arrive
  within CHAT_HTTP_HEADER_TIMEOUT_SECONDS of the connection (or of the previous response, on a
  kept-alive connection), the body within CHAT_HTTP_BODY_TIMEOUT_SECONDS of the headers; else
  408 and the connection is closed. Twisted's own idle timeout restarts on every byte, so a
  client sending a byte every few seconds (slowloris) held a connection forever. A WebSocket is
  past both deadlines once upgraded, so its lifetime is not touched.
- No proxy header is given to daphne: `scope["client"]` is the TCP peer and `scope["scheme"]`
  the socket's; apps.core.clientaddr decides what to believe of X-Forwarded-For and
  X-Forwarded-Proto (NUM_PROXIES, BEHIND_TLS_PROXY).
- Graceful shutdown: on SIGTERM (or SIGINT) the process stops accepting connections, closes every
  WebSocket with 1012 (service restart) so clients reconnect elsewhere and resume with `since`,
  lets in-flight requests finish, and exits within CHAT_SHUTDOWN_GRACE_SECONDS (plus ~1 s).

Why ~540 lines in one module: it is the one place that subclasses daphne, autobahn and Twisted
(tests/chatproject/test_serve_pins.py pins each method it relies on), and those hooks share
the server object; the several-worker supervisor is its own module (chatproject/workers.py).
"""

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import time

from apps.core.wsframe import frame_payload

logger = logging.getLogger("chatproject.serve")


class SocketExtension:
    """What the application may do with its WebSocket directly (see the module docstring)."""

    __slots__ = ("protocol", "frames", "written", "on_text", "plain")

    def __init__(self, protocol):
        self.protocol = protocol
        self.frames = 0  # frames written since the write buffer was last seen empty
        self.written = 0  # bytes ever written (minus unsent_bytes(): what the kernel took)
        # Set by the app: called in the reactor with a text frame's payload (bytes) when the
        # app has nothing queued from this socket; returns True if it answered the frame
        # itself, else the frame goes the ASGI way (websocket.receive).
        self.on_text = None
        # Whether the transport is Twisted's plain TCP one (learned at the first write): its
        # buffer attributes are then read directly, and a frame may go straight to send().
        self.plain = None

    def send(self, frames: list[bytes]) -> tuple[int, int] | None:
        """Write complete WebSocket frames, built once for all sockets (see
        apps.core.wsframe.text_frame; autobahn's per-message path costs tens of microseconds
        per socket), in order, as one write, and return the backlog after it (see backlog());
        None if the socket is not open (nothing written). Every frame counts in backlog(),
        replies and replays too. The delivery hot path: one call per socket per batch of
        events, the buffer read once."""
        protocol = self.protocol
        if protocol.state != protocol.STATE_OPEN:
            return None
        transport = protocol.transport
        plain = self.plain
        if plain is None:
            plain = self.plain = not getattr(transport, "TLS", True)
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        unsent = self.unsent_bytes()
        count = self.frames = self.frames + len(frames) if unsent else len(frames)
        self.written += len(data)
        if (
            protocol._perMessageCompress is not None
            or protocol.send_state != protocol.SEND_STATE_GROUND
        ):
            for frame in frames:  # compression: autobahn frames each message
                protocol.sendMessage(frame_payload(frame), False)
            return count, self.unsent_bytes()
        if unsent or not plain or not transport.connected or transport.disconnecting:
            transport.write(data)
            return count, self.unsent_bytes()
        if self.send_now(transport, data):
            return count, self.unsent_bytes()
        return count, 0

    def send_now(self, transport, frame: bytes) -> bool:
        """Hand the frame to the kernel at once (the caller saw nothing queued before it);
        True if part of it went to Twisted's buffer instead.

        Twisted's write() queues and registers the socket for writability, then unregisters it
        after the write: two selector changes per frame per socket, the biggest part of a
        delivery's cost. A non-blocking send() on an idle plain-TCP socket skips both; what the
        kernel does not take (or any error) goes the normal way, so order and error handling
        stay Twisted's.
        """
        try:
            sent = transport.socket.send(frame)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            transport.write(frame)  # Twisted finds the error and closes the connection
            return True
        if sent < len(frame):
            transport.write(frame[sent:])
            return True
        return False

    def unsent_bytes(self) -> int:
        transport = self.protocol.transport
        if transport is None:
            return 0
        if self.plain:  # Twisted's TCP transport (abstract.FileDescriptor) has all three
            return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
        buffered = getattr(transport, "dataBuffer", b"")
        return (
            len(buffered) - getattr(transport, "offset", 0) + getattr(transport, "_tempDataLen", 0)
        )

    def backlog(self) -> tuple[int, int]:
        """(frames, bytes) not yet handed to the kernel."""
        return self.frames, self.unsent_bytes()

    def flushed(self) -> int:
        """Bytes of written frames the kernel has taken."""
        return self.written - self.unsent_bytes()

    def close(self, code: int) -> None:
        """Start the closing handshake with any valid code (daphne's ASGI close goes through
        autobahn's sendClose, which refuses 1012 and 1013)."""
        protocol = self.protocol
        if protocol.state == protocol.STATE_OPEN:
            protocol.sendCloseFrame(code=code, isReply=False)

    def abort(self) -> None:
        transport = self.protocol.transport
        if transport is not None:
            transport.abortConnection()


def whole_text_frames(data: bytes, take) -> int:
    """Offer each whole client text frame at the start of `data` (FIN, no RSV bits, masked,
    1 to 65,535 bytes in its shortest length encoding) to `take` (its unmasked payload ->
    whether it took it), while it takes them; the offset of the first byte not taken: a
    partial frame, any other frame (binary, control, a fragment, unmasked, empty, longer,
    a length not in its shortest form) and all that follows are left to autobahn."""
    offset, end = 0, len(data)
    while end - offset >= 6 and data[offset] == 0x81:  # FIN, no RSV bits, text
        second = data[offset + 1]
        size = second & 0x7F
        if not second & 0x80 or not size or size == 127:  # unmasked, empty, 64-bit length
            break
        head = 6
        if size == 126:
            if end - offset < 8:
                break
            size = int.from_bytes(data[offset + 2 : offset + 4], "big")
            if size < 126:  # not the shortest encoding: autobahn's to refuse
                break
            head = 8
        stop = offset + head + size
        if stop > end:
            break
        mask = data[offset + head - 4 : offset + head] * ((size + 3) // 4)
        payload = (
            int.from_bytes(data[offset + head : stop], "big") ^ int.from_bytes(mask[:size], "big")
        ).to_bytes(size, "big")
        if not take(payload):
            break
        offset = stop
    return offset


REQUEST_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 16\r\n\r\nrequest timeout\n"
)


def http_channel_class(*, header_timeout: float, body_timeout: float):
    """Twisted's HTTPChannel with the two deadlines of the module docstring."""
    from twisted.web.http import HTTPChannel

    class ChatHTTPChannel(HTTPChannel):
        deadline = None  # the pending IDelayedCall, while a request is being received
        started = False  # a byte of the awaited request arrived (else an idle keep-alive)

        def arm(self, seconds):
            self.disarm()
            self.started = False
            if seconds and seconds > 0:
                self.deadline = self.callLater(seconds, self.expired)

        def disarm(self):
            if self.deadline is not None:
                if self.deadline.active():
                    self.deadline.cancel()
                self.deadline = None

        def connectionMade(self):
            super().connectionMade()
            self.arm(header_timeout)

        def dataReceived(self, data):
            self.started = True
            super().dataReceived(data)

        def allHeadersReceived(self):
            super().allHeadersReceived()
            self.arm(body_timeout)
            self.started = True

        def allContentReceived(self):
            # Whole: from here it is the application's time (daphne's http_timeout stays unset,
            # so a long streamed response is not cut).
            self.disarm()
            super().allContentReceived()

        def requestDone(self, request):
            if self.persistent:
                # Armed first: the next request may already be buffered, and is parsed by the
                # call below (re-arming for its body, or disarming once it is whole).
                self.arm(header_timeout)
            super().requestDone(request)

        def connectionLost(self, reason):
            self.disarm()
            super().connectionLost(reason)

        def expired(self):
            self.deadline = None
            transport = self.transport
            if transport is None or getattr(transport, "protocol", self) is not self:
                return  # handed over to a WebSocket meanwhile
            if self.started:  # an idle kept-alive connection is closed without a word
                transport.write(REQUEST_TIMEOUT_RESPONSE)
            self.timeoutConnection()  # close; abort if the client does not let it go

    return ChatHTTPChannel


def build_server(host, port, *, application, fd=None):
    """daphne's server with the hooks above, listening on host:port, or on the inherited
    listening socket `fd` (a worker of chatproject.workers: the supervisor bound it)."""
    from daphne.endpoints import build_endpoint_description_strings
    from daphne.server import Server
    from daphne.ws_protocol import WebSocketProtocol
    from django.conf import settings
    from twisted.internet import reactor

    http_channel = http_channel_class(
        header_timeout=settings.CHAT_HTTP_HEADER_TIMEOUT_SECONDS,
        body_timeout=settings.CHAT_HTTP_BODY_TIMEOUT_SECONDS,
    )

    OPEN = WebSocketProtocol.STATE_OPEN
    # Frames received and not yet handled by the app, per socket: at this many the socket is
    # no longer read (TCP backpressure) until the app has taken half of them.
    inbound_limit = max(1, settings.CHAT_INBOUND_QUEUE_LIMIT)
    # Kernel send buffer per WebSocket (0: the kernel's autotuning, up to tcp_wmem's maximum).
    sndbuf = settings.CHAT_SOCKET_SEND_BUFFER

    class ChatWebSocketProtocol(WebSocketProtocol):
        chat_socket = None  # the SocketExtension, once the application exists

        def dataReceived(self, data):
            # The whole, masked text frames at the start of a read (an idle client's ping, a
            # message.send), with nothing else in progress, go to the app's on_text without
            # autobahn's frame machinery (a masker object and a dozen calls per frame); from
            # the first frame the app does not take, or anything else (a partial frame,
            # control frames, fragments, a long frame), autobahn parses the rest as usual.
            # (autobahn's own dataReceived also formats a debug line with terminal colours
            # for every read before the log drops it: skipped.)
            if (
                self.state == self.STATE_OPEN
                and not self.data
                and self.current_frame is None
                and not self.inside_message
                and self.autoPingTimeoutCall is None  # autobahn cancels it on data frames
            ):
                taken = whole_text_frames(data, self.text_now)
                if taken == len(data):
                    return
                if taken:
                    data = data[taken:]
            self._dataReceived(data)

        def onMessage(self, payload, isBinary):
            if not isBinary and self.text_now(payload):
                return
            super().onMessage(payload, isBinary)
            if not self.muted and self.application_queue.qsize() >= inbound_limit:
                self.pause_reading()

        paused = False

        def pause_reading(self):
            """Stop reading the socket while its frames wait for the app (daphne's queue is
            unbounded); reading resumes when half of them are handled."""
            if not self.paused and self.transport is not None:
                self.paused = True
                self.transport.pauseProducing()
                reactor.callLater(0.02, self.resume_when_drained)

        def resume_when_drained(self):
            if self.transport is None or self.state == self.STATE_CLOSED:
                return
            if self.application_queue.qsize() > inbound_limit // 2:
                reactor.callLater(0.02, self.resume_when_drained)
                return
            self.paused = False
            self.transport.resumeProducing()

        def text_now(self, payload: bytes) -> bool:
            """Offer a text frame to the app's on_text, if it has one and nothing from this
            socket is queued for it (frames are answered in arrival order)."""
            ext = self.chat_socket
            if (
                ext is None
                or ext.on_text is None
                or self.muted
                or not self.application_queue.empty()
            ):
                return False
            self.last_ping = time.time()  # what daphne's onMessage records (auto-ping)
            return ext.on_text(payload)

    class ChatServer(Server):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if fd is not None:
                # daphne's constructor insists on an endpoint string; a worker listens on the
                # supervisor's socket instead, adopted when run() makes the HTTP factory.
                self.endpoints = []
            self.ports = []
            self.marked = set()  # connections to look at in the next application check
            self._app_checks = self._timeout_checks = 0

        @property
        def http_factory(self):
            return self.__dict__["http_factory"]

        @http_factory.setter
        def http_factory(self, factory):  # daphne's run() makes the factory
            factory.protocol = http_channel  # plain HTTP/1.1 (the endpoints are plain TCP)
            self.__dict__["http_factory"] = factory
            if fd is not None:
                os.set_blocking(fd, False)  # Twisted requires it of an adopted socket
                probe = socket.socket(fileno=os.dup(fd))
                family = probe.family
                probe.close()
                self.listen_success(reactor.adoptStreamPort(fd, family, factory))

        @property
        def ws_factory(self):
            return self.__dict__["ws_factory"]

        @ws_factory.setter
        def ws_factory(self, factory):  # daphne's run() makes the factory
            factory.protocol = ChatWebSocketProtocol
            # A frame over the size limit (or any protocol error) gets a close frame (1009,
            # 1002) instead of a TCP reset the client cannot tell from a crash.
            factory.failByDrop = False
            self.__dict__["ws_factory"] = factory

        def listen_success(self, port):
            self.ports.append(port)
            super().listen_success(port)

        # daphne walks every connection each second (application_checker): with 10,000 idle
        # sockets that walk was most of the idle CPU. Only connections with news need it: an
        # application that ended or a connection that closed marks its connection, and the
        # check (still each second) applies daphne's rules to the marked ones. daphne's full
        # walk still runs every 5 minutes, and every second during shutdown.
        def create_application(self, protocol, scope):
            if isinstance(protocol, WebSocketProtocol):
                ext = SocketExtension(protocol)
                scope.setdefault("extensions", {})["chat.socket"] = ext
                protocol.chat_socket = ext
                if sndbuf:
                    handle = protocol.transport.getHandle()
                    handle.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            queue = super().create_application(protocol, scope)
            instance = self.connections.get(protocol, {}).get("application_instance")
            if instance is not None:
                instance.add_done_callback(lambda _: self.marked.add(protocol))
            return queue

        def protocol_disconnected(self, protocol):
            super().protocol_disconnected(protocol)
            self.marked.add(protocol)

        def application_checker(self):
            self._app_checks += 1
            if self._app_checks % 300 == 0 or getattr(self, "stopping", False):
                self.marked.clear()
                return super().application_checker()  # schedules the next call in 1 s
            marked, self.marked = self.marked, set()
            for protocol in marked:
                details = self.connections.get(protocol)
                if details is not None and self.check_application(protocol, details):
                    self.marked.add(protocol)  # closed, application still running: look again
            reactor.callLater(1, self.application_checker)

        def check_application(self, protocol, details) -> bool:
            """daphne's application_checker rules for one connection; True while it is closed
            and its application still runs (it is cancelled after application_close_timeout)."""
            disconnected = details.get("disconnected")
            instance = details.get("application_instance")
            if disconnected and time.time() - disconnected > self.application_close_timeout:
                if instance is not None and not instance.done():
                    logger.warning(
                        "application instance %r for connection %r took too long to "
                        "shut down and was cancelled",
                        instance,
                        protocol,
                    )
                    instance.cancel()
            if instance is not None and instance.done():
                try:
                    exception = instance.exception()
                except asyncio.CancelledError:
                    exception = None
                if isinstance(exception, KeyboardInterrupt):
                    self.stop()
                elif exception is not None:
                    logger.error("Exception inside application: %s", exception, exc_info=exception)
                    if not disconnected:
                        protocol.handle_exception(exception)
                del details["application_instance"]
                instance = None
            if instance is None and disconnected:
                del self.connections[protocol]
                return False
            return bool(disconnected)

        # daphne's timeout walk (handshake timeouts, auto-ping, WebSocket age) every 10 s
        # instead of 2 s, and its per-connection check only where it can do something: not
        # for an open WebSocket younger than websocket_timeout that spoke within ping_interval.
        def timeout_checker(self):
            self._timeout_checks += 1
            if self._timeout_checks % 5 == 0:
                now = time.time()
                spoke_after = now - self.ping_interval
                opened_after = now - self.websocket_timeout if self.websocket_timeout >= 0 else 0
                for protocol in list(self.connections):
                    if not (
                        isinstance(protocol, WebSocketProtocol)
                        and protocol.state == OPEN
                        and protocol.last_ping >= spoke_after
                        and protocol.socket_opened >= opened_after
                    ):
                        protocol.check_timeouts()
            reactor.callLater(2, self.timeout_checker)

    return ChatServer(
        application=application,
        endpoints=build_endpoint_description_strings(host=host or "127.0.0.1", port=port or 0),
        signal_handlers=False,
        # No proxy_forwarded_* headers: daphne would take the first, client-written entry of
        # X-Forwarded-For as the address (see apps.core.clientaddr).
        # Frames above CHAT_MAX_FRAME_BYTES get a too_large error and the socket stays open;
        # far bigger ones are refused by the WebSocket layer with close 1009.
        websocket_max_message_size=max(1024 * 1024, 4 * settings.CHAT_MAX_FRAME_BYTES),
        websocket_max_frame_size=max(1024 * 1024, 4 * settings.CHAT_MAX_FRAME_BYTES),
        verbosity=int(os.environ.get("DAPHNE_VERBOSITY", "1")),
        action_logger=None,
    )


def graceful_shutdown(server, grace: float):
    """Stop listening, close WebSockets with 1012, stop the reactor when all are gone."""
    import asyncio

    from daphne.ws_protocol import WebSocketProtocol
    from twisted.internet import reactor

    from apps.messaging import hub
    from apps.messaging.connection import CLOSE_RESTART

    if getattr(server, "stopping", False):
        return
    server.stopping = True
    deadline = time.monotonic() + grace
    logger.info("SIGTERM: closing %d connections", len(server.connections))
    for port in getattr(server, "ports", []):
        port.stopListening()
    asyncio.ensure_future(hub.shutdown(CLOSE_RESTART))

    def backstop():
        # Sockets the hub does not know yet (still authenticating) are closed here.
        for protocol in list(server.connections):
            if isinstance(protocol, WebSocketProtocol) and protocol.state == protocol.STATE_OPEN:
                protocol.sendCloseFrame(code=CLOSE_RESTART, isReply=False)

    def check():
        busy = [
            p
            for p, details in server.connections.items()
            if "disconnected" not in details
            and (isinstance(p, WebSocketProtocol) or details.get("application_instance"))
        ]
        if not busy or time.monotonic() >= deadline:
            if busy:
                logger.warning("shutdown grace over; %d connections still open", len(busy))
            reactor.stop()
            return
        reactor.callLater(0.05, check)

    reactor.callLater(0.2, backstop)
    reactor.callLater(0.05, check)


# Collections of the next generations, counted in collections of the one below: the oldest
# is walked after 20,000 × 50 × 100 allocations (minutes at full load), not every few seconds,
# a pause of tens of ms in a process holding thousands of sockets' objects.
OLDER_GC_THRESHOLDS = (50, 100)


def warm_up() -> None:
    """Do at start what Django does lazily on the first request: import the URLconf (the REST
    API, drf-spectacular, DRF's test helpers it imports, the admin) and compile its patterns.
    That was 120-150 ms on the event loop at the first HTTP request, a metrics scrape
    say, after the process was already serving: a stall in every open socket's latency
    (bench/tuning's stall watch found it). Done before tune_gc, so these objects are frozen
    with the rest of start-up's.

    Also redis-py's version, which every new Redis connection reads from the package metadata
    (importlib.metadata): the first read, at the first connection a pool opens under load,
    took 60 ms on the loop (the metadata machinery's imports and a scan of site-packages)."""
    from django.urls import get_resolver
    from redis.utils import get_lib_version

    get_resolver().reverse_dict  # noqa: B018 - populating it imports and compiles everything
    get_lib_version()


def tune_gc(threshold: int) -> None:
    """Garbage collection for a long-running server: the objects of start-up (Django, the app)
    move to the permanent generation, so a full collection no longer walks them; with
    `threshold` > 0 the youngest generation is collected after that many allocations instead
    of CPython's 700 (each collection is a pause on the event loop, in every socket's latency).
    Reference counting frees almost everything; the collector is only for cycles."""
    import gc

    gc.collect()
    gc.freeze()
    if threshold > 0:
        gc.set_threshold(threshold, *OLDER_GC_THRESHOLDS)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Serve the chat ASGI app with daphne.")
    parser.add_argument("--bind", default=os.environ.get("BIND", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument(
        "--workers",
        default=None,
        help="server processes on the port (default: CHAT_WORKERS, else one per core; "
        "1 with the in-memory channel layer)",
    )
    parser.add_argument("--fd", type=int, default=None, help=argparse.SUPPRESS)  # a worker's
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")
    if args.fd is None:
        from chatproject import workers

        try:
            count = workers.worker_count(args.workers)
        except workers.WorkersRefused as exc:
            parser.error(str(exc))  # exit code 2 with the reason
        if count > 1:
            from django.conf import settings

            logging.basicConfig(level=logging.INFO)
            return workers.supervise(
                args.bind, args.port, count, grace=settings.CHAT_SHUTDOWN_GRACE_SECONDS
            )
    import daphne.server  # noqa: F401  installs the asyncio Twisted reactor first
    from django.conf import settings

    from chatproject.asgi import application

    warm_up()
    tune_gc(settings.CHAT_GC_THRESHOLD)
    server = build_server(args.bind, args.port, application=application, fd=args.fd)

    def on_signal(signum, frame):
        from twisted.internet import reactor

        reactor.callFromThread(graceful_shutdown, server, settings.CHAT_SHUTDOWN_GRACE_SECONDS)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.fd is None:
        logger.info("serving on %s:%s", args.bind, args.port)
    server.run()
    return 1 if server.abort_start else 0


if __name__ == "__main__":
    sys.exit(main())
