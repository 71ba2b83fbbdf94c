"""JSON Schema (draft 2020-12) of every event type's envelope (PROTOCOL §1 and §2).

`SCHEMAS[type]` describes the whole envelope of that type, `data` included. The tests validate
every event the services produce against it; consumers outside this code base can use
`envelope_schema(type)` (or `python manage.py shell -c` to dump them) as the contract.
"""

from __future__ import annotations

from .catalogue import CATALOGUE

TS_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$"

_id = {"type": "integer", "minimum": 1}
_ts = {"type": "string", "pattern": TS_PATTERN}
_ts_or_null = {"anyOf": [_ts, {"type": "null"}]}
_user = {
    "type": "object",
    "properties": {"id": _id, "username": {"type": "string", "minLength": 1}},
    "required": ["id", "username"],
    "additionalProperties": False,
}
# `actor`: a user, with `bot: true` for bot accounts (omitted when false).
_actor = {
    "type": "object",
    "properties": {
        "id": _id,
        "username": {"type": "string", "minLength": 1},
        "bot": {"type": "boolean"},
    },
    "required": ["id", "username"],
    "additionalProperties": False,
}
_role = {"enum": ["owner", "moderator", "member"]}
_reason = {"anyOf": [{"type": "string", "minLength": 1, "maxLength": 500}, {"type": "null"}]}
_emoji = {"type": "string", "minLength": 1, "maxLength": 32}


def _obj(properties: dict, required=None, *, extra=False) -> dict:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties if required is None else required),
        "additionalProperties": extra,
    }


_body = {"anyOf": [{"type": "string", "minLength": 1}, {"type": "null"}]}


def _content(properties: dict, required=None) -> dict:
    """A content event's data: either live (a body, redacted false) or redacted (body null,
    no attachments, redacted true), never a mix."""
    return {
        **_obj(properties, required),
        "oneOf": [
            {"properties": {"body": {"type": "string"}, "redacted": {"const": False}}},
            {
                "properties": {
                    "body": {"type": "null"},
                    "attachments": {"maxItems": 0},
                    "redacted": {"const": True},
                },
                "required": ["attachments"],
            },
        ],
    }


# An attached file (apps.attachments.services.event_data): the paths are the authorized
# download view's (the reader's session or token decides), thumbnail_url null until made.
_attachment = _obj(
    {
        "id": {"type": "string", "format": "uuid"},
        "name": {"type": "string", "minLength": 1, "maxLength": 255},
        "size": {"type": "integer", "minimum": 1},
        "content_type": {"type": "string", "minLength": 1},
        "width": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]},
        "height": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]},
        "url": {"type": "string", "pattern": "^/api/uploads/[0-9a-f-]{36}/file/$"},
        "thumbnail_url": {
            "anyOf": [
                {"type": "string", "pattern": "^/api/uploads/[0-9a-f-]{36}/thumbnail/$"},
                {"type": "null"},
            ]
        },
    }
)

_room = _obj(
    {
        "id": _id,
        "name": {"type": "string", "minLength": 1, "maxLength": 100},
        "topic": {"type": "string", "maxLength": 500},
        "kind": {"enum": ["public", "private", "direct"]},
        "archived": {"type": "boolean"},
        "created_by": {"anyOf": [_id, {"type": "null"}]},
        "slow_mode_seconds": {"type": "integer", "minimum": 0},
        "post_policy": {"enum": ["everyone", "moderators"]},
        "retention_days": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]},
    }
)

