"""The ceiling: a minimal ASGI broadcast server speaking the same frames as the chat server.

No Django, no Redis, no database: a dict of rooms in one process. It answers `hello`,
`subscribe` (-> `subscribed`), `message.send` (-> `ack`, then the envelope to every subscriber
of the room, the sender's own sockets included when subscribed) and `ping`. The fan-out
generator runs it under daphne, the ASGI server production uses, so the ratio chat/ceiling
measures what the application adds (auth, persistence, channel layer), not the transport.

Run it alone:  .venv/bin/python -m daphne -b 127.0.0.1 -p 8100 bench.ceiling:app
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import uuid

_rooms: dict[int, dict[int, object]] = {}  # room id -> {socket id: ASGI send}
_seq: dict[int, int] = {}
_socket_ids = itertools.count(1)
_user_ids = itertools.count(1)


def _dumps(message: dict) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            pass
        return
    if scope["type"] != "websocket":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    socket_id = next(_socket_ids)
    user = {"id": next(_user_ids), "username": f"u{socket_id}"}
    joined: set[int] = set()
    try:
        while True:
            event = await receive()
            kind = event["type"]
            if kind == "websocket.connect":
                await send({"type": "websocket.accept"})
                await send(
                    {
                        "type": "websocket.send",
                        "text": _dumps({"type": "hello", "user": user, "heartbeat": 30}),
                    }
                )
            elif kind == "websocket.receive":
                await _handle(
                    json.loads(event.get("text") or event.get("bytes")),
                    socket_id,
                    user,
                    joined,
                    send,
                )
            elif kind == "websocket.disconnect":
                return
    finally:
        for room in joined:
            _rooms.get(room, {}).pop(socket_id, None)


async def _handle(frame: dict, socket_id: int, user: dict, joined: set[int], send) -> None:
    kind = frame.get("type")
    ref = frame.get("ref")
    if kind == "subscribe":
        room = int(frame["room"])
        _rooms.setdefault(room, {})[socket_id] = send
        joined.add(room)
        reply = {
            "type": "subscribed",
            "room": room,
            "last_seq": _seq.get(room, 0),
            "truncated": False,
        }
    elif kind == "message.send":
        room = int(frame["room"])
        seq = _seq[room] = _seq.get(room, 0) + 1
        envelope = {
            "id": str(uuid.uuid4()),
            "type": "message.created",
            "room": room,
            "seq": seq,
            "ts": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
            "actor": user,
            "data": {
                "id": seq,
                "body": frame["body"],
                "reply_to": None,
                "client_id": frame.get("client_id"),
            },
        }
        ack = {"type": "ack", "event": envelope}
        if ref is not None:
            ack["ref"] = ref
        await send({"type": "websocket.send", "text": _dumps(ack)})
        text = _dumps(envelope)
        for subscriber in list(_rooms.get(room, {}).values()):
            await subscriber({"type": "websocket.send", "text": text})
        return
    elif kind == "ping":
        reply = {"type": "pong"}
    else:
        reply = {"type": "error", "code": "invalid", "message": f"unknown frame type {kind!r}"}
    if ref is not None:
        reply["ref"] = ref
    await send({"type": "websocket.send", "text": _dumps(reply)})
