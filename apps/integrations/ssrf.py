"""The SSRF guard of outgoing webhooks: which URLs the server may POST to.

A target is `http` or `https`, its host name resolves (here, at delivery time, every time) and
every address it resolves to is allowed: a public address when WEBHOOK_ALLOWED_HOSTS holds
`*`, or a host name / address / network listed there explicitly (the only way to reach a
private, loopback, link-local or otherwise non-public address). The delivery then connects to
the checked address itself (apps.integrations.http), so a second lookup cannot answer
differently (DNS rebinding), and no redirect is ever followed.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import NamedTuple
from urllib.parse import urlsplit

from django.conf import settings

from apps.core.errors import ServiceError

SCHEMES = {"http": 80, "https": 443}


class Refused(ServiceError):
    """A target the guard refuses (`invalid` at creation; a delivery's last_error later)."""

    def __init__(self, message: str):
        super().__init__("invalid", message, field="url")


class Target(NamedTuple):
    scheme: str
    host: str  # as in the URL (the Host header and TLS server name)
    port: int
    path: str  # path and query
    address: str  # the checked IP to connect to


def parse(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of a webhook URL, or Refused."""
    if not isinstance(url, str) or len(url) > 2000:
        raise Refused("url must be a string of at most 2000 characters")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise Refused("url is not a valid URL") from None
    if parts.scheme not in SCHEMES:
        raise Refused("url must be http:// or https://")
    if not parts.hostname or parts.username or parts.password:
        raise Refused("url needs a host (and no user name or password)")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if any(c in path for c in "\r\n ") or any(ord(c) < 0x20 for c in path):
        raise Refused("url holds spaces or control characters")
    return parts.scheme, parts.hostname.lower().rstrip("."), port or SCHEMES[parts.scheme], path


def _listed(host: str, address) -> bool:
    """Named in WEBHOOK_ALLOWED_HOSTS explicitly (by host, domain, address or network)."""
    for entry in settings.WEBHOOK_ALLOWED_HOSTS:
        entry = entry.strip().lower()
        if not entry or entry == "*":
            continue
        if entry.startswith("."):
            if host == entry[1:] or host.endswith(entry):
                return True
            continue
        try:
            network = ipaddress.ip_network(entry.strip("[]"), strict=False)
        except ValueError:
            if host == entry:
                return True
            continue
        if address is not None and address in network:
            return True
    return False


def _public(address) -> bool:
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def check_address(host: str, address: str) -> None:
    """Refused unless `address` (one resolution of `host`) may be connected to."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if _listed(host, ip):
        return
    if not _public(ip):
        raise Refused(
            f"{host} resolves to {ip}, a private, loopback or link-local address "
            "(not in WEBHOOK_ALLOWED_HOSTS)"
        )
    if "*" not in settings.WEBHOOK_ALLOWED_HOSTS:
        raise Refused(f"{host} is not in WEBHOOK_ALLOWED_HOSTS")


def choose(host: str, addresses: list[str]) -> str:
    """The address to connect to: every one the name resolves to must pass (a name with one
    public and one private address is refused, whichever a client would pick)."""
    if not addresses:
        raise Refused(f"{host} does not resolve")
    for address in addresses:
        check_address(host, address)
    return addresses[0]


def _addresses(infos) -> list[str]:
    seen = []
    for info in infos:
        address = info[4][0]
        if address not in seen:
            seen.append(address)
    return seen


def resolve(url: str) -> Target:
    """The URL's checked target (a blocking DNS lookup), or Refused."""
    scheme, host, port, path = parse(url)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise Refused(f"{host} does not resolve ({exc})") from None
    return Target(scheme, host, port, path, choose(host, _addresses(infos)))


async def aresolve(url: str) -> Target:
    """resolve() on the running loop (its resolver thread)."""
    import asyncio

    scheme, host, port, path = parse(url)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise Refused(f"{host} does not resolve ({exc})") from None
    return Target(scheme, host, port, path, choose(host, _addresses(infos)))
