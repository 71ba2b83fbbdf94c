"""One HTTP/1.1 POST to a checked address (apps.integrations.ssrf), on asyncio streams.

Written here rather than taken from a client library because the guard needs three things
those make awkward together: connect to the address already checked (not resolve again),
still send the URL's host as Host and as the TLS server name (certificates verified against
it), and never follow a redirect (a 3xx is a failed delivery like any other non-2xx). One
request per connection (`Connection: close`); the whole exchange is bounded by `timeout`.
"""

from __future__ import annotations

import asyncio
import ssl

from .ssrf import Target

MAX_RESPONSE_BYTES = 64 * 1024  # of the answer we read (status line, headers, some body)
_tls = None


def _tls_context() -> ssl.SSLContext:
    global _tls
    if _tls is None:
        _tls = ssl.create_default_context()
    return _tls


class DeliveryFailed(Exception):
    pass


def _host_header(target: Target) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    default = 443 if target.scheme == "https" else 80
    return host if target.port == default else f"{host}:{target.port}"


async def post(target: Target, body: bytes, headers: dict[str, str], *, timeout: float) -> int:
    """POST `body`; the answer's status code. DeliveryFailed on a connection error, a timeout
    or an answer that is not HTTP."""
    try:
        return await asyncio.wait_for(_post(target, body, headers), timeout)
    except TimeoutError:
        raise DeliveryFailed(f"no answer within {timeout:g} s") from None
    except (OSError, ssl.SSLError) as exc:
        raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from None


async def _post(target: Target, body: bytes, headers: dict[str, str]) -> int:
    tls = target.scheme == "https"
    reader, writer = await asyncio.open_connection(
        target.address,
        target.port,
        ssl=_tls_context() if tls else None,
        server_hostname=target.host if tls else None,
    )
    try:
        lines = [
            f"POST {target.path} HTTP/1.1",
            f"Host: {_host_header(target)}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            "Connection: close",
            "User-Agent: chat-webhooks/1",
        ]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        status_line = await reader.readline()
        parts = status_line.decode("latin-1").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise DeliveryFailed(f"not an HTTP answer: {status_line[:80]!r}")
        return int(parts[1])
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass
