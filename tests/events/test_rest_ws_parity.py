"""The same action over REST and over the WebSocket makes the same envelope, everywhere it goes:
the REST response, the WebSocket ack, the live copy on a watching socket, the event log and Kafka."""

import uuid

import jsonschema
import pytest

from apps.events.catalogue import CONTENT_TYPES, REDACTED
from apps.events.models import Event
from apps.events.schemas import SCHEMAS
from apps.rooms import services as rooms
from tests import factories
from tests.events.kafka_support import read_topic, wait_for
from tests.support.wsclient import WS

pytestmark = [pytest.mark.kafka, pytest.mark.services, pytest.mark.django_db(transaction=True)]

# Fields that differ between two performances of one action by nature (new ids, times, order).
VARYING = {"id", "seq", "ts"}
VARYING_DATA = {"id", "client_id", "edited_at", "message", "last_read_seq"}


def redacted(envelope):
    """What the log holds of an event once its message is deleted (both are, at the end)."""
    if envelope["type"] not in CONTENT_TYPES:
        return envelope
    return {**envelope, "data": {**envelope["data"], **REDACTED}}


def shape(envelope):
    """The envelope with the per-event values blanked: what the two paths must agree on."""
    out = {k: (None if k in VARYING else v) for k, v in envelope.items()}
    out["data"] = {k: (None if k in VARYING_DATA else v) for k, v in envelope["data"].items()}
    return out


def test_rest_and_websocket_actions_make_identical_envelopes(
    server, celery_worker, user, other_user, room
):
    rooms.room_join(room=room, user=other_user)
    api = factories.api_client(user)
    author = WS(server.ws_url, token=factories.make_token(user))
    watcher = WS(server.ws_url, token=factories.make_token(other_user))
    try:
        author.subscribe(room.pk)
        watcher.subscribe(room.pk)
        pairs = []

        def both(rest_call, ws_type, **ws_fields):
            response = rest_call()
            assert response.status_code in (200, 201), response.content
            ack = author.request(ws_type, **ws_fields)
            assert ack["type"] == "ack", ack
            pairs.append((response.json(), ack["event"]))
            return response.json(), ack["event"]

        rest_msg, ws_msg = both(
            lambda: api.post(
                f"/api/rooms/{room.pk}/messages/",
                {"body": "same body", "client_id": str(uuid.uuid4())},
                format="json",
            ),
            "message.send",
            room=room.pk,
            body="same body",
            client_id=str(uuid.uuid4()),
        )
        rest_id, ws_id = rest_msg["data"]["id"], ws_msg["data"]["id"]
        both(
            lambda: api.patch(f"/api/messages/{rest_id}/", {"body": "edited"}, format="json"),
            "message.edit",
            message=ws_id,
            body="edited",
        )
        both(
            lambda: api.post(f"/api/messages/{rest_id}/reactions/", {"emoji": "🎉"}, format="json"),
            "reaction.add",
            message=ws_id,
            emoji="🎉",
        )
        both(
            lambda: api.delete(f"/api/messages/{rest_id}/reactions/?emoji=🎉"),
            "reaction.remove",
            message=ws_id,
            emoji="🎉",
        )
        both(lambda: api.delete(f"/api/messages/{rest_id}/"), "message.delete", message=ws_id)

        for rest, ws in pairs:
            assert shape(rest) == shape(ws), (rest, ws)
            for envelope in (rest, ws):
                jsonschema.validate(envelope, SCHEMAS[envelope["type"]])
                assert Event.objects.get(pk=envelope["id"]).envelope == redacted(envelope)

        # The watcher got each one live, byte for byte the same dict.
        sent = [e for pair in pairs for e in pair]
        watcher.wait_seq(room.pk, max(e["seq"] for e in sent))
        live = {f["id"]: f for f in watcher.events(room.pk)}
        assert all(live[e["id"]] == e for e in sent)
    finally:
        author.close()
        watcher.close()

    # And Kafka carries the same dicts (published by the Celery worker).
    ids = {e["id"] for e in sent}
    wait_for(
        lambda: not Event.objects.filter(pk__in=ids).unpublished().exists(),
        timeout=30,
        message="the worker to publish",
    )
    on_kafka = {
        r.envelope["id"]: r.envelope for r in read_topic(want_ids=ids) if r.envelope["id"] in ids
    }
    # A content event went out as sent, or redacted if the worker read it after the delete.
    assert all(on_kafka[e["id"]] in (e, redacted(e)) for e in sent)
