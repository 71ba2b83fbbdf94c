"""What chatproject/serve.py relies on in daphne, autobahn and Twisted, pinned to the versions
it was written against: the methods it overrides or calls (with their signatures), the
attributes it reads, and the bodies of the daphne/autobahn methods it re-implements.

When an upgrade fails one of these: read the new version's code named in the message against
chatproject/serve.py, change serve.py where they differ, then move the pin here. (Checked in a
child process: importing daphne.server installs its asyncio reactor.)
"""

import json
import subprocess

from tests.support.services import PYTHON, ROOT

PINNED = {"daphne": "4.2.3", "autobahn": "26.11.1", "Twisted": "26.10.0"}

# Methods serve.py overrides or calls: (module, class or None, name) -> parameter names.
SIGNATURES = {
    ("daphne.server", "Server", "__init__"): [
        "self",
        "application",
        "endpoints",
        "signal_handlers",
        "action_logger",
        "http_timeout",
        "request_buffer_size",
        "websocket_timeout",
        "websocket_connect_timeout",
        "ping_interval",
        "ping_timeout",
        "root_path",
        "proxy_forwarded_address_header",
        "proxy_forwarded_port_header",
        "proxy_forwarded_proto_header",
        "verbosity",
        "websocket_handshake_timeout",
        "websocket_max_message_size",
        "websocket_max_frame_size",
        "application_close_timeout",
        "ready_callable",
        "server_name",
    ],
    ("daphne.server", "Server", "listen_success"): ["self", "port"],
    ("daphne.server", "Server", "create_application"): ["self", "protocol", "scope"],
    ("daphne.server", "Server", "protocol_disconnected"): ["self", "protocol"],
    ("daphne.server", "Server", "protocol_connected"): ["self", "protocol"],
    ("daphne.server", "Server", "application_checker"): ["self"],
    ("daphne.server", "Server", "timeout_checker"): ["self"],
    ("daphne.server", "Server", "stop"): ["self"],
    ("daphne.server", "Server", "run"): ["self"],
    ("daphne.ws_protocol", "WebSocketProtocol", "onMessage"): ["self", "payload", "isBinary"],
    ("daphne.ws_protocol", "WebSocketProtocol", "check_timeouts"): ["self"],
    ("daphne.ws_protocol", "WebSocketProtocol", "handle_exception"): ["self", "exception"],
    ("daphne.ws_protocol", "WebSocketProtocol", "dataReceived"): ["self", "data"],
    ("daphne.ws_protocol", "WebSocketProtocol", "_dataReceived"): ["self", "data"],
    ("daphne.ws_protocol", "WebSocketProtocol", "sendMessage"): [
        "self",
        "payload",
        "isBinary",
        "fragmentSize",
        "sync",
        "doNotCompress",
    ],
    ("daphne.ws_protocol", "WebSocketProtocol", "sendCloseFrame"): [
        "self",
        "code",
        "reasonUtf8",
        "isReply",
    ],
    ("daphne.endpoints", None, "build_endpoint_description_strings"): [
        "host",
        "port",
        "unix_socket",
        "file_descriptor",
    ],
    ("twisted.web.http", "HTTPChannel", "connectionMade"): ["self"],
    ("twisted.web.http", "HTTPChannel", "dataReceived"): ["self", "data"],
    ("twisted.web.http", "HTTPChannel", "allHeadersReceived"): ["self"],
    ("twisted.web.http", "HTTPChannel", "allContentReceived"): ["self"],
    ("twisted.web.http", "HTTPChannel", "requestDone"): ["self", "request"],
    ("twisted.web.http", "HTTPChannel", "connectionLost"): ["self", "reason"],
    ("twisted.web.http", "HTTPChannel", "timeoutConnection"): ["self"],
    ("twisted.web.http", "HTTPChannel", "callLater"): ["self", "period", "func"],
    ("twisted.internet.tcp", "Connection", "abortConnection"): ["self"],
    ("twisted.internet.tcp", "Connection", "pauseProducing"): ["self"],
    ("twisted.internet.tcp", "Connection", "resumeProducing"): ["self"],
    ("twisted.internet.tcp", "Connection", "getHandle"): ["self"],
    ("twisted.internet.tcp", "Connection", "write"): ["self", "bytes"],
    # A worker (chatproject.workers) listens on the supervisor's socket.
    ("twisted.internet.posixbase", "PosixReactorBase", "adoptStreamPort"): [
        "self",
        "fileDescriptor",
        "addressFamily",
        "factory",
    ],
}

