"""Run the ASGI app under daphne: `python -m chatproject.serve --port 8000`.

Two small hooks on top of daphne's own server:

- Each WebSocket scope carries `scope["extensions"]["chat.socket"]` (SocketExtension): the app
  writes text frames straight to the socket (one framing per socket, no per-socket task), and
  reads how much is still unsent, so a slow client is dropped instead of growing the Twisted
  write buffer without bound (daphne buffers without limit).
- Graceful shutdown: on SIGTERM (or SIGINT) the process stops accepting connections, closes every
  WebSocket with 1012 (service restart) so clients reconnect elsewhere and resume with `since`,
  lets in-flight requests finish, and exits within CHAT_SHUTDOWN_GRACE_SECONDS (plus ~1 s).
"""

import argparse
import logging
import os
import signal
import socket
import sys
import time

logger = logging.getLogger("chatproject.serve")


class SocketExtension:
    """What the application may do with its WebSocket directly (see the module docstring)."""

    __slots__ = ("protocol", "frames")

    def __init__(self, protocol):
        self.protocol = protocol
        self.frames = 0  # frames written since the write buffer was last seen empty

    def write(self, frame: bytes, count: bool = True) -> bool:
        """Send one complete WebSocket frame, built once for all sockets (see
        apps.messaging.realtime.text_frame): autobahn's per-message path costs tens of
        microseconds per socket. `count=False` for replies and replays: a burst the client
        asked for is not held against it, only live frames queued behind unsent data are."""
        protocol = self.protocol
        if protocol.state != protocol.STATE_OPEN:
            return False
        if count:
            self.frames = self.frames + 1 if self.unsent_bytes() else 1
        if protocol._perMessageCompress is None and protocol.send_state == protocol.SEND_STATE_GROUND:
            self.send_now(protocol.transport, frame)
        else:  # compression negotiated: let autobahn frame it
            from apps.messaging.realtime import frame_payload

            protocol.sendMessage(frame_payload(frame), False)
        return True

    def send_now(self, transport, frame: bytes) -> None:
        """Hand the frame to the kernel at once when nothing is queued before it.

        Twisted's write() queues and registers the socket for writability, then unregisters it
        after the write: two selector changes per frame per socket, the biggest part of a
        delivery's cost. A non-blocking send() on an idle plain-TCP socket skips both; what the
        kernel does not take (or any error) goes the normal way, so order and error handling
        stay Twisted's.
        """
        if (
            getattr(transport, "TLS", True)
            or not getattr(transport, "connected", False)
            or getattr(transport, "disconnecting", True)
            or self.unsent_bytes()
        ):
            transport.write(frame)
            return
        try:
            sent = transport.socket.send(frame)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            transport.write(frame)  # Twisted finds the error and closes the connection
            return
        if sent < len(frame):
            transport.write(frame[sent:])

    def unsent_bytes(self) -> int:
        transport = self.protocol.transport
        if transport is None:
            return 0
        buffered = getattr(transport, "dataBuffer", b"")
        return (
            len(buffered) - getattr(transport, "offset", 0) + getattr(transport, "_tempDataLen", 0)
        )

    def backlog(self) -> tuple[int, int]:
        """(frames, bytes) not yet handed to the kernel."""
        return self.frames, self.unsent_bytes()

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


def build_server(host, port, *, application):
    from daphne.endpoints import build_endpoint_description_strings
    from daphne.server import Server
    from daphne.ws_protocol import WebSocketProtocol
    from django.conf import settings
    from twisted.internet import reactor

    # Kernel send buffer per WebSocket (0: the kernel's autotuning, up to tcp_wmem's maximum).
    sndbuf = getattr(settings, "CHAT_SOCKET_SEND_BUFFER", 0)

    class ChatServer(Server):
        def run(self):
            self.ports = []
            super().run()

        def listen_success(self, port):
            self.ports.append(port)
            super().listen_success(port)

        # daphne walks every connection each second (application_checker) and every two
        # seconds (timeout_checker); with thousands of idle sockets that alone took a fifth of
        # a core. Every few seconds is enough: they reap finished applications and time out
        # stalled handshakes. During shutdown they run every time.
        def application_checker(self):
            self._app_checks = getattr(self, "_app_checks", 0) + 1
            if self._app_checks % 5 == 0 or getattr(self, "stopping", False):
                return super().application_checker()  # schedules the next call in 1 s
            reactor.callLater(1, self.application_checker)

        def timeout_checker(self):
            self._timeout_checks = getattr(self, "_timeout_checks", 0) + 1
            if self._timeout_checks % 3 == 0:
                return super().timeout_checker()  # schedules the next call in 2 s
            reactor.callLater(2, self.timeout_checker)

        def create_application(self, protocol, scope):
            if isinstance(protocol, WebSocketProtocol):
                scope.setdefault("extensions", {})["chat.socket"] = SocketExtension(protocol)
                if sndbuf:
                    handle = protocol.transport.getHandle()
                    handle.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            return super().create_application(protocol, scope)

    return ChatServer(
        application=application,
        endpoints=build_endpoint_description_strings(host=host, port=port),
        signal_handlers=False,
        proxy_forwarded_address_header="X-Forwarded-For",
        proxy_forwarded_port_header="X-Forwarded-Port",
        proxy_forwarded_proto_header="X-Forwarded-Proto",
        # Frames above CHAT_MAX_FRAME_BYTES get a too_large error and the socket stays open;
        # far bigger ones are cut by the WebSocket layer (close 1009).
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

    from apps.messaging import realtime

    if getattr(server, "stopping", False):
        return
    server.stopping = True
    deadline = time.monotonic() + grace
    logger.info("SIGTERM: closing %d connections", len(server.connections))
    for port in getattr(server, "ports", []):
        port.stopListening()
    asyncio.ensure_future(realtime.shutdown(realtime.CLOSE_RESTART))

    def backstop():
        # Sockets the hub does not know yet (still authenticating) are closed here.
        for protocol in list(server.connections):
            if isinstance(protocol, WebSocketProtocol) and protocol.state == protocol.STATE_OPEN:
                protocol.sendCloseFrame(code=realtime.CLOSE_RESTART, isReply=False)

    def check():
        busy = [
            p for p, details in server.connections.items()
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


def main(argv=None):
    parser = argparse.ArgumentParser(description="Serve the chat ASGI app with daphne.")
    parser.add_argument("--bind", default=os.environ.get("BIND", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")
    import daphne.server  # noqa: F401  installs the asyncio Twisted reactor first

    from chatproject.asgi import application
    from django.conf import settings

    server = build_server(args.bind, args.port, application=application)

    def on_signal(signum, frame):
        from twisted.internet import reactor

        reactor.callFromThread(graceful_shutdown, server, settings.CHAT_SHUTDOWN_GRACE_SECONDS)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logger.info("serving on %s:%s", args.bind, args.port)
    server.run()
    return 1 if server.abort_start else 0


if __name__ == "__main__":
    sys.exit(main())