DATA: dict[str, dict] = {
    "message.created": {
        **_content(
            {
                "id": _id,
                # Empty only for a message of files alone (the anyOf below).
                "body": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                "reply_to": {"anyOf": [_id, {"type": "null"}]},
                "client_id": {"type": "string", "format": "uuid"},
                "thread": {"anyOf": [_id, {"type": "null"}]},
                "attachments": {"type": "array", "items": _attachment},
                "redacted": {"type": "boolean"},
            }
        ),
        "anyOf": [
            {"properties": {"body": {"minLength": 1}}},
            {"properties": {"attachments": {"minItems": 1}}},
        ],
    },
    # A redacted edit also carries `attachments: []` (the redacted form of PROTOCOL §6).
    "message.edited": _content(
        {
            "id": _id,
            "body": _body,
            "edited_at": _ts,
            "redacted": {"type": "boolean"},
            "attachments": {"type": "array"},
        },
        required=["id", "body", "edited_at", "redacted"],
    ),
    "message.deleted": _obj(
        {
            "id": _id,
            "by_moderator": {"type": "boolean"},
            "reason": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        }
    ),
    "reaction.added": _obj({"message": _id, "emoji": _emoji}),
    "reaction.removed": _obj({"message": _id, "emoji": _emoji}),
    "room.created": _room,
    # Only the fields that changed, at least one.
    "room.updated": {
        **_obj(
            {
                name: _room["properties"][name]
                for name in ("name", "topic", "slow_mode_seconds", "post_policy", "retention_days")
            },
            required=[],
        ),
        "minProperties": 1,
    },
    "room.archived": _obj({}),
    "member.joined": _obj({"user": _user, "role": _role}),
    "member.left": _obj({"user": _user, "reason": _reason}),
    "member.role_changed": _obj({"user": _user, "role": _role}),
    "member.banned": _obj({"user": _user, "reason": {"type": "string"}, "until": _ts_or_null}),
    "member.muted": _obj({"user": _user, "until": _ts_or_null, "reason": _reason}),
    "member.unbanned": _obj({"user": _user, "reason": _reason}),
    "receipt.updated": _obj({"user": _user, "last_read_seq": {"type": "integer", "minimum": 0}}),
    "report.created": _obj(
        {
            "report": _obj(
                {
                    "id": _id,
                    "message": _id,
                    "room": _id,
                    "category": {"enum": ["spam", "abuse", "other"]},
                    "reason": {"type": "string", "maxLength": 1000},
                }
            )
        }
    ),
    "notification.created": _obj(
        {
            "notification": _obj(
                {
                    "id": _id,
                    "kind": {"enum": ["mention", "room", "here"]},
                    "room": _id,
                    "seq": {"type": "integer", "minimum": 1},
                    "message": _id,
                    "actor": {"anyOf": [_actor, {"type": "null"}]},  # a bot mentioning: bot: true
                    "excerpt": {"type": "string", "maxLength": 200},
                    "created_at": _ts,
                }
            )
        }
    ),
    "typing": _obj({"user": _user, "state": {"type": "boolean"}}),
    "thread.updated": _obj(
        {
            "root": _id,
            "reply_count": {"type": "integer", "minimum": 0},
            "last_reply_seq": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]},
        }
    ),
    "presence.changed": _obj({"user": _user, "status": {"enum": ["online", "away", "offline"]}}),
}


def envelope_schema(type: str) -> dict:
    """The full envelope schema of one event type."""
    spec = CATALOGUE[type]
    room_required = spec.seq or type in (
        "receipt.updated",
        "report.created",
        "notification.created",
        "thread.updated",
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:chat:event:{type}",
        "title": type,
        "type": "object",
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "type": {"const": type},
            "room": _id if room_required else {"anyOf": [_id, {"type": "null"}]},
            "seq": {"type": "integer", "minimum": 1} if spec.seq else {"type": "null"},
            "ts": _ts,
            "actor": {"anyOf": [_actor, {"type": "null"}]},
            "data": DATA[type],
        },
        "required": ["id", "type", "room", "seq", "ts", "actor", "data"],
        "additionalProperties": False,
    }


SCHEMAS: dict[str, dict] = {type: envelope_schema(type) for type in CATALOGUE}

assert set(DATA) == set(CATALOGUE), "every catalogue type needs a data schema"