# Class attributes read, with their values.
CLASS_ATTRIBUTES = {
    ("daphne.ws_protocol", "WebSocketProtocol", "STATE_OPEN"): 3,
    ("daphne.ws_protocol", "WebSocketProtocol", "STATE_CLOSED"): 0,
    ("daphne.ws_protocol", "WebSocketProtocol", "SEND_STATE_GROUND"): 0,
    ("twisted.web.http", "HTTPChannel", "persistent"): True,
    ("twisted.internet.tcp", "Connection", "TLS"): False,
}

# Instance attributes read or set: (module, class) -> assignments its source must contain.
INSTANCE_ATTRIBUTES = {
    ("autobahn.websocket.protocol", "WebSocketProtocol"): [
        "self.state =",
        "self.data =",
        "self.current_frame =",
        "self.inside_message =",
        "self.autoPingTimeoutCall =",
        "self._perMessageCompress =",
        "self.send_state =",
    ],
    ("autobahn.websocket.protocol", None): ["failByDrop"],
    ("daphne.ws_protocol", "WebSocketProtocol"): [
        "self.application_queue",
        "self.last_ping =",
        "self.socket_opened =",
        "self.muted",
    ],
    ("daphne.server", "Server"): [
        "self.http_factory =",
        "self.ws_factory =",
        "self.abort_start =",
        "self.connections",
        "self.endpoints =",
        "self.application_close_timeout =",
        "self.ping_interval =",
        "self.websocket_timeout =",
    ],
    ("twisted.internet.abstract", "FileDescriptor"): [
        "self.dataBuffer",
        "self.offset",
        "self._tempDataLen",
        "self.connected",
        "self.disconnecting",
    ],
    ("twisted.internet.tcp", "Connection"): ["self.socket"],
}

# Methods serve.py re-implements (their rules are copied): sha256 of the whitespace-squashed
# source, first 16 hex digits.
BODIES = {
    ("daphne.server", "Server", "application_checker"): "aa9360a492e432e1",
    ("daphne.server", "Server", "timeout_checker"): "26cae18fcd00c25d",
    ("autobahn.twisted.websocket", "WebSocketAdapterProtocol", "dataReceived"): "5529c42463eaea20",
    ("daphne.ws_protocol", "WebSocketProtocol", "onMessage"): "84a6093f21c9277c",
}

SCRIPT = r"""
import hashlib, importlib, importlib.metadata, inspect, json, re, sys
import daphne.server  # noqa: F401  the asyncio reactor first, as serve.py does

spec = json.loads(sys.stdin.read())
problems = []


def where(module, cls):
    mod = importlib.import_module(module)
    return mod if cls is None else getattr(mod, cls)


for package, version in spec["pinned"].items():
    found = importlib.metadata.version(package)
    if found != version:
        problems.append(f"{package} {found} is installed, serve.py was checked against {version}")
for module, cls, name, params in spec["signatures"]:
    owner = where(module, cls)
    method = getattr(owner, name, None)
    if method is None:
        problems.append(f"{module}.{cls}.{name} is gone")
        continue
    got = list(inspect.signature(method).parameters)
    if got != params:
        problems.append(f"{module}.{cls}.{name} now takes {got}, not {params}")
for module, cls, name, value in spec["class_attributes"]:
    got = getattr(where(module, cls), name, "<missing>")
    if got != value:
        problems.append(f"{module}.{cls}.{name} is {got!r}, not {value!r}")
for module, cls, needles in spec["instance_attributes"]:
    source = inspect.getsource(where(module, cls))
    for needle in needles:
        if needle not in source:
            problems.append(f"{module}.{cls or ''} no longer has {needle!r}")
for module, cls, name, digest in spec["bodies"]:
    source = re.sub(r"\s+", " ", inspect.getsource(getattr(where(module, cls), name))).strip()
    got = hashlib.sha256(source.encode()).hexdigest()[:16]
    if got != digest:
        problems.append(f"{module}.{cls}.{name} changed (source hash {got}, pinned {digest}): "
                        "serve.py re-implements it")
print(json.dumps(problems))
"""


def test_what_serve_relies_on_in_daphne_autobahn_and_twisted_is_unchanged():
    spec = {
        "pinned": PINNED,
        "signatures": [[*key, params] for key, params in SIGNATURES.items()],
        "class_attributes": [[*key, value] for key, value in CLASS_ATTRIBUTES.items()],
        "instance_attributes": [[*key, needles] for key, needles in INSTANCE_ATTRIBUTES.items()],
        "bodies": [[*key, digest] for key, digest in BODIES.items()],
    }
    out = subprocess.run(
        [PYTHON, "-c", SCRIPT],
        input=json.dumps(spec),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    problems = json.loads(out.stdout.strip().splitlines()[-1])
    assert problems == [], (
        "chatproject/serve.py relies on daphne/autobahn/Twisted internals that changed; "
        "compare and update serve.py, then the pins in tests/chatproject/test_serve_pins.py:\n"
        + "\n".join(problems)
    )
